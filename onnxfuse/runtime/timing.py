"""Latency and throughput of two models in ONNX Runtime.

Both sessions get the same options (a fixed intra-op thread count, sequential execution) and the
same random inputs, bound once with IOBinding on the session's device so that host↔device copies
stay out of the timings. After a warm-up, the runs of the two models alternate (A B, then B A, …)
so that load on the machine falls on both alike; the speed-up is the ratio of the medians.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ..calibration.data import input_specs, random_inputs
from ..errors import OnnxfuseError
from ..log import info
from .compare import check_same_inputs
from .sessions import session

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


@functools.cache
def cpu_channel_block() -> int:
    """Channels per block of ONNX Runtime's NCHWc convolutions on this x86 CPU (MLAS: 16 with
    AVX-512, 8 with AVX2); 1 where they are not used."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return 1
    return 16 if "avx512f" in flags else 8 if "avx2" in flags else 1


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Timer:
    """One session with its inputs bound; `once()` runs it and returns the seconds taken."""

    def __init__(self, sess: ort.InferenceSession, feeds: dict[str, np.ndarray]):
        self.sess = sess
        self.binding = sess.io_binding()
        on_gpu = sess.get_providers()[0] in GPU_PROVIDERS
        device = "cuda" if on_gpu else "cpu"
        self.inputs = {k: ort.OrtValue.ortvalue_from_numpy(v, device, 0) for k, v in feeds.items()}
        for name, value in self.inputs.items():
            self.binding.bind_ortvalue_input(name, value)
        for out in sess.get_outputs():
            self.binding.bind_output(out.name, device)

    def once(self) -> float:
        start = time.perf_counter()
        self.sess.run_with_iobinding(self.binding)
        return time.perf_counter() - start


def time_interleaved(timers: list[Timer], runs: int, warmup: int) -> list[np.ndarray]:
    """Seconds per run of each timer; the order alternates every round."""
    for _ in range(warmup):
        for t in timers:
            t.once()
    times = [[] for _ in timers]
    for i in range(runs):
        order = range(len(timers)) if i % 2 == 0 else reversed(range(len(timers)))
        for k in order:
            times[k].append(timers[k].once())
    return [np.array(t) for t in times]


def stats(seconds: np.ndarray, batch: int) -> dict:
    p10, p25, p50, p75, p90 = np.percentile(seconds * 1e3, [10, 25, 50, 75, 90])
    return {"median_ms": round(p50, 4), "p10_ms": round(p10, 4), "p90_ms": round(p90, 4),
            "iqr_ms": round(p75 - p25, 4), "throughput": round(batch / (p50 / 1e3), 1)}


def batch_sizes_for(model: onnx.ModelProto, wanted: tuple[int, ...]) -> list[int]:
    """The batch sizes the model accepts: a fixed first input dimension allows only itself."""
    first = input_specs(model)[0].shape[:1] if input_specs(model) else []
    if first and isinstance(first[0], int) and first[0] > 0:
        return [first[0]]
    return sorted(set(wanted))


def compare_speed(original: onnx.ModelProto, compressed: onnx.ModelProto, *, batch_sizes=(1, 32), runs: int = 50,
                  warmup: int = 5, device: str = "auto", threads: int | None = None, seed: int = 0,
                  shapes: dict | None = None) -> dict:
    """Latency of both models per batch size and the speed-up (original / compressed)."""
    if runs < 1 or warmup < 0 or not batch_sizes or min(batch_sizes) < 1:
        raise OnnxfuseError("runs and batch sizes must be positive, warm-up not negative")
    check_same_inputs(original, compressed)
    threads = threads or default_threads()
    sessions = [session(original, device, threads=threads), session(compressed, device, threads=threads)]
    rows = []
    for batch in batch_sizes_for(original, tuple(batch_sizes)):
        info(f"bench: batch {batch}, {warmup} warm-up + {runs} interleaved runs per model")
        feeds = random_inputs(original, batch=batch, seed=seed, shapes=shapes).feeds
        ta, tb = time_interleaved([Timer(s, feeds) for s in sessions], runs, warmup)
        paired = np.percentile(ta / tb, [10, 90])
        rows.append({"batch": batch, "original": stats(ta, batch), "compressed": stats(tb, batch),
                     "speedup": round(float(np.median(ta) / np.median(tb)), 4),
                     "speedup_p10_p90": [round(float(p), 4) for p in paired]})
    return {"provider": sessions[1].get_providers()[0], "threads": threads, "runs": runs, "warmup": warmup,
            "batches": rows}


def format_bench(report: dict) -> str:
    lines = [f"provider: {report['provider']}, {report['threads']} intra-op threads, "
             f"{report['warmup']} warm-up + {report['runs']} interleaved runs per model"]
    if "mac_ratio" in report:
        lines.append(f"MACs: {report['macs_before']:,} -> {report['macs_after']:,} ({report['mac_ratio']:.3f}x, "
                     f"ideal speed-up {report['ideal_speedup']:.2f}x)")
    lines.append("batch  original ms (p10-p90)      compressed ms (p10-p90)    speed-up  ideal  throughput/s")
    for r in report["batches"]:
        a, b = r["original"], r["compressed"]
        ideal = f"{report['ideal_speedup']:.2f}x" if "ideal_speedup" in report else "-"
        lines.append(f"{r['batch']:>5}  {a['median_ms']:>9.3f} ({a['p10_ms']:.3f}-{a['p90_ms']:.3f})  "
                     f"{b['median_ms']:>9.3f} ({b['p10_ms']:.3f}-{b['p90_ms']:.3f})  {r['speedup']:>7.2f}x  "
                     f"{ideal:>5}  {a['throughput']:.0f} -> {b['throughput']:.0f}")
    return "\n".join(lines)


