"""Peak memory and time of `onnxfuse compress --sparsity 0.5` on synthetic CNNs with external data,
from 0.25 GB to more than 2 GB of weights.

Each model is a chain of 3×3 convolutions (width 1024, random float32 weights, ReLU between) on a
4×4 input, saved with its weights as external data. Each model is compressed twice, without and
with ONNX Runtime validation, each time in a fresh process; its peak RSS is read with
getrusage(RUSAGE_CHILDREN) by a wrapper process of its own. Peak RSS should grow like the
weights (once) plus a constant.

    python benchmarks/large_models.py [--sizes 0.25,0.5,1,2.2] [--dir /tmp/onnxfuse_large] [--no-validate-above GB]

Writes the section "Large models" of benchmarks/RESULTS.md and benchmarks/large_models.png; the
models and outputs are deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results import write_section  # noqa: E402

WIDTH = 1024
LAYER_BYTES = WIDTH * WIDTH * 9 * 4

NOTE = ("Where the memory goes now (measured pass by pass on 0.49 GB): about 0.36 GB is the interpreter with its "
        "libraries (ONNX Runtime, SciPy, numba, POT). The ModelProto is loaded without its external data and "
        "the graph reads each weight from the .data file on first use, so scoring holds the weights once (1×) "
        "plus work arrays of one weight at a time (float64 rows of one member, about 4× that weight: 0.14 GB "
        "here); fusing replaces each weight by its shrunk copy and frees the original, applying the map a "
        "chunk of columns at a time; emit moves the shrunk weights into the result proto one by one (the "
        "graph then reads them from there), and the .data file is written tensor by tensor (to a temp file, "
        "renamed at the end). With validation, ONNX Runtime runs one model at a time: the original read from "
        "its file (about 1.2× its weights at peak, with ORT's pre-packed Conv weights), then the result "
        "(its serialised bytes and ORT's copies), while the process still holds the result proto; the "
        "validated peak, while ORT holds the original, is its copy of the original plus the result proto "
        "(a quarter of the weights here) plus the constant. Before this version the "
        "proto and the graph each held the weights, scoring's float64 copies of whole weights added about "
        "1× and ORT held both models at once: peak RSS was 3.36 × weights + 0.40 GB with validation "
        "(7.75 GB for 2.19 GB of weights, 114 s).")

WRAPPER = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": proc.returncode, "seconds": time.perf_counter() - start, "stderr": proc.stderr[-2000:],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def build(path: Path, gigabytes: float, seed: int = 0) -> float:
    """A conv chain with about `gigabytes` of weights, saved as external data; returns the GB."""
    layers = round(gigabytes * 1e9 / LAYER_BYTES) + 2  # the first and last layers are small
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "input"
    for i in range(layers):
        c_in = 16 if i == 0 else WIDTH
        c_out = 16 if i == layers - 1 else WIDTH
        w = (rng.standard_normal((c_out, c_in, 3, 3), dtype=np.float32) * (1 / np.sqrt(9 * c_in))).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(c_out, np.float32), f"b{i}")]
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"conv{i}"], name=f"conv{i}", pads=[1] * 4))
        x = f"conv{i}"
        if i < layers - 1:
            nodes.append(helper.make_node("Relu", [x], [f"relu{i}"], name=f"relu{i}"))
            x = f"relu{i}"
    io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 16, 4, 4]) for name in ("input", x)]
    graph = helper.make_graph(nodes, "large", io[:1], io[1:], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)
    return sum(t.stat().st_size for t in path.parent.glob(path.name + "*")) / 1e9


def compress(path: Path, validate: bool) -> dict:
    out = path.with_name(path.stem + "_pruned.onnx")
    cmd = [sys.executable, "-m", "onnxfuse.cli", "compress", str(path), "-o", str(out), "--sparsity", "0.5",
           "--report", str(out.with_suffix(".json"))] + ([] if validate else ["--no-validate"])
    result = json.loads(subprocess.run([sys.executable, "-c", WRAPPER, *cmd], capture_output=True, text=True,
                                       check=True).stdout)
    if result["rc"] != 0:
        raise RuntimeError(f"compress failed on {path}: {result['stderr']}")
    report = json.loads(out.with_suffix(".json").read_text())
    result["output_gb"] = sum(t.stat().st_size for t in out.parent.glob(out.name + "*")) / 1e9
    result["external"] = Path(str(out) + ".data").exists()
    outputs = report.get("validation", {}).get("outputs", {}).values()
    result["max_error"] = max((o["max_abs_error"] for o in outputs), default=None)
    for f in out.parent.glob(out.stem + "*"):
        f.unlink()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="0.25,0.5,1,2.2")
    parser.add_argument("--dir", default="/tmp/onnxfuse_large")
    parser.add_argument("--no-validate-above", type=float, default=1.5,
                        help="skip the run with ONNX Runtime validation for models above this many GB")
    args = parser.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for size in [float(s) for s in args.sizes.split(",")]:
            path = folder / f"chain_{size:g}gb.onnx"
            start = time.perf_counter()
            gigabytes = build(path, size)
            print(f"built {path} ({gigabytes:.2f} GB) in {time.perf_counter() - start:.0f} s", flush=True)
            row = {"size_gb": gigabytes, **compress(path, validate=False)}
            if size <= args.no_validate_above:
                validated = compress(path, validate=True)
                row.update(validated_peak_rss_mb=validated["peak_rss_mb"], validated_seconds=validated["seconds"],
                           max_error=validated["max_error"])
            print(json.dumps(row), flush=True)
            rows.append(row)
            for f in folder.glob(path.name + "*"):
                f.unlink()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    write_results(rows)


def write_results(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = np.array([r["size_gb"] for r in rows])
    peaks = np.array([r["peak_rss_mb"] / 1024 for r in rows])
    slope, constant = np.polyfit(sizes, peaks, 1)
    validated = [(s, r["validated_peak_rss_mb"] / 1024) for s, r in zip(sizes, rows) if "validated_peak_rss_mb" in r]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(sizes, peaks, "o-", label="peak RSS of `onnxfuse compress --no-validate`")
    if validated:
        ax.plot(*zip(*validated), "s-", label="peak RSS with ONNX Runtime validation")
    ax.plot(sizes, sizes, "--", color="grey", label="1× the weights")
    ax.set_xlabel("weights (GB, external data)")
    ax.set_ylabel("peak RSS (GB)")
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(ROOT / "benchmarks" / "large_models.png", dpi=100)
    lines = [
        "`python benchmarks/large_models.py` — conv chains of width 1024 (3×3, 4×4 input, random float32 "
        "weights saved as external data), `onnxfuse compress --sparsity 0.5`, once with `--no-validate` "
        "and once with ONNX Runtime validation, each in a fresh process; peak RSS from "
        "getrusage(RUSAGE_CHILDREN). `python benchmarks/large_models.py --sizes 0.25,0.5,1,2.2 "
        "--no-validate-above 3`.",
        "",
        "| weights (GB) | peak RSS, `--no-validate` (GB) | peak / weights | time (s) "
        "| peak RSS with ORT validation (GB) | peak / weights | time (s) | output (GB) "
        "| output as external data | max output error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r, peak in zip(rows, peaks):
        if "validated_peak_rss_mb" in r:
            checked = r["validated_peak_rss_mb"] / 1024
            error = "–" if r["max_error"] is None else f"{r['max_error']:.2g}"
            validation = f"{checked:.2f} | {checked / r['size_gb']:.2f} | {r['validated_seconds']:.0f}"
        else:
            validation, error = "not run | – | –", "–"
        lines.append(f"| {r['size_gb']:.2f} | {peak:.2f} | {peak / r['size_gb']:.2f} | {r['seconds']:.0f} | "
                     f"{validation} | {r['output_gb']:.2f} | {'yes' if r['external'] else 'no'} | {error} |")
    lines += ["", f"Least-squares fit without validation: peak RSS ≈ {slope:.2f} × weights + {constant:.2f} GB."]
    if len(validated) > 1:
        v_slope, v_constant = np.polyfit(*np.array(validated).T, 1)
        lines[-1] += f" With validation: ≈ {v_slope:.2f} × weights + {v_constant:.2f} GB."
    lines += ["", NOTE, "",
              "![peak memory vs model size](large_models.png)"]
    write_section("Large models", "\n".join(lines))


if __name__ == "__main__":
    main()
