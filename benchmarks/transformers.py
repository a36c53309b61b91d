"""Transformers: the zoo ViT (models/vit_fmnist_*.onnx: `python -m models.train --arch vit …` then
`python -m models.export_vit`) compressed to 0.5 and 0.25 of the MACs.

- share: for each export form (nn.MultiheadAttention through TorchScript and dynamo, attention
  written out, that after ONNX Runtime's transformer optimizer) and PP-OCRv4 rec, the groups
  `inspect` finds and the share of MACs in nodes that prunable groups shrink;
- accuracy (full test split) of the TorchScript nn.MultiheadAttention export, prune vs fuse:
  data-free (uniform, no repair: the default, which keeps the LayerNorm-normalised hidden width when
  pruning and shrinks it when fusing, and each method with it kept and shrunk), with the calibration
  file (uniform + stats, uniform + the per-head / per-neuron rescale, uniform + lsq, the defaults:
  sensitivity allocation + lsq), and the defaults then 1000 steps of distillation on the 10 000
  unlabelled train images of benchmarks/finetune.py;
- onnxsim 0.8.1 at equal MACs: `apply_attention_head_pruning` (heads) + `apply_structured_pruning`
  (FFN), the sparsity bisected to the target, with and without its ridge refit, on the
  nn.MultiheadAttention export and on the form with com.microsoft Attention ops (the only one
  whose heads it prunes), where the defaults of onnxfuse run on the same file;
- CPU latency at batch 32 (`onnxfuse bench`, 2 threads): speed-up against the MAC ratio.

Every cell runs in a fresh process and is stored in benchmarks/transformers.json.

    python benchmarks/transformers.py [--targets 0.5,0.25] [--steps 1000] [--work DIR] [--tables-only]

Writes the section "Transformers" of RESULTS.md.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.finetune import CALIB, onnx_accuracy, train_file  # noqa: E402

STORE = ROOT / "benchmarks" / "transformers.json"
FORMS = {"nn.MultiheadAttention, TorchScript": "vit_fmnist_mha.onnx",
         "nn.MultiheadAttention, dynamo": "vit_fmnist_dynamo.onnx",
         "written out, TorchScript": "vit_fmnist_manual.onnx",
         "written out, ORT transformer optimizer": "vit_fmnist_ortopt.onnx",
         "com.microsoft Attention ops": "vit_fmnist_fused.onnx"}
MODEL = ROOT / "models" / "vit_fmnist_mha.onnx"
FUSED = ROOT / "models" / "vit_fmnist_fused.onnx"
RECIPES = {
    "data-free": dict(allocate="uniform", repair="none"),  # the default: prune keeps the hidden width, fuse shrinks it
    "data-free, hidden width kept": dict(allocate="uniform", repair="none", layernorm_width="keep"),
    "data-free, hidden width shrunk": dict(allocate="uniform", repair="none", layernorm_width="shrink"),
    "calib: stats": dict(calib=CALIB, allocate="uniform", repair="stats"),
    "calib: rescale": dict(calib=CALIB, allocate="uniform", repair="rescale"),
    "calib: lsq": dict(calib=CALIB, allocate="uniform", repair="lsq"),
    "calib: defaults": dict(calib=CALIB),
    "defaults + distil": dict(calib=CALIB, train=True),
}
REC = "models/ch_PP-OCRv4_rec_infer.onnx"


def share_cell(form: str) -> dict:
    import onnxfuse

    if form == "PP-OCRv4 rec":
        import importlib.util

        package = importlib.util.find_spec("rapidocr_onnxruntime")  # found, not imported (it needs OpenCV)
        report = onnxfuse.inspect(str(Path(package.origin).parent / REC), input_shape=["1,3,48,320"])
    else:
        report = onnxfuse.inspect(str(ROOT / "models" / FORMS[form]))
    prunable = [g for g in report["groups"] if g["prunable"]]
    return {"groups": len(report["groups"]), "prunable": len(prunable), "share": report["prunable_mac_share"],
            "head_groups": sum(1 for g in prunable if g["width"] in (4, 8))}


def compress_cell(target: float, method: str, recipe: str, steps: int, work: Path, model: Path = MODEL) -> dict:
    import onnxfuse

    options = dict(RECIPES[recipe])
    if options.pop("train", False):
        options.update(train_data=str(train_file(work)), train_steps=steps, batch=128)
    begin = time.perf_counter()
    compressed, report = onnxfuse.compress(str(model), target_macs=target, method=method, validate=False,
                                           quiet=True, **options)
    return {"accuracy": onnx_accuracy(compressed), "macs": report["macs_after"] / report["macs_before"],
            "seconds": round(time.perf_counter() - begin, 1),
            "kept": {str(g["width"]): g["kept"] for g in report["groups"] if g["prunable"]}}


def onnxsim_cell(target: float, refit: bool, path: Path = MODEL) -> dict:
    """Heads and FFN pruned by onnxsim at one sparsity, bisected to the largest MAC ratio not above
    the target; the result as it stands when it cannot reach it."""
    import numpy as np
    import onnx
    import onnxsim.pruning as pruning

    from benchmarks.competitor_onnxsim import mac_count

    original = onnx.load(str(path))
    dense = mac_count(original)

    def pruned(sparsity: float):
        model = pruning.apply_attention_head_pruning(original, sparsity=sparsity)
        return pruning.apply_structured_pruning(model, sparsity=sparsity, importance_norm="l2")

    low, high, best = 0.0, 0.999, None
    for _ in range(14):
        middle = (low + high) / 2
        model = pruned(middle)
        ratio = mac_count(model) / dense
        if ratio <= target:
            best, high = (middle, model, ratio), middle
        else:
            low = middle
    reached = best is not None
    if not reached:
        model = pruned(high)
        best = (high, model, mac_count(model) / dense)
    sparsity, model, ratio = best
    if refit:
        import onnxsim

        images = np.load(CALIB)["input"][:256].astype(np.float32)
        model = onnxsim.apply_pruning_finetune(original, model, calibration_data=[{"input": images[i:i + 64]}
                                                                                   for i in range(0, 256, 64)],
                                               reg_param=1e-2, providers=["CPUExecutionProvider"])
    return {"accuracy": onnx_accuracy(model), "macs": ratio, "sparsity": round(sparsity, 4), "reached": reached}


def latency_cell(target: float, work: Path) -> dict:
    import onnxfuse

    model, report = onnxfuse.compress(str(MODEL), target_macs=target, allocate="uniform", repair="none",
                                      validate=False, quiet=True)
    timing = onnxfuse.bench(str(MODEL), model, batch_sizes=(32,), runs=30, threads=1, quiet=True)
    row = timing["batches"][0]
    return {"macs": report["macs_after"] / report["macs_before"], "speedup": row["speedup"],
            "original_ms": row["original"]["median_ms"], "compressed_ms": row["compressed"]["median_ms"]}


def one_cell(key: str, work: Path) -> dict:
    kind, *rest = key.split("|")
    if kind == "share":
        return share_cell(rest[0])
    if kind in ("onnxsim", "onnxsim-fused"):
        return onnxsim_cell(float(rest[0]), rest[1] == "refit", FUSED if kind == "onnxsim-fused" else MODEL)
    if kind == "latency":
        return latency_cell(float(rest[0]), work)
    target, method, recipe, steps = rest
    return compress_cell(float(target), method, recipe, int(steps), work, FUSED if kind == "compress-fused" else MODEL)


def measure(targets, steps: int, work: Path) -> None:
    from benchmarks.results import run_cells

    keys = [f"share|{form}" for form in [*FORMS, "PP-OCRv4 rec"]]
    compress = [f"compress|{t}|{m}|{r}|{steps}" for t in targets for r in RECIPES for m in ("prune", "fuse")]
    keys += [k for k in compress if "distil" not in k]
    keys += [f"{kind}|{t}|{v}" for kind in ("onnxsim", "onnxsim-fused") for t in targets
             for v in ("magnitude", "refit")]
    keys += [f"compress-fused|{t}|{m}|calib: defaults|{steps}" for t in targets for m in ("prune", "fuse")]
    keys += [f"latency|{t}" for t in targets]
    keys += [k for k in compress if "distil" in k]  # the long ones last
    run_cells(__file__, keys, STORE, work)


def write(store: dict) -> None:
    from benchmarks.finetune import onnx_accuracy as accuracy_of
    from benchmarks.results import write_section

    if not store:
        print("nothing measured yet: no table")
        return
    dense = accuracy_of(str(MODEL))
    lines = ["Command: `python benchmarks/transformers.py` (cells in benchmarks/transformers.json). The zoo ViT "
             "(4×4 patches, 6 blocks, width 128, 4 heads, MLP 256) trained on Fashion-MNIST "
             f"(`models/results/vit_fmnist.json`), dense accuracy {100 * dense:.2f} % on the full test split.", "",
             "Groups `onnxfuse inspect` finds per export form, and the share of MACs in nodes that prunable groups "
             "shrink (the rest: Q·Kᵀ and A·V, which shrink with the heads, and the frozen parts):", "",
             "| form | groups (prunable) | head groups | MACs in shrinkable nodes |", "|---|---|---|---|"]
    for key in sorted(k for k in store if k.startswith("share|")):
        c = store[key]
        lines.append(f"| {key.split('|', 1)[1]} | {c['groups']} ({c['prunable']}) | {c['head_groups']} | "
                     f"{100 * c['share']:.1f} % |")
    runs = sorted(k for k in store if k.startswith("compress|"))
    if runs:
        steps = "/".join(sorted({k.split("|")[4] for k in runs if "distil" in k})) or "–"
        lines += ["", "Accuracy (%, the MAC ratio reached in parentheses) of "
                  "`compress models/vit_fmnist_mha.onnx --target-macs T --method M` with each recipe "
                  f"(calibration: models/data/fmnist_calib512.npz; distillation: {steps} steps, batch 128, on the "
                  "10 000 train images). Data-free means uniform sparsity and no repair, with `--layernorm-width` at "
                  "its default (keep when pruning, shrink when fusing) or set to keep / shrink:", "",
                  "| MACs | recipe | prune | fuse |", "|---|---|---|---|"]
        targets = sorted({k.split("|")[1] for k in runs}, reverse=True)
        for target in targets:
            for recipe in RECIPES:
                by_method = {k.split("|")[2]: store[k] for k in runs if k.split("|")[1] == target
                             and k.split("|")[3] == recipe}
                if not by_method:
                    continue
                text = [f"{100 * by_method[m]['accuracy']:.2f} ({by_method[m]['macs']:.3f})" if m in by_method else ""
                        for m in ("prune", "fuse")]
                lines.append(f"| {target} | {recipe} | " + " | ".join(text) + " |")
    sims = sorted(k for k in store if k.startswith("onnxsim"))
    if sims:
        lines += ["", "onnxsim 0.8.1 against onnxfuse on the same file (onnxsim: heads by "
                  "`apply_attention_head_pruning`, FFN by `apply_structured_pruning`, one sparsity bisected to the "
                  "largest MAC ratio not above the target; `refit`: its `apply_pruning_finetune` ridge refit on the "
                  "calibration images; onnxfuse: `--target-macs T --calib C` with the defaults). Accuracy % (MACs "
                  "reached):", "",
                  "| file | target | onnxsim | onnxsim + refit | onnxfuse prune | onnxfuse fuse |",
                  "|---|---|---|---|---|---|"]

        def cell(c):
            if c is None:
                return ""
            note = "" if c.get("reached", True) else ", target not reached"
            return f"{100 * c['accuracy']:.2f} ({c['macs']:.3f}{note})"

        for kind, ours, name in (("onnxsim", "compress", MODEL.name), ("onnxsim-fused", "compress-fused", FUSED.name)):
            for target in sorted({k.split("|")[1] for k in sims if k.startswith(kind + "|")}, reverse=True):
                mine = {m: next((store[k] for k in store if k.startswith(f"{ours}|{target}|{m}|calib: defaults|")),
                                None) for m in ("prune", "fuse")}
                lines.append(f"| {name} | {target} | {cell(store.get(f'{kind}|{target}|magnitude'))} | "
                             f"{cell(store.get(f'{kind}|{target}|refit'))} | {cell(mine['prune'])} | "
                             f"{cell(mine['fuse'])} |")
    latencies = sorted(k for k in store if k.startswith("latency|"))
    if latencies:
        lines += ["", "CPU latency at batch 32 (`onnxfuse bench`, 1 intra-op thread, 30 interleaved runs, while a "
                  "training job used the other core; "
                  "data-free uniform pruning at the target):", "",
                  "| MACs | original ms | compressed ms | speed-up | ideal (1 / MAC ratio) |", "|---|---|---|---|---|"]
        for key in latencies:
            c = store[key]
            lines.append(f"| {c['macs']:.3f} | {c['original_ms']:.1f} | {c['compressed_ms']:.1f} | "
                         f"{c['speedup']:.2f}x | {1 / c['macs']:.2f}x |")
    write_section("Transformers", "\n".join(lines))


def main() -> None:
    from benchmarks.results import cell_main, cell_parser

    parser = cell_parser(__doc__)
    parser.add_argument("--targets", default="0.5,0.25")
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    cell_main(args, one_cell, lambda work: measure(args.targets.split(","), args.steps, work),
              lambda: write(json.loads(STORE.read_text()) if STORE.exists() else {}))


if __name__ == "__main__":
    main()
