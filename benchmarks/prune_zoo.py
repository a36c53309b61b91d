"""Plain L1 pruning (the Torch-Pruning baseline) of every model-zoo ONNX file, every group at once.

Writes benchmarks/RESULTS.md (section "Pruning baseline"): params, MACs and accuracy on the
committed 2 000-image evaluation sample, as ratios to the dense model measured in the same run.

    python benchmarks/prune_zoo.py [--sparsities 0.3,0.5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxfuse  # noqa: E402
from benchmarks.results import write_section  # noqa: E402
from onnxfuse.calibration.data import load_npz  # noqa: E402
from onnxfuse.graph.io import load_model  # noqa: E402
from onnxfuse.runtime.sessions import run, session  # noqa: E402

EVAL = ROOT / "models" / "data" / "fmnist_eval2000.npz"


def accuracy(model, data) -> float:
    logits = run(session(model, "cpu"), data, 256)[0]
    return float((logits.argmax(1) == data.labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sparsities", default="0.3,0.5")
    args = parser.parse_args()
    sparsities = [float(s) for s in args.sparsities.split(",")]
    rows = []
    for path in sorted((ROOT / "models").glob("*_fmnist_*.onnx")):
        model = load_model(path)
        data = load_npz(EVAL, model)
        dense = accuracy(model, data)
        for sparsity in sparsities:
            pruned, report = onnxfuse.compress(model, sparsity, method="prune", importance="l1",
                                               validate=False, quiet=True)
            acc = accuracy(pruned, data)
            rows.append((path.name, sparsity, report["params_after"] / report["params_before"],
                         report["macs_after"] / report["macs_before"], dense, acc))
            print(f"{path.name:32s} sparsity {sparsity:.1f}: accuracy {100 * dense:.2f}% -> {100 * acc:.2f}%",
                  flush=True)
    write(rows)


def write(rows) -> None:
    lines = ["Produced by `python benchmarks/prune_zoo.py`; accuracy on the committed 2 000-image",
             "Fashion-MNIST evaluation sample (`models/data/fmnist_eval2000.npz`).", "",
             "| model | sparsity | params | MACs | dense acc. | pruned acc. |",
             "|---|---|---|---|---|---|"]
    for name, sparsity, params, macs, dense, acc in rows:
        lines.append(f"| {name} | {sparsity:.1f} | {params:.3f}× | {macs:.3f}× | {100 * dense:.2f}% | "
                     f"{100 * acc:.2f}% |")
    write_section("Pruning baseline (L1, every prunable group at once, no fine-tuning)", "\n".join(lines))


if __name__ == "__main__":
    main()
