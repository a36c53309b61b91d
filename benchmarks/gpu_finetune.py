"""The training stage on an NVIDIA GPU, in under 8 minutes: the zoo ResNet-18 compressed to a quarter
of its MACs (defaults: sensitivity allocation, lsq repair), trained by `finetune` for 1000 steps at
batch 128 on CUDA (the teacher is the torch view on the GPU), validated in ONNX Runtime's CUDA
provider on the committed 2 000-image test sample, and both models timed there.

    python benchmarks/gpu_finetune.py [--wheels DIR] [--out results.json]

It installs what it lacks: a CUDA-enabled ONNX Runtime (`onnxruntime-gpu`) and this project, from
`--wheels DIR` when the machine has no index to reach (pip install --no-index --find-links DIR). torch
with CUDA is expected to be there. Training data: 10 000 Fashion-MNIST train images from the Debian
package when installed, else the committed 512-image calibration file. Prints one JSON object and
writes it to --out; `--to-results` folds a stored one into benchmarks/RESULTS.md ("Training stage on
a GPU").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET, STEPS, BATCH = 0.25, 1000, 128


def install(wheels: str | None) -> None:
    """onnxruntime-gpu (replacing a CPU onnxruntime) and onnxfuse, unless present."""
    pip = [sys.executable, "-m", "pip", "install", "-q"] + (["--no-index", "--find-links", wheels] if wheels else [])
    try:
        import onnxruntime

        has_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", "onnxruntime"], check=False)
        subprocess.run([*pip, "onnxruntime-gpu"], check=True)
    try:
        import onnxfuse  # noqa: F401
    except ImportError:
        subprocess.run([*pip, "-e", str(ROOT)], check=True)


def train_data(folder: Path) -> str:
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from models import fmnist

    if not fmnist.dataset_available():
        return str(ROOT / "models" / "data" / "fmnist_calib512.npz")
    images, _ = fmnist.load_train_split()
    pick = np.sort(np.random.default_rng(0).choice(len(images), 10_000, replace=False))
    path = folder / "train10k.npz"
    np.savez(path, input=images[pick])
    return str(path)


def measure(folder: Path) -> dict:
    import torch

    import onnxfuse

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device for torch: this script is for a machine with an NVIDIA GPU")
    original = str(ROOT / "models" / "resnet18_fmnist_folded.onnx")
    test = str(ROOT / "models" / "data" / "fmnist_eval2000.npz")
    begin = time.perf_counter()
    start, report = onnxfuse.compress(original, target_macs=TARGET, calib=str(ROOT / "models" / "data" /
                                      "fmnist_calib512.npz"), device="cuda", validate=False, quiet=True)
    compress_s = time.perf_counter() - begin
    trained, train_report = onnxfuse.finetune(original, start, train_data=train_data(folder), train_steps=STEPS,
                                              batch=BATCH, device="cuda", quiet=True)
    before = onnxfuse.validate(original, start, data=test, device="cuda")
    after = onnxfuse.validate(original, trained, data=test, device="cuda")
    speed = onnxfuse.bench(original, trained, batch_sizes=(1, 128), device="cuda", quiet=True)
    return {"gpu": torch.cuda.get_device_name(), "provider": after["provider"], "compress_seconds": round(compress_s),
            "macs": report["macs_after"] / report["macs_before"], "steps": STEPS, "batch": BATCH,
            "train_seconds": train_report["seconds"], "seconds_per_step": train_report["seconds_per_step"],
            "accuracy_original": after["accuracy_original"], "accuracy_start": before["accuracy_compressed"],
            "accuracy_trained": after["accuracy_compressed"], "bench": speed}


def to_results(path: str) -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks.results import write_section

    r = json.loads(Path(path).read_text())
    lines = [f"`python benchmarks/gpu_finetune.py` on {r['gpu']} ({r['provider']}): ResNet-18 at {r['macs']:.3f} "
             f"of the MACs, {r['steps']} steps at batch {r['batch']} in {r['train_seconds']:.0f} s "
             f"({1000 * r['seconds_per_step']:.1f} ms/step); accuracy on the 2 000-image test sample "
             f"{100 * r['accuracy_start']:.2f} % → {100 * r['accuracy_trained']:.2f} % "
             f"(dense {100 * r['accuracy_original']:.2f} %).", "",
             "| batch | original (ms) | trained (ms) |", "|---|---|---|"]
    for row in r["bench"]["batches"]:
        lines.append(f"| {row['batch']} | {row['original']['median_ms']:.3f} | {row['compressed']['median_ms']:.3f} |")
    write_section("Training stage on a GPU", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheels", help="install from the wheels in this folder (no index)")
    parser.add_argument("--out", default="gpu_finetune.json")
    parser.add_argument("--to-results", metavar="JSON", help="write a stored result into benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.to_results:
        to_results(args.to_results)
        return
    install(args.wheels)
    out = Path(args.out)
    result = measure(out.resolve().parent)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
