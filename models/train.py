"""Train a Fashion-MNIST reference model and export it to ONNX.

Example:
    python -m models.train --arch resnet18 --width 0.25 --epochs 15 --seed 0

Outputs (in models/):
    <arch>_fmnist_folded.onnx   TorchScript export, TrainingMode.EVAL (BN folded into Conv)
    <arch>_fmnist_bn.onnx       TorchScript export, TrainingMode.PRESERVE on an eval()
                                model: BatchNormalization nodes kept, inference form
    checkpoints/<arch>_fmnist.pt   trained state_dict (+ arch/width metadata)
    results/<arch>_fmnist.json     training summary (accuracy, time, command)
    logs/<arch>_train.log          per-epoch log

Re-export without training:
    python -m models.train --arch resnet18 --export-only
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import sys
import time
from pathlib import Path

# must be set before torch loads OpenMP: spinning worker threads of a niced job on
# a busy machine waste most of its CPU share
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from . import fmnist  # noqa: E402
from .zoo import build  # noqa: E402

MODELS_DIR = Path(__file__).resolve().parent
CKPT_DIR = MODELS_DIR / "checkpoints"
RESULTS_DIR = MODELS_DIR / "results"
LOG_DIR = MODELS_DIR / "logs"
OPSET = 17


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def augment(xb: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding `pad`) + random horizontal flip on a uint8 batch
    (N,1,28,28), implemented with a single gather."""
    n, _, h, w = xb.shape
    padded = F.pad(xb, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    ar_h = torch.arange(h)
    ar_w = torch.arange(w)
    rows = oy[:, None] + ar_h[None, :]                               # (n, h)
    cols_w = torch.where(flip[:, None], (w - 1) - ar_w[None, :], ar_w[None, :])
    cols = ox[:, None] + cols_w                                       # (n, w)
    idx_n = torch.arange(n)[:, None, None]
    out = padded[idx_n, 0, rows[:, :, None], cols[:, None, :]]        # (n, h, w)
    return out.unsqueeze(1)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int = 1000,
             channels_last: bool = False) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), bs):
        xb = x[i:i + bs].float()
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        correct += (model(xb).argmax(1) == y[i:i + bs]).sum().item()
    return correct / len(x)


def _part(text: str) -> tuple[int, int]:
    try:
        i, k = (int(t) for t in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected I/K, e.g. 1/2") from None
    if not 1 <= i <= k:
        raise argparse.ArgumentTypeError(f"{text!r}: need 1 <= I <= K")
    return i, k


def train_part(x: np.ndarray, y: np.ndarray, i: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The i-th (1-based) of k disjoint parts of the train split, the same parts for every --seed."""
    indices = np.sort(np.array_split(np.random.default_rng(0).permutation(len(x)), k)[i - 1])
    return x[indices], y[indices]


def param_groups(model: nn.Module, wd: float):
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


# --------------------------------------------------------------------------- export
def export_onnx(model: nn.Module, stem: str, out_dir: Path = MODELS_DIR,
                check_images: np.ndarray | None = None, log=print) -> dict:
    """Export folded + bn ONNX files and verify them against torch (<= 1e-4)."""
    import onnx

    from .onnx_utils import bn_nodes_inference_mode, op_counts, ort_logits, ort_session

    model = model.to(memory_format=torch.contiguous_format).eval()
    dummy = torch.rand(2, 1, 28, 28) * 255.0
    files = {
        "folded": out_dir / f"{stem}_folded.onnx",
        "bn": out_dir / f"{stem}_bn.onnx",
    }
    modes = {"folded": torch.onnx.TrainingMode.EVAL,
             "bn": torch.onnx.TrainingMode.PRESERVE}
    if check_images is None:
        check_images = fmnist.load_eval_sample()[0][:256] if fmnist.EVAL_FILE.exists() \
            else (np.random.RandomState(0).rand(64, 1, 28, 28) * 255).astype(np.uint8)
    with torch.no_grad():
        ref = model(torch.from_numpy(check_images).float()).numpy()
    info = {}
    for kind, path in files.items():
        torch.onnx.export(
            model, (dummy,), str(path), opset_version=OPSET,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            training=modes[kind], do_constant_folding=True, dynamo=False)
        m = onnx.load(str(path))
        onnx.checker.check_model(m, full_check=True)
        n_bn, inference_ok = bn_nodes_inference_mode(m)
        if kind == "bn" and (n_bn == 0 or not inference_ok):
            raise RuntimeError(f"{path}: expected inference-mode BatchNormalization nodes "
                               f"(found {n_bn}, inference_ok={inference_ok})")
        if kind == "folded" and n_bn != 0:
            raise RuntimeError(f"{path}: BatchNormalization nodes were not folded ({n_bn})")
        out = ort_logits(ort_session(str(path)), check_images)
        diff = float(np.abs(out - ref).max())
        log(f"export {path.name}: ops={dict(op_counts(m))} max|ort-torch|={diff:.2e}")
        if diff > 1e-4:
            raise RuntimeError(f"{path}: ORT vs torch max abs diff {diff:.3e} > 1e-4")
        info[kind] = {"file": path.name, "max_abs_diff_vs_torch": diff, "bn_nodes": n_bn}
    return info


# --------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", required=True)
    ap.add_argument("--width", type=float, default=None,
                    help="width multiplier (default: from checkpoint with --export-only, else 1.0)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--opt", choices=["sgd", "adamw"], default="sgd")
    ap.add_argument("--lr", type=float, default=0.1, help="peak LR (OneCycle)")
    ap.add_argument("--wd", type=float, default=5e-4)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--pad", type=int, default=2, help="random-crop padding")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--part", type=_part, default=None, metavar="I/K",
                    help="train on the I-th of K disjoint parts of the train split (split drawn with seed 0, "
                         "whatever --seed); outputs named <arch>_fmnist_partIofK")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--max-steps", type=int, default=0, help="debug: stop each epoch after N steps")
    ap.add_argument("--init", type=Path, default=None, metavar="CKPT",
                    help="start from this checkpoint's weights (a second OneCycle run); the log is appended")
    ap.add_argument("--export-only", action="store_true", help="load checkpoint and re-export")
    ap.add_argument("--no-export", action="store_true")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    seed_all(args.seed)
    for d in (CKPT_DIR, RESULTS_DIR, LOG_DIR):
        d.mkdir(parents=True, exist_ok=True)
    part = f"_part{args.part[0]}of{args.part[1]}" if args.part else ""
    stem = f"{args.arch}_fmnist{part}"
    ckpt_path = CKPT_DIR / f"{stem}.pt"
    log_path = LOG_DIR / f"{args.arch}{part}_train.log"
    logf = open(log_path, "a" if args.export_only or args.init else "w")

    def log(msg):
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    if args.export_only:
        ck = torch.load(ckpt_path, map_location="cpu")
        width = args.width if args.width is not None else ck["width"]
        model = build(args.arch, width)
        model.load_state_dict(ck["state_dict"])
        export_onnx(model, stem, log=log)
        return

    width = args.width if args.width is not None else 1.0
    command = "python -m models.train " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    log(f"command: {command}")
    log(f"torch {torch.__version__}, threads {torch.get_num_threads()}")

    xtr, ytr = fmnist.load_train_split()
    if args.part:
        xtr, ytr = train_part(xtr, ytr, *args.part)
    xte, yte = fmnist.load_test_split()
    xtr, ytr = torch.from_numpy(xtr), torch.from_numpy(ytr)
    xte, yte = torch.from_numpy(xte), torch.from_numpy(yte)

    model = build(args.arch, width)
    if args.init:
        model.load_state_dict(torch.load(args.init, map_location="cpu")["state_dict"])
        log(f"initialised from {args.init}")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"arch {args.arch} width {width} params {n_params}")
    cl = not args.no_channels_last
    if cl:
        model = model.to(memory_format=torch.channels_last)

    groups = param_groups(model, args.wd)
    if args.opt == "sgd":
        opt = torch.optim.SGD(groups, lr=args.lr, momentum=0.9, nesterov=True)
    else:
        opt = torch.optim.AdamW(groups, lr=args.lr)
    steps_per_epoch = math.ceil(len(xtr) / args.batch_size)  # drop nothing
    if args.max_steps:
        steps_per_epoch = min(steps_per_epoch, args.max_steps)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch,
        pct_start=0.25, div_factor=25.0, final_div_factor=1e3)
    crit = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    gen = torch.Generator().manual_seed(args.seed)

    t_start = time.time()
    history = []
    for epoch in range(args.epochs):
        t0 = time.time()
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        tot_loss, tot_correct, seen = 0.0, 0, 0
        for step in range(steps_per_epoch):
            idx = perm[step * args.batch_size:(step + 1) * args.batch_size]
            xb = augment(xtr[idx], args.pad, gen).float()
            if cl:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yb = ytr[idx]
            out = model(xb)
            loss = crit(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot_loss += loss.item() * len(idx)
            tot_correct += (out.argmax(1) == yb).sum().item()
            seen += len(idx)
        train_time = time.time() - t0
        test_acc = evaluate(model, xte, yte, channels_last=cl)
        dt = time.time() - t0
        history.append({"epoch": epoch + 1, "loss": tot_loss / seen, "train_acc": tot_correct / seen,
                        "test_acc": test_acc, "seconds": dt})
        log(f"epoch {epoch + 1:3d}/{args.epochs} loss {tot_loss / seen:.4f} "
            f"train_acc {tot_correct / seen:.4f} test_acc {test_acc:.4f} "
            f"lr {sched.get_last_lr()[0]:.4f} time {dt:.1f}s (train {train_time:.1f}s)")
    total_time = time.time() - t_start
    final_acc = evaluate(model, xte, yte, channels_last=cl)
    log(f"final test accuracy (10000 images): {final_acc:.4f}  training time {total_time:.0f}s")

    model = model.to(memory_format=torch.contiguous_format).eval()
    torch.save({"arch": args.arch, "width": width, "state_dict": model.state_dict()}, ckpt_path)
    log(f"saved {ckpt_path}")

    result = {"arch": args.arch, "width": width, "epochs": args.epochs,
              "batch_size": args.batch_size, "opt": args.opt, "lr": args.lr, "wd": args.wd,
              "label_smoothing": args.label_smoothing, "pad": args.pad, "seed": args.seed,
              "init": str(args.init) if args.init else None,
              "params_torch": n_params, "test_acc_torch": final_acc,
              "train_seconds": round(total_time, 1), "command": command,
              "torch": torch.__version__, "history": history}
    if not args.no_export:
        result["export"] = export_onnx(model, stem, log=log)
    if args.part:
        result.update(part=list(args.part), train_samples=len(xtr))
    with open(RESULTS_DIR / f"{stem}.json", "w") as f:
        json.dump(result, f, indent=1)
    log("done")


if __name__ == "__main__":
    main()
