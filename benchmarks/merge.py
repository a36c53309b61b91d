"""Model fusion and split-data training on two zoo networks trained on disjoint halves of the
Fashion-MNIST train split (`python -m models.train --arch A --part I/2 --seed I`, the zoo's recipe
and widths; models/<arch>_fmnist_partIof2_folded.onnx):

1. `onnxfuse merge` of the two halves, by activations on the calibration file and by weights,
   against plain averaging, each half alone, their ensemble and the zoo network trained on all data;
2. at 0.25 of the MACs and one budget of distillation steps on the 10 000 unlabelled train images
   of benchmarks/finetune.py: Intra-Fusion + distillation of the all-data network, split-data
   Prune-and-Fuse of it (`--split-data 2`), Fuse-and-Prune of the two halves (`--fuse-first`), and
   the split-data run once more with `--ray auto` (a local cluster: two workers on this machine).

Accuracy on the full test split. Every cell runs in a fresh process and is stored in
benchmarks/merge.json, so an interrupted run resumes.

    python benchmarks/merge.py [--models vgg11bn,resnet18] [--target 0.25] [--steps 1000] [--work DIR]
                               [--tables-only]

Writes the section "Model fusion and split-data training" of RESULTS.md.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.finetune import CALIB, onnx_accuracy, test_set, train_file  # noqa: E402

STORE = ROOT / "benchmarks" / "merge.json"
RUNS = {
    "intra-fusion + distil": {},
    "PaF (split-data 2)": {"split_data": 2},
    "FaP (fuse-first, two halves)": {"fuse_first": True},
    "PaF (split-data 2), Ray": {"split_data": 2, "ray": "auto"},
}


def model_path(arch: str, part: int | None = None) -> str:
    stem = f"{arch}_fmnist" + (f"_part{part}of2" if part else "")
    return str(ROOT / "models" / f"{stem}_folded.onnx")


def test_file(work: Path) -> Path:
    path = work / "test.npz"
    if not path.exists():
        images, labels = test_set()
        np.savez(path, input=images.astype(np.uint8), labels=labels)
    return path


def merge_cell(arch: str, work: Path) -> dict:
    import onnx

    import onnxfuse
    from onnxfuse.graph.ensemble import ensemble

    halves = [model_path(arch, 1), model_path(arch, 2)]
    cell = {"all data": onnx_accuracy(model_path(arch)),
            "ensemble": onnx_accuracy(ensemble([onnx.load(p) for p in halves]))}
    for align in ("activations", "weights"):
        for repair in ("none", "stats"):
            begin = time.perf_counter()
            _, report = onnxfuse.merge(halves, calib=CALIB, align=align, data=str(test_file(work)), repair=repair)
            scores = report["scores"]
            name = f"OT {align}" + (" + REPAIR" if repair == "stats" else "")
            cell.update({"part 1": scores[halves[0]], "part 2": scores[halves[1]],
                         "plain average": scores["plain average"], name: scores["merged"],
                         f"unmoved ({align})": report["unmoved_share"][halves[1]],
                         f"seconds ({name})": round(time.perf_counter() - begin, 1)})
    return cell


def run_cell(arch: str, target: float, run: str, steps: int, work: Path) -> dict:
    import onnxfuse

    options = dict(RUNS[run])
    source = model_path(arch, 1) if options.pop("fuse_first", False) else model_path(arch)
    if source != model_path(arch):
        options["fuse_first"] = (model_path(arch, 2),)
    begin = time.perf_counter()
    model, report = onnxfuse.compress(source, target_macs=target, method="fuse", calib=CALIB,
                                      train_data=str(train_file(work)), train_steps=steps, batch=128,
                                      validate=False, quiet=True, **options)
    cell = {"accuracy": onnx_accuracy(model), "seconds": round(time.perf_counter() - begin, 1),
            "macs": report["macs_after"] / report["macs_before"]}
    if "split_data" in report:
        split = report["split_data"]
        cell["student_seconds"] = [s["seconds"] for s in split["students"]]
        cell["unmoved"] = list(split["merge"]["unmoved_share"].values())
    if "fuse_first" in report:
        cell["unmoved"] = list(report["fuse_first"]["merge"]["unmoved_share"].values())
    if "ray" in options:
        import ray

        ray.shutdown()
    return cell


def one_cell(key: str, work: Path) -> dict:
    parts = key.split("|")
    if parts[1] == "merge":
        return merge_cell(parts[0], work)
    arch, target, run, steps = parts
    return run_cell(arch, float(target), run, int(steps), work)


def measure(models, target: float, steps: int, work: Path) -> None:
    from benchmarks.results import run_cells

    keys = [f"{arch}|merge" for arch in models]
    keys += [f"{arch}|{target}|{run}|{steps}" for arch in models for run in RUNS]
    run_cells(__file__, keys, STORE, work)


def write(store: dict) -> None:
    from benchmarks.results import write_section

    if not store:
        print("nothing measured yet: no table")
        return
    columns = ("part 1", "part 2", "ensemble", "plain average", "OT weights", "OT weights + REPAIR",
               "OT activations", "OT activations + REPAIR", "all data")
    lines = ["Command: `python benchmarks/merge.py` (cells in benchmarks/merge.json). Two networks of the zoo's "
             "architecture and width trained with the zoo's recipe on disjoint halves of the train split "
             "(`python -m models.train --arch A --part I/2 --seed I`, different seeds), merged with "
             "`onnxfuse merge A B --calib models/data/fmnist_calib512.npz --align activations|weights "
             "--repair none|stats` (stats, the default with --calib: REPAIR, each producer's channels given the "
             "models' mean channel statistics after averaging); "
             "accuracy (%) on the full test split. `all data`: the zoo network (one model, the whole split); "
             "`ensemble`: the mean of the halves' logits (two models' cost, the teacher of `--fuse-first`); "
             "`unmoved`: the share of the second model's channels the OT left in place.", "",
             "| model | " + " | ".join(columns) + " | unmoved (act.) | merge s |",
             "|---|" + "---|" * (len(columns) + 2)]
    for key in sorted(k for k in store if k.endswith("|merge")):
        cell = store[key]
        lines.append(f"| {key.split('|')[0]} | " + " | ".join(f"{100 * cell[c]:.2f}" for c in columns)
                     + f" | {cell['unmoved (activations)']:.2f} | {cell['seconds (OT activations + REPAIR)']:.0f} |")
    runs = sorted(k for k in store if not k.endswith("|merge"))
    if runs:
        lines += ["", "At 0.25 of the MACs, `compress … --method fuse --calib models/data/fmnist_calib512.npz "
                  "--train-data D --train-steps S --batch 128` (D the 10 000 unlabelled train images of "
                  "benchmarks/finetune.py) from the all-data network, with `--split-data 2` (each student "
                  "S/4 steps on its half, the merged one S/2 on all), and from the two halves with "
                  "`--fuse-first` (S/2 steps on the merged model, then S/2 after Intra-Fusion), all at the same "
                  "S; the last row is the split-data run with `--ray auto`.", "",
                  "| model | MACs | run | steps | accuracy | wall s | students' s |", "|---|---|---|---|---|---|---|"]
        for key in sorted(runs, key=lambda k: (k.split("|")[0], list(RUNS).index(k.split("|")[2]))):
            arch, target, run, steps = key.split("|")
            cell = store[key]
            students = ", ".join(f"{s:.0f}" for s in cell.get("student_seconds", []))
            lines.append(f"| {arch} | {cell['macs']:.3f} | {run} | {steps} | {100 * cell['accuracy']:.2f} | "
                         f"{cell['seconds']:.0f} | {students} |")
        lines += ["", scaling_text(store)]
    write_section("Model fusion and split-data training", "\n".join(lines))


def scaling_text(store: dict) -> str:
    """Serial vs Ray wall time, and what W workers would give, from the measured per-task times."""
    notes = []
    for key in sorted(k for k in store if k.endswith("PaF (split-data 2)|" + k.split("|")[-1])):
        ray_cell = store.get(key.replace("PaF (split-data 2)", "PaF (split-data 2), Ray"))
        serial = store[key]
        if ray_cell is None or "student_seconds" not in serial:
            continue
        tasks = serial["student_seconds"]
        rest = serial["seconds"] - sum(tasks)
        side_by_side = ", ".join(f"{s:.0f}" for s in ray_cell["student_seconds"])
        notes.append(f"{key.split('|')[0]}: serial {serial['seconds']:.0f} s (students {sum(tasks):.0f} s of it), "
                     f"Ray {ray_cell['seconds']:.0f} s (students {side_by_side} s); with K students on W ≥ K idle "
                     f"workers the wall time would be about "
                     f"{rest:.0f} + {max(tasks):.0f} s (the rest of the run + the slowest student), "
                     f"{serial['seconds'] / (rest + max(tasks)):.2f}x the serial run at K = 2")
    if not notes:
        return ""
    return ("Wall time, serial vs `--ray auto` on this 2-core machine: each student reserves the cores of its torch "
            "threads (2), so the two run one after the other, and Ray's start and transfers come on top. The "
            "recorded runs shared the machine with other benchmarks (a ViT training run, the transformer cells), "
            "so the figures are loose; the accuracies equal the serial runs'. " + "; ".join(notes) + ".")


def main() -> None:
    from benchmarks.results import cell_main, cell_parser

    parser = cell_parser(__doc__)
    parser.add_argument("--models", default="vgg11bn,resnet18")
    parser.add_argument("--target", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    cell_main(args, one_cell, lambda work: measure(args.models.split(","), args.target, args.steps, work),
              lambda: write(json.loads(STORE.read_text()) if STORE.exists() else {}))


if __name__ == "__main__":
    main()
