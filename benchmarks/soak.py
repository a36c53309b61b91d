"""Soak: many `onnxfuse inspect` / `onnxfuse compress` calls in one working directory, and nothing left.

N calls (default 200) alternate inspect and compress over the shipped models (`models/*.onnx`) and one
built here on which ONNX Runtime's symbolic shape inference stops short (an op it does not know,
before a Reshape ONNX leaves unresolved: the case that used to leave `sym_shape_infer_temp.onnx`
and UUID-named `.data` files in the working directory). Every call is a fresh `python -m
onnxfuse.cli` process in the same working directory, with TMPDIR set to a folder of its own; each
compress output is removed after its call. Measured: disk usage (bytes and entries) of the working
directory, of that TMPDIR and of the inputs' folder before and after (must be equal), the peak RSS
of each call (`wait4`), and each call's time against the median of its (command, model): none may
take more than 3x.

    python benchmarks/soak.py [--calls 200] [--no-write]

Writes the section "Soak" of benchmarks/RESULTS.md (not with --no-write). Exits 1 if anything was
left behind, a call failed or one was too slow.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results import write_section  # noqa: E402

SLOW = 3.0  # no call slower than this times the median of its (command, model)
INCOMPLETE = "incomplete_symbolic.onnx"


def incomplete_inference_model(seed: int = 0) -> onnx.ModelProto:
    """Conv-Relu-Conv-Relu-GlobalAveragePool-Flatten, then com.microsoft.FusedMatMul (ONNX Runtime
    runs it; neither ONNX nor ORT's symbolic inference knows its output type), then a Reshape to
    [0, -1] that ONNX's inference leaves unresolved, so onnxfuse asks the symbolic inference, which
    stops incomplete at FusedMatMul: ONNX Runtime then saves `sym_shape_infer_temp.onnx` (and the
    weights of 1 KB and more as a UUID-named `.data` file) into the working directory."""
    rng = np.random.default_rng(seed)

    def weight(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("FusedMatMul", ["f", "wm"], ["m"], domain="com.microsoft", alpha=1.0),
             helper.make_node("Reshape", ["m", "shape"], ["rs"]),
             helper.make_node("Relu", ["rs"], ["y"])]
    graph = helper.make_graph(
        nodes, "incomplete_symbolic", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [weight("w1", 16, 1, 3, 3), weight("b1", 16), weight("w2", 16, 16, 3, 3), weight("b2", 16),
         weight("wm", 16, 10), numpy_helper.from_array(np.array([0, -1], np.int64), "shape")])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def usage(folder: Path) -> tuple[int, int]:
    """(bytes, entries) under `folder`, the folder itself excluded."""
    size = entries = 0
    for base, dirs, files in os.walk(folder):
        entries += len(dirs) + len(files)
        for name in files:
            size += os.lstat(os.path.join(base, name)).st_size
    return size, entries


def files_usage(paths: list[Path]) -> tuple[int, int]:
    return sum(p.stat().st_size for p in paths), len(paths)


def call(argv: list[str], cwd: Path, env: dict) -> tuple[int, float, float, str]:
    """(exit status, seconds, peak RSS in MiB, stderr tail) of one CLI process."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:  # outside every measured folder
        proc = subprocess.Popen([sys.executable, "-m", "onnxfuse.cli", *argv], cwd=cwd, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
        _, status, rusage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        err.seek(0)
        tail = err.read().decode(errors="replace").strip().splitlines()[-1:]
    return proc.returncode, seconds, rusage.ru_maxrss / 1024, tail[0] if tail else ""


def soak(calls: int) -> tuple[str, bool]:
    root = Path(tempfile.mkdtemp(prefix="onnxfuse-soak-"))
    try:
        work, tmp, inputs, out = (root / name for name in ("work", "tmp", "inputs", "out"))
        for folder in (work, tmp, inputs, out):
            folder.mkdir()
        onnx.save(incomplete_inference_model(), inputs / INCOMPLETE)
        models = [inputs / INCOMPLETE] + sorted((ROOT / "models").glob("*.onnx"))
        env = dict(os.environ, TMPDIR=str(tmp))
        folders = {"working directory": work, "TMPDIR": tmp, "output folder": out, "inputs' folder": inputs}
        before = {name: usage(folder) for name, folder in folders.items()}
        before["the models read"] = files_usage(models)
        rows, failures = [], []
        for i in range(calls):
            model, command = models[(i // 2) % len(models)], ("inspect", "compress")[i % 2]
            argv = [command, str(model)] + (["-o", str(out / model.name)] if command == "compress" else [])
            rc, seconds, rss, tail = call(argv, work, env)
            rows.append((command, model.name, seconds, rss))
            if rc != 0:
                failures.append(f"{command} {model.name}: exit {rc}: {tail}")
            for leftover in out.iterdir():
                leftover.unlink()
            print(f"{i + 1}/{calls} {command} {model.name}: {seconds:.2f} s, {rss:.0f} MiB, exit {rc}", flush=True)
        after = {name: usage(folder) for name, folder in folders.items()}
        after["the models read"] = files_usage(models)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return report(calls, rows, before, after, failures)


def report(calls, rows, before, after, failures) -> tuple[str, bool]:
    kinds: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for command, name, seconds, rss in rows:
        kinds.setdefault((command, name), []).append((seconds, rss))
    lines = [f"{calls} CLI calls (`python -m onnxfuse.cli`, a fresh process each), inspect and compress "
             f"(sparsity 0.5, defaults) in turn over the {len({n for _, n, _, _ in rows})} models, all in one "
             f"working directory, TMPDIR a folder of its own; {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs. `python benchmarks/soak.py --calls {calls}`.", "",
             "| folder | before (bytes, entries) | after | equal |", "|---|---|---|---|"]
    clean = True
    for name in before:
        equal = before[name] == after[name]
        clean &= equal
        lines.append(f"| {name} | {before[name][0]:,}, {before[name][1]} | {after[name][0]:,}, {after[name][1]} "
                     f"| {'yes' if equal else '**no**'} |")
    lines += ["", "| command | model | calls | median s | max s | max / median | peak RSS MiB (max) |",
              "|---|---|---|---|---|---|---|"]
    slow = []
    for (command, name), measured in sorted(kinds.items()):
        times = [s for s, _ in measured]
        median = statistics.median(times)
        ratio = max(times) / median
        if ratio > SLOW:
            slow.append(f"{command} {name}: {max(times):.2f} s against a median of {median:.2f} s")
        lines.append(f"| {command} | {name} | {len(times)} | {median:.2f} | {max(times):.2f} | {ratio:.2f} "
                     f"| {max(r for _, r in measured):.0f} |")
    lines += ["", f"Left behind: {'nothing' if clean else 'see the first table'}. Failed calls: "
              f"{len(failures)}{': ' + '; '.join(failures) if failures else ''}. Calls slower than {SLOW:g}x "
              f"their median: {len(slow)}{': ' + '; '.join(slow) if slow else ''}."]
    return "\n".join(lines), clean and not failures and not slow


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--no-write", action="store_true", help="print the section, leave RESULTS.md alone")
    args = parser.parse_args()
    body, ok = soak(args.calls)
    print(body)
    if not args.no_write:
        write_section("Soak", body)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
