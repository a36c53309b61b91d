"""CPU latency of the compressed zoo models against the originals, next to the ideal MAC speed-up.

Each trained zoo model (`models/*_fmnist_folded.onnx`) is pruned at sparsity 0.5 (fuse gives the
same shapes, so the same time) with the default `--round-to 1` and with `--round-to` the CPU's
NCHWc block (16 with AVX-512, 8 with AVX2), then timed with `onnxfuse.bench` against the original
in the same process: same session options, runs of the two models interleaved, batch 1 and 32.

    python benchmarks/latency.py [--runs 50] [--threads 1]

Writes the section "Latency (ONNX Runtime, CPU)" of benchmarks/RESULTS.md and benchmarks/latency.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxruntime as ort  # noqa: E402

import onnxfuse  # noqa: E402
from benchmarks.results import write_section  # noqa: E402
from onnxfuse.runtime.timing import cpu_channel_block  # noqa: E402

MODELS = ["resnet18", "vgg11bn", "mobilenetv2", "resnet50s"]


def measure(name: str, round_to: int, runs: int, threads: int, sparsity: float = 0.5, batches=(1, 32)) -> dict:
    path = ROOT / "models" / f"{name}_fmnist_folded.onnx"
    model, report = onnxfuse.compress(path, sparsity, round_to=round_to, validate=False, quiet=True)
    result = onnxfuse.bench(path, model, batch_sizes=batches, runs=runs, warmup=10, device="cpu", threads=threads)
    result["kept"] = sorted({g["kept"] for g in report["groups"] if g["prunable"]})
    return result


def alignment_table(runs: int, threads: int) -> list[str]:
    """ResNet-18 at mild sparsities: how the channel multiple changes the batch-32 speed-up."""
    lines = ["", "ResNet-18 at milder sparsities, batch 32, by channel multiple (same settings):", "",
             "| sparsity | round-to | kept widths | MACs | speed-up | ideal |", "|---|---|---|---|---|---|"]
    for sparsity in (0.1, 0.3):
        for round_to in (1, 4, 8, 16):
            r = measure("resnet18", round_to, runs, threads, sparsity, batches=(32,))
            lines.append(f"| {sparsity} | {round_to} | {', '.join(map(str, r['kept']))} | {r['mac_ratio']:.3f}× | "
                         f"{r['batches'][0]['speedup']:.2f}× | {r['ideal_speedup']:.2f}× |")
            print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    block = cpu_channel_block()
    rows = {}
    for name in MODELS:
        for round_to in dict.fromkeys((1, block)):
            r = rows[f"{name}|{round_to}"] = measure(name, round_to, args.runs, args.threads)
            b1, b32 = r["batches"]
            print(f"{name} round-to {round_to}: MACs {r['mac_ratio']:.3f}x ideal {r['ideal_speedup']:.2f}x, "
                  f"batch 1 {b1['speedup']:.2f}x, batch 32 {b32['speedup']:.2f}x "
                  f"({b32['speedup'] / r['ideal_speedup']:.2f} of ideal)", flush=True)
    (ROOT / "benchmarks" / "latency.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [f"Produced by `python benchmarks/latency.py --runs {args.runs} --threads {args.threads}`: each model "
             "pruned at sparsity 0.5, timed against the original in the same process with `onnxfuse.bench` "
             f"(ONNX Runtime {ort.__version__}, CPUExecutionProvider, graph optimisation ALL, {args.threads} "
             f"intra-op thread(s), 10 warm-up + {args.runs} interleaved runs per model, median; "
             f"{platform.processor() or platform.machine()}, NCHWc block {block}). Speed-up = original / compressed "
             "median latency; ideal = 1 / MAC ratio; the last column is the batch-32 speed-up as a fraction "
             "of the ideal (the issue asks for ≥ 0.8).", "",
             "| model | round-to | MACs | ideal | batch 1: ms orig → new, speed-up | batch 32: ms orig → new, "
             "speed-up | batch 32 / ideal |", "|---|---|---|---|---|---|---|"]
    for key, r in rows.items():
        name, round_to = key.split("|")
        cells = [f"{b['original']['median_ms']:.2f} → {b['compressed']['median_ms']:.2f}, {b['speedup']:.2f}×"
                 for b in r["batches"]]
        share = r["batches"][1]["speedup"] / r["ideal_speedup"]
        lines.append(f"| {name} | {round_to} | {r['mac_ratio']:.3f}× | {r['ideal_speedup']:.2f}× | {cells[0]} | "
                     f"{cells[1]} | {'**' if share >= 0.8 else ''}{share:.2f}{'**' if share >= 0.8 else ''} |")
    lines += alignment_table(args.runs, args.threads)
    lines += ["", NOTES.format(block=block)]
    write_section("Latency (ONNX Runtime, CPU)", "\n".join(lines))


NOTES = """What we found (one-off measurements made while looking for the gap, same machine and ORT):

- **Channel counts off the NCHWc block.** ONNX Runtime's CPU convolutions run in the NCHWc
  layout, whose output-channel blocks are {block} wide on this AVX-512 machine: a layer pruned from 16
  to 8 channels still computes 16 (and 24 → 12 would compute 16). Per-layer profiling of ResNet-18 at
  batch 32 (1 thread) shows the 16 → 8 layers of `layer1` sped up only 2.0–2.6× against 4–9× for
  the wide layers. With `--round-to {block}` ResNet-18, VGG11-BN and ResNet-50s reach ≥ 0.8 of their
  (smaller) ideal speed-up at batch 32, and MobileNetV2 is faster in absolute terms while keeping
  more MACs. At a fixed sparsity rounding to {block} prunes less (ResNet-18's 16-wide groups stay
  whole), so it is not the CPU default: `--round-to auto` stays 1 on the CPU (existing results
  unchanged) and uses the block under `--target-latency`, where widths between two blocks would only
  cost accuracy.
- **Off-block widths can be slower than the dense model.** In the second table, ResNet-18 at
  sparsity 0.1 with `--round-to 1` (widths 14, 28, 57, 115) runs *slower* than the original, and at
  0.3 (11, 22, 44, 89) it gains far less than `--round-to {block}` at about the same MACs. On a CPU
  where latency matters, pass `--round-to {block}` (or 8 with AVX2).
- **MobileNetV2 is the closest to the bar**: with `--round-to {block}` its batch-32 speed-up was
  2.14–2.72× (0.70–0.89 of the ideal) over five runs made while other jobs kept the load average
  near 4.5 on the 2 cores; the table above was measured on the idle machine. The run-to-run spread under
  load is about ±0.1 of the ideal for every model (e.g. ResNet-50s with `--round-to 1`: 0.71–0.83).
  ORT's profiler (sum of kernel times, 30 sequential
  runs, batch 32, 1 thread) gives 21.75 → 7.65 ms, 2.84× = 0.93 of the ideal: the rest of the gap
  is outside the convolution kernels (its ~150 nodes each add per-node work such as layout
  reorders and memory planning, which do not shrink with the channels), and its depthwise
  convolutions are memory-bound and scale with the channel count, not its square, which the MAC
  ideal does not model.
- **Threads.** On this 2-core machine, shared with other jobs, 2 intra-op threads made the medians
  2–3× slower and very noisy (ResNet-18 batch 32: 47 ms vs 16 ms with 1 thread); 1 thread is
  stable, so the table uses it. The table was measured on the otherwise idle machine; under load
  the interleaving makes the load fall on both models alike.
  `onnxfuse bench` defaults to all CPUs of the process.
- **Graph optimisation level.** ALL (NCHWc layout) is about 2× faster than EXTENDED/BASIC for both
  models; the speed-up ratio barely moves (ResNet-18 batch 32: 2.74× with ALL, 2.82× with EXTENDED).
- **What remains** with `--round-to 1`: narrow layers that fall below or between blocks, a
  `ReorderOutput` that ORT adds when a width is not a block multiple (0.23 ms of 7 ms in pruned
  ResNet-18), and fixed per-run overhead at batch 1 (the 28×28 models run in 0.2–2 ms, so
  normalisation, pooling, the head and the dispatch weigh more). Head (Flatten/Gemm) cost is
  negligible here (< 0.1 %).
- **No GPU** was available in this session: no CUDA or TensorRT figures. The CUDA path (TF32 off,
  IOBinding on the device) is in `onnxfuse bench --device cuda`, and `--round-to auto` there is 8."""


if __name__ == "__main__":
    main()
