"""The training stage on the zoo: `compress --target-macs T --calib C` (defaults: sensitivity allocation
and lsq repair) as the start, then `finetune` by label-free distillation from the original, next to
the anchor: Torch-Pruning's L1 pruning of the same torch architecture (models/zoo.py, weights read from
the _bn ONNX file) at the same MACs, trained by the same distillation loop in native torch.

Both students see the same data: 10 000 Fashion-MNIST train images drawn with seed 0 (no labels), of
which the last 1 000 are held out to choose the best step; the same teacher (the folded original in
ONNX Runtime), loss (KL at temperature 4), optimizer (SGD, Nesterov momentum 0.9, lr 0.01, weight decay
5e-5), warm-up + cosine schedule, batch 128, crop+flip augmentation and seeds. Accuracy on the full
test split. Every cell (model, target, method, steps) runs in a fresh process (its own peak RSS) and is
stored in benchmarks/finetune.json, so an interrupted run resumes where it stopped.

    python benchmarks/finetune.py [--models resnet18,...] [--targets 0.25,0.1,0.5] [--methods prune,tp,fuse]
                                  [--steps 1000,250,4000] [--work DIR] [--tables-only]

Also measures the training step of the torch view against native torch on the same (dense,
BN-folded) architecture, interleaved, and writes the section "Training stage" of RESULTS.md and
benchmarks/finetune.png (accuracy vs steps).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STORE = ROOT / "benchmarks" / "finetune.json"
CALIB = str(ROOT / "models" / "data" / "fmnist_calib512.npz")
MODELS = "resnet18,vgg11bn,tinyres,mobilenetv2,resnet50s"
WIDTHS = {"resnet18": 0.25, "vgg11bn": 0.25, "mobilenetv2": 0.35, "resnet50s": 0.25, "tinyres": 1.0}
TRAIN_IMAGES, SEED, BATCH = 10_000, 0, 128
METHOD_NAMES = {"prune": "onnxfuse prune", "fuse": "onnxfuse fuse", "tp": "Torch-Pruning L1"}


# --------------------------------------------------------------------------- shared data
def train_file(work: Path) -> Path:
    from models import fmnist

    path = work / "train10k.npz"
    if not path.exists():
        images, _ = fmnist.load_train_split()
        pick = np.sort(np.random.default_rng(SEED).choice(len(images), TRAIN_IMAGES, replace=False))
        np.savez(path, input=images[pick].astype(np.uint8))  # uncompressed: memory-mapped by finetune
    return path


def test_set():
    from models import fmnist

    images, labels = fmnist.load_test_split()
    return images.astype(np.float32), labels


def onnx_accuracy(model) -> float:
    from onnxfuse.calibration.data import Dataset
    from onnxfuse.runtime.sessions import run, session

    images, labels = test_set()
    logits = run(session(model, "cpu"), Dataset({"input": images}), 500)[0]
    return float((logits.argmax(1) == labels).mean())


# --------------------------------------------------------------------------- one cell, in its own process
def start_model(arch: str, target: float, method: str, work: Path) -> Path:
    """The compressed start (cached in `work`): the defaults at this MAC target."""
    import onnx

    import onnxfuse

    path = work / f"{arch}_{method}_{target}.onnx"
    if not path.exists():
        model, _ = onnxfuse.compress(str(ROOT / "models" / f"{arch}_fmnist_folded.onnx"), target_macs=target,
                                     calib=CALIB, method=method, validate=False, quiet=True)
        onnx.save(model, path)
    return path


def run_onnxfuse(arch: str, target: float, method: str, steps: int, work: Path) -> dict:
    import onnx

    import onnxfuse

    start = start_model(arch, target, method, work)
    if steps == 0:
        return {"accuracy": onnx_accuracy(onnx.load(start))}
    teacher = str(ROOT / "models" / f"{arch}_fmnist_folded.onnx")
    model, report = onnxfuse.finetune(teacher, str(start), train_data=str(train_file(work)), train_steps=steps,
                                      batch=BATCH, seed=SEED, quiet=True)
    return {"accuracy": onnx_accuracy(model), "seconds_per_step": report["seconds_per_step"],
            "best_step": report["best_step"], "loss_curve": report["loss_curve"]}


def torch_model(arch: str):
    """The zoo architecture with the weights of its _bn ONNX file (initializer names are state-dict keys)."""
    import onnx
    import torch
    from onnx import numpy_helper

    from models import zoo

    model = onnx.load(ROOT / "models" / f"{arch}_fmnist_bn.onnx")
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    values.update({n.output[0]: values[n.input[0]] for n in model.graph.node
                   if n.op_type == "Identity" and n.input[0] in values})
    net = zoo.build(arch, width=WIDTHS[arch])
    state = {k: torch.from_numpy(values[k].copy()) if k in values else v for k, v in net.state_dict().items()}
    net.load_state_dict(state)
    return net.eval()


def tp_pruned(arch: str, target: float):
    """Torch-Pruning's MetaPruner with L1 magnitude importance at the uniform ratio (bisection) whose
    MACs are `target` of the dense model's, the classifier left whole."""
    import torch
    import torch_pruning as tp

    example = torch.zeros(1, 1, 28, 28)
    dense_macs = tp.utils.count_ops_and_params(torch_model(arch), example)[0]
    low, high, best = 0.0, 0.99, None
    for _ in range(12):
        ratio = (low + high) / 2
        net = torch_model(arch)
        last = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
        tp.pruner.MetaPruner(net, example, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio,
                             ignored_layers=[last]).step()
        macs = tp.utils.count_ops_and_params(net, example)[0] / dense_macs
        if macs > target:
            low = ratio
        else:
            high, best = ratio, (net, macs)
    return best


def run_tp(arch: str, target: float, steps: int, work: Path) -> dict:
    """The anchor: the same distillation loop as finetune's, in native torch, BN trained."""
    import torch

    from onnxfuse.calibration.data import input_specs, load_npz
    from onnxfuse.training import distill
    from onnxfuse.training.data import augment, image_layout, split
    from onnxfuse.training.options import TrainOptions

    net, macs = tp_pruned(arch, target)
    teacher_path = str(ROOT / "models" / f"{arch}_fmnist_folded.onnx")
    teacher_proto = __import__("onnx").load(teacher_path)
    images, labels = test_set()

    def test_accuracy(module) -> float:
        module.eval()
        with torch.no_grad():
            logits = torch.cat([module(torch.from_numpy(images[i:i + 500])) for i in range(0, len(images), 500)])
        return float((logits.argmax(1).numpy() == labels).mean())

    if steps == 0:
        return {"accuracy": test_accuracy(net), "macs": macs}
    options = TrainOptions(train_data="x", train_steps=steps, batch=BATCH)
    data = load_npz(train_file(work), teacher_proto, mmap=True)
    train, val = split(data, teacher_proto, None, options.val_samples)
    layout = image_layout(input_specs(teacher_proto))
    teacher = distill.Teacher(teacher_path, torch.device("cpu"))
    reference = teacher(val.feeds)[0].argmax(1)
    outputs = distill.Outputs(["kl"])
    trained = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD([{"params": [p for p in trained if p.ndim >= 2], "weight_decay": options.weight_decay},
                                 {"params": [p for p in trained if p.ndim < 2], "weight_decay": 0.0}],
                                lr=options.peak_lr, momentum=0.9, nesterov=True)

    def agreement() -> float:
        net.eval()
        with torch.no_grad():
            return float((net(torch.from_numpy(val.feeds["input"])).argmax(1) == reference).float().mean())

    best_score, best_step, seconds = agreement(), 0, 0.0
    best_state = {k: v.clone() for k, v in net.state_dict().items()}
    for step in range(steps):
        begin = time.perf_counter()
        torch.manual_seed(SEED * 1_000_003 + step)
        feeds, _ = train.batch(step, BATCH, SEED)
        feeds = augment(feeds, layout, np.random.default_rng([SEED, step, 1]))
        target_logits = teacher(feeds)
        net.train()
        loss = distill.loss_of((net(torch.from_numpy(feeds["input"])),), target_logits, outputs,
                               options.temperature, None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, options.clip_grad)
        for group in optimizer.param_groups:
            group["lr"] = distill.learning_rate(step, options)
        optimizer.step()
        seconds += time.perf_counter() - begin
        if (step + 1) % options.val_every == 0 or step + 1 == steps:
            score = agreement()
            if score > best_score:
                best_score, best_step = score, step + 1
                best_state = {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    return {"accuracy": test_accuracy(net), "seconds_per_step": round(seconds / steps, 4), "best_step": best_step,
            "macs": macs}


def step_times(arch: str, repeats: int = 15) -> dict:
    """Median seconds of one training step (forward, backward, SGD) at batch 128, interleaved: the
    view of the folded ONNX file against the torch module with BN folded the same way."""
    import copy

    import onnx
    import torch
    from torch.fx.experimental.optimization import fuse

    from onnxfuse.training.view import TorchView

    native = fuse(copy.deepcopy(torch_model(arch)))
    view = TorchView(onnx.load(ROOT / "models" / f"{arch}_fmnist_folded.onnx"))
    x = torch.rand(BATCH, 1, 28, 28) * 255
    times = {"view": [], "native": []}
    runners = {"view": (view, lambda: view(x)[0]), "native": (native, lambda: native(x))}
    optimizers = {k: torch.optim.SGD(m.parameters(), lr=1e-9, momentum=0.9) for k, (m, _) in runners.items()}
    for i in range(repeats + 2):
        for name, (module, forward) in runners.items():
            module.train()
            begin = time.perf_counter()
            loss = forward().float().logsumexp(1).mean()
            optimizers[name].zero_grad()
            loss.backward()
            optimizers[name].step()
            if i >= 2:  # the first two are warm-up
                times[name].append(time.perf_counter() - begin)
    view_s, native_s = float(np.median(times["view"])), float(np.median(times["native"]))
    return {"view": round(view_s, 4), "native": round(native_s, 4), "ratio": round(view_s / native_s, 3)}


def one_cell(key: str, work: Path) -> dict:
    arch, target, method, steps = key.split("|")
    if method == "steptime":
        return step_times(arch)
    if method == "tp":
        result = run_tp(arch, float(target), int(steps), work)
    else:
        result = run_onnxfuse(arch, float(target), method, int(steps), work)
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


# --------------------------------------------------------------------------- driver, tables, plot
def load_store() -> dict:
    return json.loads(STORE.read_text()) if STORE.exists() else {}


def measure(models: list[str], targets: list[float], methods: list[str], steps: list[int], work: Path) -> None:
    from benchmarks.results import run_cells

    keys = [f"{arch}|0|steptime|0" for arch in models]
    keys += [f"{arch}|{t}|{m}|{s}" for t in targets for s in steps for arch in models for m in methods]
    run_cells(__file__, keys, STORE, work)


def dense_accuracies() -> dict:
    from models import fmnist  # noqa: F401  (the test split must be there)

    path = ROOT / "benchmarks" / "defaults.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    return {arch: cells["dense"] for arch, cells in stored.items() if isinstance(cells, dict) and "dense" in cells}


def write(store: dict) -> None:
    from benchmarks.results import write_section

    dense = dense_accuracies()
    cells = {}
    for key, value in store.items():
        arch, target, method, steps = key.split("|")
        if method != "steptime":
            cells.setdefault((arch, float(target), method), {})[int(steps)] = value
    all_steps = sorted({s for c in cells.values() for s in c})
    lines = ["Command: `python benchmarks/finetune.py` (cells stored in benchmarks/finetune.json). Start: "
             "`compress --target-macs T --calib models/data/fmnist_calib512.npz` with the defaults (sensitivity "
             "allocation, lsq repair); then `finetune` on 10 000 unlabelled Fashion-MNIST train images (1 000 of them "
             "held out to pick the best step), batch 128, SGD lr 0.01, KL at temperature 4, crop+flip. Anchor: "
             "Torch-Pruning 1.6 MetaPruner, L1 magnitude, uniform ratio bisected to the same MACs, the classifier "
             "whole, trained by the same loop in native torch (BN in train mode). Accuracy on the full test split "
             "(10 000), as % of the dense model's in parentheses; s/step includes the teacher's forward in ONNX "
             "Runtime; 2 CPU cores shared with other work, so times are rough.", "",
             "| model | MACs | method | " + " | ".join(f"{s} steps" for s in all_steps) + " | s/step | peak RSS |",
             "|---|---|---|" + "---|" * len(all_steps) + "---|---|"]
    for (arch, target, method), by_steps in sorted(cells.items(), key=lambda kv: (kv[0][0], -kv[0][1], kv[0][2])):
        base = dense.get(arch)
        row = []
        for s in all_steps:
            if s not in by_steps:
                row.append("")
                continue
            acc = by_steps[s]["accuracy"]
            row.append(f"{100 * acc:.2f}" + (f" ({100 * acc / base:.1f})" if base else ""))
        trained = [by_steps[s] for s in all_steps if s and s in by_steps]
        per_step = f"{trained[-1]['seconds_per_step']:.3f}" if trained else ""
        rss = f"{max(v['peak_rss_mib'] for v in by_steps.values()):.0f} MiB"
        lines.append(f"| {arch} | {target} | {METHOD_NAMES[method]} | " + " | ".join(row) + f" | {per_step} | {rss} |")
    times = {k.split("|")[0]: v for k, v in store.items() if k.split("|")[2] == "steptime"}
    if times:
        lines += ["", "Training step of the torch view against native torch on the same dense, BN-folded "
                  "architecture (median of 15 interleaved steps, batch 128, forward + backward + SGD):", "",
                  "| model | view (s) | native torch (s) | view / native |", "|---|---|---|---|"]
        lines += [f"| {a} | {t['view']:.4f} | {t['native']:.4f} | {t['ratio']:.3f} |" for a, t in sorted(times.items())]
    lines += ["", "![accuracy vs steps](finetune.png)"]
    write_section("Training stage", "\n".join(lines))
    plot(cells, dense)


def plot(cells: dict, dense: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no finetune.png")
        return
    from benchmarks.results import save_figure

    panels = sorted({(arch, target) for arch, target, _ in cells}, key=lambda p: (p[0], -p[1]))
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, (arch, target) in zip(axes.flat, panels):
        for method in METHOD_NAMES:
            by_steps = cells.get((arch, target, method))
            if by_steps:
                steps = sorted(by_steps)
                ax.plot(steps, [100 * by_steps[s]["accuracy"] for s in steps], marker="o", label=METHOD_NAMES[method])
        if arch in dense:
            ax.axhline(100 * dense[arch], color="grey", linestyle="--", linewidth=1, label="dense")
        shown = [100 * v["accuracy"] for m in METHOD_NAMES for v in cells.get((arch, target, m), {}).values()
                 if v["accuracy"] > 0.5]
        ax.set_ylim(min(shown, default=50) - 3, 100)  # an untrained start below half is off the axis
        ax.set_title(f"{arch}, {target} of the MACs", fontsize=9)
        ax.set_xlabel("training steps")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("accuracy below 50 % (Torch-Pruning before training: 10 %) is off the axis", fontsize=8)
    save_figure(fig, axes, ROOT / "benchmarks" / "finetune.png")


def main() -> None:
    from benchmarks.results import cell_main, cell_parser

    parser = cell_parser(__doc__)
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--targets", default="0.25,0.1,0.5")
    parser.add_argument("--methods", default="prune,tp,fuse")
    parser.add_argument("--steps", default="0,1000,250,4000")
    args = parser.parse_args()
    cell_main(args, one_cell, lambda work: measure(args.models.split(","), [float(t) for t in args.targets.split(",")],
                                                   args.methods.split(","), [int(s) for s in args.steps.split(",")],
                                                   work), lambda: write(load_store()))


if __name__ == "__main__":
    main()
