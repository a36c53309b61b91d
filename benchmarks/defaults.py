"""What `onnxfuse compress M --target-macs T --calib C` gives with no other flag, next to the
previous defaults and the alternatives the recipe was chosen from (pipeline/defaults.py).

Rows per model and MAC target (all with the committed 512-image calibration file, of which the
default --calib-samples 256 are drawn; labels unused):
  defaults           no flag besides --target-macs and --calib
  previous defaults  what those two flags gave before the recipe: L1 pruning, statistics repair,
                     uniform sparsity
  <alternatives>     the defaults with one choice changed (VARIANTS), and with 64 calibration
                     samples instead of 256
Top-1 accuracy on the full Fashion-MNIST test split when installed (else the 2 000-image sample),
wall time of the compress call on this machine. Results are stored per cell in
benchmarks/defaults.json, so an interrupted run resumes where it stopped.

    python benchmarks/defaults.py [--models resnet18,vgg11bn] [--targets 0.5,0.25] [--variants a,b]
                                  [--tables-only]

Writes the section "Defaults" of benchmarks/RESULTS.md and benchmarks/defaults.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxfuse  # noqa: E402
from benchmarks.accuracy import accuracy, test_data, zoo_models  # noqa: E402
from benchmarks.results import finish_accuracy_axis, save_figure, write_section  # noqa: E402
from onnxfuse.graph.io import load_model  # noqa: E402
from onnxfuse.pipeline.defaults import recipe  # noqa: E402

CALIB = str(ROOT / "models" / "data" / "fmnist_calib512.npz")
STORE = ROOT / "benchmarks" / "defaults.json"
MODELS = "resnet18,vgg11bn,tinyres,mobilenetv2,resnet50s"
VARIANTS = {  # in the order they are measured: the rows the issue asks for first
    "defaults": {},
    "previous defaults": dict(method="prune", importance="l1", repair="stats", allocate="uniform"),
    "uniform allocation": dict(allocate="uniform"),
    "fuse": dict(method="fuse"),
    "l1 importance": dict(importance="l1"),  # the defaults before select
    "act importance": dict(importance="act"),
    "stream importance": dict(importance="stream"),  # signal on residual streams, L1 elsewhere
    "signal importance": dict(importance="signal"),
    "64 samples": dict(calib_samples=64),  # thin calibration: 64 images drawn with the seed, not 256
    "select repair": dict(repair="select"),  # none / lsq / stats+lsq per consumer by held-out damage
}


def load_store() -> dict:
    return json.loads(STORE.read_text()) if STORE.exists() else {}


def measure(models: str, targets: list[float], variants: list[str]) -> None:
    store = load_store()
    data, store["data"] = test_data()
    for variant in variants:
        for arch, path in zoo_models(models):
            model = load_model(path)
            cells = store.setdefault(arch, {})
            if "dense" not in cells:
                cells["dense"] = accuracy(model, data)
            for target in targets:
                key = f"{variant}|{target}"
                if key in cells:
                    continue
                start = time.perf_counter()
                compressed, report = onnxfuse.compress(model, target_macs=target, calib=CALIB, validate=False,
                                                       quiet=True, **VARIANTS[variant])
                seconds = time.perf_counter() - start
                cells[key] = {"accuracy": accuracy(compressed, data), "seconds": round(seconds, 1),
                              "macs": report["macs_after"] / report["macs_before"],
                              "allocation": report.get("allocation", {}).get("chosen", "uniform"),
                              "importance": report["options"]["importance"]}
                print(f"  {arch} {variant:18s} T={target}: {100 * cells[key]['accuracy']:.2f}% "
                      f"MACs {cells[key]['macs']:.3f} ({seconds:.0f} s)", flush=True)
                STORE.write_text(json.dumps(store, indent=1, sort_keys=True) + "\n")


def write(store: dict, targets: list[float]) -> None:
    chosen = recipe(True, True)
    models = [m for m in store if m != "data"]
    lines = ["Produced by `python benchmarks/defaults.py`: `onnxfuse compress M --target-macs T --calib "
             "models/data/fmnist_calib512.npz` with no other flag (**defaults**: "
             + ", ".join(f"{k} {v}" for k, v in chosen.items() if k not in ("normalization", "features"))
             + "; `--calib-samples` 256 of the 512 images), next to the defaults before this recipe and the "
             "alternatives it was chosen from (each column changes one choice). Top-1 accuracy (% of dense in "
             "brackets) on the "
             f"{store.get('data', 'test split')}; time of the compress call on 2 CPU cores that other jobs "
             "shared during the recorded run.", "",
             "| model | dense | target MACs | " + " | ".join(VARIANTS) + " |",
             "|---|---|---|" + "---|" * len(VARIANTS)]
    for model in models:
        cells = store[model]
        for target in targets:
            row = []
            for variant in VARIANTS:
                cell = cells.get(f"{variant}|{target}")
                share = None if cell is None else 100 * cell["accuracy"] / cells["dense"]
                row.append("–" if cell is None else f"{100 * cell['accuracy']:.1f} ({share:.0f}%) "
                           f"{cell['seconds']:.0f} s{_older(variant, cell)}")
            lines.append(f"| {model} | {100 * cells['dense']:.1f} | {target} | " + " | ".join(row) + " |")
    if any(f"{v}|{t}" not in store[m] for m in models for v in VARIANTS for t in targets):
        lines += ["", "– : not measured in the recorded run (each sensitivity run of MobileNetV2 and the "
                  "ResNet-50-style model takes 5–18 min here)."]
    if any(_older(v, store[m].get(f"{v}|{t}") or {"importance": "select"}) for m in models for v in VARIANTS
           for t in targets):
        lines += ["", f"{OLDER}: measured while the recipe's importance was L1 (before `select`), so the column's "
                  "one change was made to that recipe."]
    lines += ["", "Mean % of dense of each column against the defaults' on the same models:", ""]
    for target in targets:
        for variant in list(VARIANTS)[1:]:
            both = [m for m in models if f"{variant}|{target}" in store[m] and f"defaults|{target}" in store[m]]
            if both:
                share = [sum(100 * store[m][f"{v}|{target}"]["accuracy"] / store[m]["dense"] for m in both) / len(both)
                         for v in (variant, "defaults")]
                lines.append(f"- T = {target}, {variant}: {share[0]:.1f} % vs {share[1]:.1f} % ({', '.join(both)})")
    lines += ["", "![accuracy with the defaults](defaults.png)"]
    write_section("Defaults", "\n".join(lines))


OLDER = "†"


def _older(variant: str, cell: dict) -> str:
    """The mark of a cell whose variant leaves the importance to the recipe and that ran when the
    recipe's was L1 (cells from before the `importance` field record none)."""
    left_to_recipe = "importance" not in VARIANTS[variant]
    return f" {OLDER}" if left_to_recipe and cell.get("importance", "l1") != recipe(True, True)["importance"] else ""


def plot(store: dict, targets: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in store if m != "data"]
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        for variant in VARIANTS:
            cells = [store[model].get(f"{variant}|{t}") for t in targets]
            points = sorted((c["macs"], 100 * c["accuracy"]) for c in cells if c)
            if points:
                ax.plot(*zip(*points), marker="o", label=variant, linewidth=2.5 if variant == "defaults" else 1)
        finish_accuracy_axis(ax, store[model]["dense"], model, "MACs kept (fraction)")
    richest = max(axes[0], key=lambda ax: len(ax.get_lines()))
    richest.legend(fontsize=7)  # the panel that has every variant; save_figure labels the first one too
    save_figure(fig, axes, ROOT / "benchmarks" / "defaults.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--targets", default="0.5,0.25")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--tables-only", action="store_true", help="measure nothing, rewrite from defaults.json")
    args = parser.parse_args()
    targets = [float(t) for t in args.targets.split(",")]
    if not args.tables_only:
        measure(args.models, targets, args.variants.split(","))
    store = load_store()
    write(store, targets)
    plot(store, targets)


if __name__ == "__main__":
    main()
