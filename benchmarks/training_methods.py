"""The training-time methods at equal budgets: `compress M --target-macs T --train-data D --train-steps S`
with --method prune / fuse (then distil), tpp, sdprun, and --iterative 3 with --stop fixed / icp (prune
and fuse); the calibration file for the repair and ICP, the 10 000 unlabelled train images of
benchmarks/finetune.py for training, accuracy on the full test split, wall time, and for icp the
steps it used. Every cell runs in a fresh process and is stored in benchmarks/training_methods.json,
so an interrupted run resumes where it stopped.

    python benchmarks/training_methods.py [--models resnet18,vgg11bn,mobilenetv2] [--targets 0.25,0.1]
                                          [--budgets 500,2000] [--variants ...] [--work DIR] [--tables-only]

Writes the section "Training-time methods" of RESULTS.md and benchmarks/training_methods.png.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.finetune import CALIB, onnx_accuracy, train_file  # noqa: E402

STORE = ROOT / "benchmarks" / "training_methods.json"
ROUNDS = 3
VARIANTS = {
    "prune + distil": dict(method="prune"),
    "fuse + distil": dict(method="fuse"),
    "tpp": dict(method="tpp"),
    "sdprun": dict(method="sdprun"),
    "iterative prune (fixed)": dict(method="prune", iterative=ROUNDS),
    "iterative prune (icp)": dict(method="prune", iterative=ROUNDS, stop="icp"),
    "iterative fuse (fixed)": dict(method="fuse", iterative=ROUNDS),
    "iterative fuse (icp)": dict(method="fuse", iterative=ROUNDS, stop="icp"),
}


def one_cell(key: str, work: Path) -> dict:
    import torch

    import onnxfuse

    arch, target, variant, budget = key.split("|")
    begin = time.perf_counter()
    model, report = onnxfuse.compress(str(ROOT / "models" / f"{arch}_fmnist_folded.onnx"), target_macs=float(target),
                                      calib=CALIB, train_data=str(train_file(work)), train_steps=int(budget),
                                      batch=128, validate=False, quiet=True, **VARIANTS[variant])
    seconds = time.perf_counter() - begin
    rounds = report.get("iterative")
    steps = sum(r["steps"] for r in rounds) if rounds else int(budget)
    cell = {"accuracy": onnx_accuracy(model), "seconds": round(seconds, 1), "steps_used": steps,
            "macs": report["macs_after"] / report["macs_before"], "threads": torch.get_num_threads()}
    if rounds:  # a round that stops early hands its unused steps on, so only the rounds show that icp fired
        cell["round_steps"] = [r["steps"] for r in rounds]
    return cell


def measure(models, targets, budgets, variants, work: Path) -> None:
    from benchmarks.results import run_cells

    keys = [f"{arch}|{target}|{variant}|{budget}" for budget in budgets for target in targets for arch in models
            for variant in variants]
    run_cells(__file__, keys, STORE, work, store_diverged=True)


def write(store: dict) -> None:
    from benchmarks.finetune import dense_accuracies
    from benchmarks.results import write_section

    if not store:
        print("nothing measured yet: no table")
        return
    dense = dense_accuracies()
    budgets = sorted({int(k.split("|")[3]) for k in store})
    rows = sorted({tuple(k.split("|")[:3]) for k in store},
                  key=lambda r: (r[0], -float(r[1]), list(VARIANTS).index(r[2])))
    lines = ["Command: `python benchmarks/training_methods.py` (cells in benchmarks/training_methods.json): "
             "`compress M --target-macs T --calib models/data/fmnist_calib512.npz --train-data D --train-steps S` "
             f"with the method or `--iterative {ROUNDS}` of each row, D the 10 000 unlabelled train images of "
             "benchmarks/finetune.py, batch 128. Accuracy on the full test split (% of dense in parentheses); "
             "for icp, the steps it used of the budget and, where recorded, per round (a round that stops early "
             "hands its unused steps to the next, so a total equal to the budget can hide early stops).", "",
             "| model | MACs | method | " + " | ".join(f"{b} steps | s" for b in budgets) + " |",
             "|---|---|---|" + "---|---|" * len(budgets)]
    for arch, target, variant in rows:
        cells = []
        for b in budgets:
            cell = store.get(f"{arch}|{target}|{variant}|{b}")
            if cell is None:
                cells += ["", ""]
                continue
            if "diverged_at" in cell:
                cells += [f"diverged at step {cell['diverged_at']}", ""]
                continue
            text = f"{100 * cell['accuracy']:.2f}"
            if arch in dense:
                text += f" ({100 * cell['accuracy'] / dense[arch]:.1f})"
            if "icp" in variant:
                text += f", {cell['steps_used']} steps"
                if "round_steps" in cell:
                    text += " (" + "+".join(map(str, cell["round_steps"])) + ")"
            cells += [text, f"{cell['seconds']:.0f}" + ("¹" if cell.get("threads") == 1 else "")]
        lines.append(f"| {arch} | {target} | {variant} | " + " | ".join(cells) + " |")
    lines += ["", "Blank cells: not run yet. \"diverged\": the training stage's divergence guard stopped the run "
              "and it wrote nothing. Every cell runs the default recipe first (sensitivity allocation, lsq "
              "repair), so times include it. Times are on this project's 2-core machine with 2 torch threads, "
              "¹ with one (the cell ran beside other work).",
              "", "![accuracy per method](training_methods.png)"]
    write_section("Training-time methods", "\n".join(lines))
    plot(store, budgets)


def plot(store: dict, budgets: list[int]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no training_methods.png")
        return
    panels = sorted({tuple(k.split("|")[:2]) for k in store}, key=lambda p: (p[0], -float(p[1])))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (arch, target) in zip(axes[0], panels):
        names = [v for v in VARIANTS if any(f"{arch}|{target}|{v}|{b}" in store for b in budgets)]
        for i, b in enumerate(budgets):
            values = [100 * store.get(f"{arch}|{target}|{v}|{b}", {}).get("accuracy", 0) for v in names]  # 0: diverged
            ax.barh([j + 0.4 * i for j in range(len(names))], values, height=0.4, label=f"{b} steps")
        ax.set_yticks([j + 0.2 for j in range(len(names))], names, fontsize=7)
        ax.set_xlim(50, 100)
        ax.set_title(f"{arch}, {target} of the MACs", fontsize=9)
        ax.set_xlabel("test accuracy (%)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(ROOT / "benchmarks" / "training_methods.png", dpi=110)


def main() -> None:
    from benchmarks.results import cell_main, cell_parser

    parser = cell_parser(__doc__)
    parser.add_argument("--models", default="resnet18,vgg11bn,mobilenetv2")
    parser.add_argument("--targets", default="0.25,0.1")
    parser.add_argument("--budgets", default="500,2000")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    cell_main(args, one_cell, lambda work: measure(args.models.split(","), args.targets.split(","),
                                                   [int(b) for b in args.budgets.split(",")],
                                                   args.variants.split(","), work),
              lambda: write(json.loads(STORE.read_text()) if STORE.exists() else {}))


if __name__ == "__main__":
    main()
