"""Accuracy without fine-tuning: Default pruning vs Intra-Fusion, in two protocols.

  (a) the paper's: one group at a time, for each of the last three prunable groups (the others
      untouched), accuracy averaged over the three;
  (b) every prunable group at once.

Methods: `prune` (Default, L1) and `fuse` with each normalisation (L1 importance, exact EMD,
uniform marginals). Accuracy on the full Fashion-MNIST test split when Debian's
dataset-fashion-mnist is installed, else on the committed 2 000-image sample.

    python benchmarks/accuracy.py [--models resnet18,vgg11bn] [--sparsities 0.3,0.5,0.7]

Writes the section "Accuracy without calibration" of benchmarks/RESULTS.md and
benchmarks/accuracy.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results import finish_accuracy_axis, merge_results, save_figure, write_section  # noqa: E402
from models import fmnist  # noqa: E402
from onnxfuse import pipeline  # noqa: E402
from onnxfuse.calibration.data import Dataset  # noqa: E402
from onnxfuse.graph.io import load_model  # noqa: E402
from onnxfuse.methods.intra_fusion import FusionOptions  # noqa: E402
from onnxfuse.runtime.sessions import run, session  # noqa: E402

METHODS = {
    "Default (prune)": dict(method="prune"),
    "IF reference": dict(method="fuse", fusion=FusionOptions(normalization="reference")),
    "IF average": dict(method="fuse", fusion=FusionOptions(normalization="average")),
    "IF rescale": dict(method="fuse", fusion=FusionOptions(normalization="rescale")),
}


def test_data() -> tuple[Dataset, str]:
    if fmnist.dataset_available():
        images, labels = fmnist.load_test_split()
        name = "full test split (10 000)"
    else:
        images, labels = fmnist.load_eval_sample()
        name = "committed 2 000-image sample"
    return Dataset({"input": images.astype(np.float32)}, labels), name


def zoo_models(names: str):
    """(architecture, BN-folded ONNX file) for the comma-separated names present in models/."""
    for arch in names.split(","):
        path = ROOT / "models" / f"{arch}_fmnist_folded.onnx"
        if path.exists():
            print(f"{arch}:", flush=True)
            yield arch, path
        else:
            print(f"{path.name}: not in models/, skipped", flush=True)


def accuracy(model, data: Dataset) -> float:
    logits = run(session(model, "cpu"), data, 500)[0]
    return float((logits.argmax(1) == data.labels).mean())


def compress(model, sparsity: float, only_groups=None, **method) -> object:
    """The model with every prunable group (or only `only_groups`) shrunk at `sparsity`."""
    ctx = pipeline.Context.for_model(pipeline.Options(sparsity=sparsity, validate=False, **method), model)
    ctx.decisions.only_groups = only_groups
    return pipeline.run(ctx).model.result


def last_prunable_groups(model, count: int = 3) -> list[int]:
    ctx = pipeline.run(pipeline.Context.for_model(pipeline.Options(), model), stop_after="analyze")
    order = {n.name: i for i, n in enumerate(ctx.model.graph.nodes)}
    groups = ctx.model.analysis.prunable
    last = sorted(groups, key=lambda g: max(order[n] for n in g.nodes("producer")))[-count:]
    return [g.id for g in last]


def evaluate_model(path: Path, data: Dataset, sparsities: list[float]) -> dict:
    model = load_model(path)
    dense = accuracy(model, data)
    last = last_prunable_groups(model)
    results = {"dense": dense, "one_group": {}, "whole": {}}
    for name, method in METHODS.items():
        for s in sparsities:
            start = time.perf_counter()
            per_group = [accuracy(compress(model, s, only_groups=(g,), **method), data) for g in last]
            whole = accuracy(compress(model, s, **method), data)
            results["one_group"][name, s] = float(np.mean(per_group))
            results["whole"][name, s] = whole
            print(f"  {name:16s} s={s:.1f}: one group {100 * np.mean(per_group):6.2f}%  "
                  f"whole network {100 * whole:6.2f}%  ({time.perf_counter() - start:.0f} s)", flush=True)
    return results


def table(results: dict, sparsities: list[float], protocol: str) -> list[str]:
    header = "| model | dense | method | " + " | ".join(f"{s:.1f}" for s in sparsities) + " |"
    lines = [header, "|---|---|---|" + "---|" * len(sparsities)]
    for model, res in results.items():
        for name in METHODS:
            cells = [f"{100 * res[protocol][name, s]:.1f}" for s in sparsities]
            lines.append(f"| {model} | {100 * res['dense']:.1f} | {name} | " + " | ".join(cells) + " |")
    return lines


def plot(results: dict, sparsities: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(4 * len(results), 7), squeeze=False)
    for col, (model, res) in enumerate(results.items()):
        for row, (protocol, title) in enumerate((("one_group", "one group at a time (last 3)"),
                                                 ("whole", "whole network"))):
            ax = axes[row][col]
            for name in METHODS:
                ax.plot(sparsities, [100 * res[protocol][name, s] for s in sparsities], marker="o", label=name)
            finish_accuracy_axis(ax, res["dense"], f"{model}: {title}", "sparsity")
    save_figure(fig, axes, path)


def parse_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Adds --models and --sparsities (parsed to a list of floats), shared by the accuracy benchmarks."""
    parser.add_argument("--models", default="tinyres,resnet18,vgg11bn,mobilenetv2,resnet50s")
    parser.add_argument("--sparsities", default="0.3,0.5,0.7")
    args = parser.parse_args()
    args.sparsities = [float(s) for s in args.sparsities.split(",")]
    return args


def main() -> None:
    args = parse_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    models, sparsities = args.models, args.sparsities
    data, data_name = test_data()
    results = merge_results("accuracy", {arch: evaluate_model(path, data, sparsities)
                                         for arch, path in zoo_models(models)})
    body = [f"Produced by `python benchmarks/accuracy.py`; top-1 accuracy (%) on the {data_name},",
            "no fine-tuning, no calibration data. L1 importance, exact EMD, uniform marginals.", "",
            "**(a) One group at a time** (the paper's protocol): mean over the last three prunable groups.", ""]
    body += table(results, sparsities, "one_group")
    body += ["", "**(b) Every prunable group at once.**", ""]
    body += table(results, sparsities, "whole")
    body += ["", "![accuracy vs sparsity](accuracy.png)"]
    write_section("Accuracy without calibration", "\n".join(body))
    plot(results, sparsities, ROOT / "benchmarks" / "accuracy.png")


if __name__ == "__main__":
    main()
