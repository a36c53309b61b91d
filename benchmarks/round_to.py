"""The channel multiple under a MAC budget: `onnxfuse compress M --target-macs T --calib C` with the
defaults, at `--round-to 1`, at 8 (the default under a MAC target) and at ONNX Runtime's CPU channel
block, each judged by top-1
accuracy on the Fashion-MNIST test split and by its CPU latency against the original (batch 32 and 1,
1 intra-op thread, interleaved runs, median), in the same process. This is the measurement behind
`--round-to auto` on the CPU (pipeline/options.py: auto_round_to). Cells are stored in
benchmarks/round_to.json, so an interrupted run resumes where it stopped.

    python benchmarks/round_to.py [--models resnet18,vgg11bn,...] [--targets 0.5,0.25] [--runs 50]
                                  [--multiples 1,8,16] [--tables-only]

Writes the section "Channel multiple under a MAC target" of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxfuse  # noqa: E402
from benchmarks.accuracy import accuracy, test_data, zoo_models  # noqa: E402
from benchmarks.results import write_section  # noqa: E402
from onnxfuse.errors import OnnxfuseError  # noqa: E402
from onnxfuse.graph.io import load_model  # noqa: E402
from onnxfuse.pipeline.options import ALIGNED  # noqa: E402
from onnxfuse.runtime.timing import cpu_channel_block  # noqa: E402

CALIB = str(ROOT / "models" / "data" / "fmnist_calib512.npz")
STORE = ROOT / "benchmarks" / "round_to.json"
MODELS = "resnet18,vgg11bn,tinyres,mobilenetv2,resnet50s"


def measure(models: str, targets: list[float], multiples: list[int], runs: int) -> None:
    store = json.loads(STORE.read_text()) if STORE.exists() else {}
    data, store["data"] = test_data()
    for arch, path in zoo_models(models):
        model = load_model(path)
        cells = store.setdefault(arch, {})
        cells.setdefault("dense", accuracy(model, data))
        for target in targets:
            for multiple in multiples:
                key = f"{target}|{multiple}"
                if key in cells:
                    continue
                start = time.perf_counter()
                try:
                    compressed, report = onnxfuse.compress(model, target_macs=target, calib=CALIB,
                                                           round_to=multiple, validate=False, quiet=True)
                except OnnxfuseError as error:  # a result: this multiple cannot reach the target here
                    cells[key] = {"error": str(error)}
                    print(f"  {arch} T={target} round-to {multiple}: {error}", flush=True)
                    STORE.write_text(json.dumps(store, indent=1, sort_keys=True) + "\n")
                    continue
                seconds = time.perf_counter() - start
                speed = onnxfuse.bench(model, compressed, batch_sizes=(1, 32), runs=runs, warmup=10, device="cpu",
                                       threads=1)
                cells[key] = {"accuracy": accuracy(compressed, data), "seconds": round(seconds, 1),
                              "macs": speed["mac_ratio"], "ideal": speed["ideal_speedup"],
                              "speedup": {str(b["batch"]): b["speedup"] for b in speed["batches"]},
                              "ms": {str(b["batch"]): b["compressed"]["median_ms"] for b in speed["batches"]},
                              "block": cpu_channel_block()}
                c = cells[key]
                print(f"  {arch} T={target} round-to {multiple}: {100 * c['accuracy']:.2f}% MACs {c['macs']:.3f} "
                      f"batch-32 speed-up {c['speedup']['32']:.2f}x of ideal {c['ideal']:.2f}x ({seconds:.0f} s)",
                      flush=True)
                STORE.write_text(json.dumps(store, indent=1, sort_keys=True) + "\n")


def write(store: dict, targets: list[float], runs: int) -> None:
    models = [m for m in store if m != "data"]
    multiples = sorted({int(k.split("|")[1]) for m in models for k in store[m] if "|" in k})
    lines = [f"Produced by `python benchmarks/round_to.py --runs {runs}`: `onnxfuse compress M --target-macs T "
             "--calib models/data/fmnist_calib512.npz --round-to N` with the defaults otherwise, N = 1, "
             f"{ALIGNED} (the default under a MAC target) and ONNX Runtime's CPU channel block (here "
             f"{cpu_channel_block()}; cells with a multiple that is neither come from a machine whose block it "
             "is). Accuracy on the "
             f"{store.get('data', 'test split')}; speed-up = original / compressed median latency (ONNX Runtime "
             f"CPU, 1 intra-op thread, 10 warm-up + {runs} interleaved runs) at batch 32 and 1; ideal = 1 / MAC "
             "ratio. Timed while a training job used the other core.", "",
             "The speed-ups depend on the machine: `block` is ONNX Runtime's CPU channel block of the machine "
             "that timed the cell (8 with AVX2, 16 with AVX-512), and cells of different blocks come from "
             "different machines, so compare speed-ups within one block.", "",
             "| model | dense | target | round-to | accuracy % | MACs | batch 32 speed-up (of ideal) | "
             "batch 1 speed-up | block | compress s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for model in models:
        cells = store[model]
        for target in targets:
            for multiple in multiples:
                c = cells.get(f"{target}|{multiple}")
                if c is None:
                    continue
                if "error" in c:
                    lines.append(f"| {model} | {100 * cells['dense']:.2f} | {target} | {multiple} | "
                                 f"{c['error']} | | | | | |")
                    continue
                lines.append(f"| {model} | {100 * cells['dense']:.2f} | {target} | {multiple} | "
                             f"{100 * c['accuracy']:.2f} | {c['macs']:.3f}× | {c['speedup']['32']:.2f}× "
                             f"({c['speedup']['32'] / c['ideal']:.2f}) | {c['speedup']['1']:.2f}× | "
                             f"{c['block']} | {c['seconds']:.0f} |")
    lines += ["", "Mean over the models measured at both multiples:", ""]
    for target in targets:
        for multiple in multiples[1:]:
            pair = (1, multiple)
            both = [m for m in models if all("accuracy" in store[m].get(f"{target}|{n}", {}) for n in pair)]
            for n in pair if both else ():
                cs = [store[m][f"{target}|{n}"] for m in both]
                acc = sum(100 * c["accuracy"] / store[m]["dense"] for c, m in zip(cs, both)) / len(cs)
                share = sum(c["speedup"]["32"] / c["ideal"] for c in cs) / len(cs)
                speed = sum(c["speedup"]["32"] for c in cs) / len(cs)
                blocks = "/".join(str(b) for b in sorted({c["block"] for c in cs}))
                lines.append(f"- T = {target}, round-to {n}: {acc:.1f} % of dense, batch-32 speed-up "
                             f"{speed:.2f}× ({share:.2f} of ideal; block {blocks}) ({', '.join(both)})")
    write_section("Channel multiple under a MAC target", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--targets", default="0.5,0.25")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--multiples", default=None, help="default: 1, 8 and the CPU's channel block")
    parser.add_argument("--tables-only", action="store_true")
    args = parser.parse_args()
    targets = [float(t) for t in args.targets.split(",")]
    if not args.tables_only:
        multiples = [int(m) for m in args.multiples.split(",")] if args.multiples else \
            list(dict.fromkeys((1, ALIGNED, cpu_channel_block())))
        measure(args.models, targets, multiples, args.runs)
    write(json.loads(STORE.read_text()), targets, args.runs)


if __name__ == "__main__":
    main()
