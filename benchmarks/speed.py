"""Compression time and peak memory, prune vs fuse, from ~1 M to ~24 M parameters.

The models are the zoo architectures (models/zoo.py) at several widths with random weights,
exported with BN folded. Each compression runs in a fresh subprocess so that its peak RSS is its
own; the time is split per pipeline pass. Ratios (fuse / prune) compare runs of the same model
made by this script one after the other.

    python benchmarks/speed.py [--quick]

Writes the section "Compression speed" of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results import write_section  # noqa: E402

MODELS = [("resnet18", 0.25), ("resnet18", 0.5), ("resnet18", 1.0), ("resnet50s", 1.0)]

CHILD = """
import json, resource, sys, time
import onnxfuse
start = time.perf_counter()
model, report = onnxfuse.compress(sys.argv[1], 0.5, method=sys.argv[2], validate=False, quiet=True)
total = time.perf_counter() - start
print(json.dumps({"seconds": report["seconds"], "total": total, "params": report["params_before"],
                  "max_group": max(g["width"] for g in report["groups"]),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def export(arch: str, width: float, path: Path) -> None:
    import torch

    from models import zoo

    torch.manual_seed(0)
    model = zoo.build(arch, width=width).eval()
    torch.onnx.export(model, torch.zeros(1, 1, 28, 28), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False)


def measure(path: Path, method: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), method], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="only the two smallest models")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch, width in MODELS[:2] if args.quick else MODELS:
            path = Path(tmp) / f"{arch}_{width}.onnx"
            export(arch, width, path)
            prune, fuse = measure(path, "prune"), measure(path, "fuse")
            rows.append((f"{arch} ×{width}", prune, fuse))
            print(f"{arch} x{width}: {prune['params'] / 1e6:.1f} M params, prune {prune['total']:.2f} s, "
                  f"fuse {fuse['total']:.2f} s, peak RSS {prune['peak_rss_mb']:.0f} / {fuse['peak_rss_mb']:.0f} MB",
                  flush=True)
    lines = ["Produced by `python benchmarks/speed.py`: `compress --sparsity 0.5` of the zoo architectures",
             "with random weights (BN folded), each run in a fresh process on this machine (2 cores; other",
             "work on the machine at the same time shows in the figures).", "",
             "| model | params | widest group | prune s | fuse s | fuse / prune | peak RSS prune / fuse |",
             "|---|---|---|---|---|---|---|"]
    for name, prune, fuse in rows:
        lines.append(f"| {name} | {prune['params'] / 1e6:.1f} M | {prune['max_group']} | {prune['total']:.2f} | "
                     f"{fuse['total']:.2f} | {fuse['total'] / prune['total']:.2f}× | "
                     f"{prune['peak_rss_mb']:.0f} / {fuse['peak_rss_mb']:.0f} MB |")
    lines += ["", "Time per pass (seconds) for the largest model:", "",
              "| method | " + " | ".join(rows[-1][1]["seconds"]) + " |",
              "|---|" + "---|" * len(rows[-1][1]["seconds"])]
    for method, result in (("prune", rows[-1][1]), ("fuse", rows[-1][2])):
        lines.append(f"| {method} | " + " | ".join(f"{v:.2f}" for v in result["seconds"].values()) + " |")
    write_section("Compression speed", "\n".join(lines))


if __name__ == "__main__":
    main()
