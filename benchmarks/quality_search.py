"""Accuracy-aware compression: what `--max-accuracy-drop D` costs and whether its choice holds on
data the search never saw.

The search judges on 2 000 labelled train images that the calibration set does not contain
(drawn with a fixed seed from the rest of the train split); the repair fits on the committed 512
calibration images; the chosen model is then measured on the full test split, which neither saw.
Counts: pipeline runs of the search (points tried) and the wall time of the whole compress.

    python benchmarks/quality_search.py [--models tinyres,resnet18] [--drops 0.01,0.03]

Writes the section "Accuracy-aware search" of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxfuse  # noqa: E402
from benchmarks.accuracy import accuracy, test_data, zoo_models  # noqa: E402
from benchmarks.results import merge_results, write_section  # noqa: E402
from models import fmnist  # noqa: E402
from onnxfuse.graph.io import load_model  # noqa: E402

CALIB = ROOT / "models" / "data" / "fmnist_calib512.npz"


def search_data(path: Path, n: int = 2000, seed: int = 7) -> None:
    """`n` labelled train images that are not in the calibration set, as an .npz at `path`."""
    images, labels = fmnist.load_split("train")
    with np.load(CALIB) as calib:
        used = {row.tobytes() for row in calib["input"]}
    free = np.array([i for i in range(len(images)) if images[i].tobytes() not in used])
    pick = np.sort(np.random.default_rng(seed).choice(free, size=n, replace=False))
    np.savez(path, input=images[pick], labels=labels[pick])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tinyres,resnet18")
    parser.add_argument("--drops", default="0.01,0.03")
    args = parser.parse_args()
    if not fmnist.dataset_available():
        sys.exit("needs the Fashion-MNIST train and test splits (apt-get install dataset-fashion-mnist)")
    test, test_name = test_data()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "search.npz"
        search_data(data)
        for arch, path in zoo_models(args.models):
            model = load_model(path)
            dense = accuracy(model, test)
            for drop in (float(d) for d in args.drops.split(",")):
                start = time.perf_counter()
                compressed, report = onnxfuse.compress(model, calib=str(CALIB), data=str(data),
                                                       max_accuracy_drop=drop, quiet=True)
                seconds = time.perf_counter() - start
                search = report["quality_search"]
                held = report["validation"]
                rows[f"{arch}|{drop}"] = {
                    "dense": dense, "points": len(search["points"]), "seconds": round(seconds, 1),
                    "mac_ratio": report["macs_after"] / report["macs_before"],
                    "search_drop": held["accuracy_original"] - held["accuracy_compressed"],
                    "test_drop": dense - accuracy(compressed, test)}
                print(f"  {arch} D={drop}: {rows[f'{arch}|{drop}']}", flush=True)
    stored = merge_results("quality_search", rows)
    write(stored, test_name)


def write(stored: dict, test_name: str) -> None:
    lines = ["Produced by `python benchmarks/quality_search.py`: `onnxfuse compress M --calib "
             "models/data/fmnist_calib512.npz --data SEARCH.npz --max-accuracy-drop D` (defaults otherwise: "
             "L1 pruning, sensitivity allocation measured once, lsq). SEARCH.npz: 2 000 labelled train images "
             f"outside the calibration set; the drop is then measured on the {test_name}, which the search "
             "never saw. Points: pipeline runs of the search (each compresses and judges one MAC ratio); time: "
             "the whole compress (the sensitivity table once, then every point), on 2 CPU cores that other "
             "benchmarks shared during the recorded run.", "",
             "| model | D | MACs chosen | drop on the search data | drop on the test split | points | time |",
             "|---|---|---|---|---|---|---|"]
    for key, r in sorted(stored.items(), key=lambda kv: str(kv[0])):
        arch, drop = key if isinstance(key, tuple) else key.split("|")
        lines.append(f"| {arch} | {drop} | {r['mac_ratio']:.3f}× | {100 * r['search_drop']:.2f} | "
                     f"{100 * r['test_drop']:.2f} | {r['points']} | {r['seconds']:.0f} s |")
    write_section("Accuracy-aware search", "\n".join(lines))


if __name__ == "__main__":
    main()
