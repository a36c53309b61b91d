"""Accuracy with a small calibration set, every prunable group at once, no fine-tuning.

Variants at each sparsity (same uniform sparsity, hence the same MACs, for all onnxfuse variants):
  Default                 L1 pruning, no data
  Default + repair        L1 pruning, then statistics repair on the calibration data
  IF data-free            fusion, the default normalisation, no data
  IF + stats              fusion (OT cost from calibration activations and weights), stats repair
  IF + lsq                fusion (same cost), least-squares repair
  onnxsim <variant>       onnxsim 0.8.1's structured pruning at the MACs onnxfuse reached
                          (benchmarks/competitor_onnxsim.py), when onnxsim is installed
and sensitivity-aware allocation (fuse + lsq) at target MAC fractions 0.5 and 0.25.

Calibration: the committed 512 training images (models/data/fmnist_calib512.npz, labels unused).
Test: the full Fashion-MNIST test split when installed, else the 2 000-image sample.

    python benchmarks/calibrated.py [--models resnet18,vgg11bn] [--sparsities 0.3,0.5,0.7]
                                     [--allocation-only | --tables-only]

Writes the section "Accuracy with calibration data" of benchmarks/RESULTS.md and
benchmarks/calibrated.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxfuse  # noqa: E402
from benchmarks.accuracy import accuracy, parse_args, test_data, zoo_models  # noqa: E402
from benchmarks.results import finish_accuracy_axis, merge_results, save_figure, write_section  # noqa: E402
from onnxfuse.graph.io import load_model  # noqa: E402

CALIB = str(ROOT / "models" / "data" / "fmnist_calib512.npz")

VARIANTS = {
    "Default": dict(method="prune", repair="none"),
    "Default + repair": dict(method="prune", calib=CALIB, repair="stats"),
    "IF data-free": dict(method="fuse", repair="none", normalization="reference"),
    "IF + stats": dict(method="fuse", calib=CALIB, repair="stats", ot_features="both", normalization="reference"),
    "IF + lsq": dict(method="fuse", calib=CALIB, repair="lsq", ot_features="both", normalization="reference"),
    "Default + lsq": dict(method="prune", calib=CALIB, repair="lsq"),
}
TARGETS = (0.5, 0.25)


def competitor():
    try:
        import onnxsim  # noqa: F401

        from benchmarks import competitor_onnxsim
    except ImportError:
        return None
    return competitor_onnxsim


def run_variant(model, data, **options):
    compressed, report = onnxfuse.compress(model, validate=False, quiet=True, **options)
    return accuracy(compressed, data), report["macs_after"] / report["macs_before"]


def evaluate(arch: str, path: Path, data, sparsities) -> dict:
    """Every row of one model; the uniform rows are stored before the (long) allocation runs."""
    model = load_model(path)
    res = {"dense": accuracy(model, data), "uniform": {}, "macs": {}, "allocated": {}, "onnxsim": {}}
    rival = competitor()
    calib = np.load(CALIB)["input"].astype(np.float32)
    for s in sparsities:
        for name, options in VARIANTS.items():
            start = time.perf_counter()
            acc, macs = run_variant(model, data, sparsity=s, **options)
            res["uniform"][name, s] = acc
            res["macs"][s] = macs
            print(f"  s={s:.1f} {name:18s} {100 * acc:6.2f}%  MACs {macs:.3f}  ({time.perf_counter() - start:.0f} s)",
                  flush=True)
        if rival is not None:
            for variant in rival.VARIANTS:
                try:
                    pruned = rival.onnxsim_prune(model, variant, target_macs=res["macs"][s], calib={"input": calib})
                except rival.TargetUnreachable as exc:  # onnxsim never shrinks some convs: no cell at these MACs
                    print(f"  s={s:.1f} onnxsim {variant:10s} {exc}", flush=True)
                    continue
                res["onnxsim"][variant, s] = accuracy(pruned, data)
                print(f"  s={s:.1f} onnxsim {variant:10s} {100 * res['onnxsim'][variant, s]:6.2f}%", flush=True)
    merge_results("calibrated", {arch: res})
    res["allocated"] = allocated(model, data)
    merge_results("calibrated", {arch: res})
    return res


def allocated(model, data) -> dict:
    rows = {}
    for target in TARGETS:
        acc, macs = run_variant(model, data, target_macs=target, allocate="sensitivity", method="fuse", calib=CALIB,
                                repair="lsq", ot_features="both", normalization="reference")
        rows[target] = (acc, macs)
        print(f"  sensitivity allocation, target MACs {target}: {100 * acc:.2f}% at {macs:.3f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allocation-only", action="store_true",
                        help="measure only the sensitivity allocation again, keep the stored uniform rows")
    parser.add_argument("--tables-only", action="store_true",
                        help="measure nothing: rewrite the section and the plot from benchmarks/calibrated.json")
    args = parse_args(parser)
    sparsities = args.sparsities
    data, data_name = test_data()
    if args.tables_only:
        fresh = {}
    elif args.allocation_only:
        stored = merge_results("calibrated", {})
        fresh = {}
        for arch, path in zoo_models(args.models):
            fresh[arch] = {**stored[arch], "allocated": allocated(load_model(path), data)}
            merge_results("calibrated", {arch: fresh[arch]})
    else:
        fresh = {arch: evaluate(arch, path, data, sparsities) for arch, path in zoo_models(args.models)}
    results = merge_results("calibrated", fresh)
    write(results, sparsities, data_name)
    plot(results, sparsities, ROOT / "benchmarks" / "calibrated.png")


def write(results, sparsities, data_name) -> None:
    rival_names = sorted({v for r in results.values() for v, _ in r["onnxsim"]})
    lines = [f"Produced by `python benchmarks/calibrated.py`; top-1 accuracy (%) on the {data_name}, every",
             "prunable group at the same sparsity (so every variant has the same MACs; onnxsim is run at the",
             "MACs onnxfuse reached; – where it cannot get that low), 512 unlabelled calibration images,",
             "no fine-tuning. Fusion (IF) uses the `reference` normalisation in every cell (the repair sets",
             "each channel's scale, so the normalisation matters little once data is given).", "",
             "| model | dense | sparsity | MACs | " + " | ".join(list(VARIANTS) + [f"onnxsim {v}" for v in rival_names])
             + " |", "|---|---|---|---|" + "---|" * (len(VARIANTS) + len(rival_names))]
    for model, r in results.items():
        for s in sparsities:
            cells = [f"{100 * r['uniform'][name, s]:.1f}" for name in VARIANTS]
            cells += [f"{100 * r['onnxsim'][v, s]:.1f}" if (v, s) in r["onnxsim"] else "–" for v in rival_names]
            lines.append(f"| {model} | {100 * r['dense']:.1f} | {s:.1f} | {r['macs'][s]:.3f}× | " + " | ".join(cells)
                         + " |")
    lines += ["", "Sensitivity-aware allocation (`--allocate sensitivity --method fuse --repair lsq "
              "--ot-features both`):", "", "| model | dense | target MACs | reached MACs | accuracy | of dense |",
              "|---|---|---|---|---|---|"]
    for model, r in results.items():
        for target, (acc, macs) in r["allocated"].items():
            lines.append(f"| {model} | {100 * r['dense']:.1f} | {target} | {macs:.3f}× | {100 * acc:.1f} | "
                         f"{100 * acc / r['dense']:.1f}% |")
    lines += ["", "![accuracy vs MACs with calibration](calibrated.png)"]
    write_section("Accuracy with calibration data", "\n".join(lines))


def plot(results, sparsities, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 4), squeeze=False)
    for ax, (model, r) in zip(axes[0], results.items()):
        macs = [r["macs"][s] for s in sparsities]
        for name in VARIANTS:
            ax.plot(macs, [100 * r["uniform"][name, s] for s in sparsities], marker="o", label=name)
        for variant in sorted({v for v, _ in r["onnxsim"]}):
            cells = [(r["macs"][s], 100 * r["onnxsim"][variant, s]) for s in sparsities if (variant, s) in r["onnxsim"]]
            ax.plot(*zip(*cells), marker="x", linestyle=":", label=f"onnxsim {variant}")
        alloc = sorted(r["allocated"].values(), key=lambda t: t[1])
        ax.plot([m for _, m in alloc], [100 * a for a, _ in alloc], marker="*", markersize=10, linestyle="--",
                label="IF + lsq, sensitivity allocation")
        finish_accuracy_axis(ax, r["dense"], model, "MACs kept (fraction)")
    save_figure(fig, axes, path)


if __name__ == "__main__":
    main()
