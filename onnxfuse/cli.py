"""Command line: onnxfuse compress | inspect | validate | bench | sweep | calib make | calib synth."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import api
from .errors import OnnxfuseError
from .graphio import check_output_path, save_model
from .images import Preprocess
from .latency import format_bench
from .reports import report_paths
from .validate import DEVICES


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other user error
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="onnxfuse", description="Shrink ONNX models by merging or pruning channels.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("compress", help="compress a model")
    c.add_argument("input")
    c.add_argument("-o", "--output", required=True)
    c.add_argument("--sparsity", type=float, default=0.5, help="fraction of channels removed per group")
    c.add_argument("--method", default="prune", choices=["prune", "fuse"])
    c.add_argument("--importance", default="l1")
    c.add_argument("--normalization", default="rescale", choices=["reference", "average", "rescale"],
                   help="how fuse applies its transport map (see README)")
    c.add_argument("--ot-p", type=int, default=1, choices=[1, 2], help="OT ground metric: L1 or L2")
    c.add_argument("--ot-solver", default="emd", choices=["emd", "sinkhorn"])
    c.add_argument("--ot-reg", type=float, default=0.01, help="Sinkhorn regularisation")
    c.add_argument("--ot-marginals", default="uniform", choices=["uniform", "importance"])
    c.add_argument("--ot-features", default="weights", choices=["weights", "activations", "both"],
                   help="OT cost from weights, calibration activations (needs --calib) or both")
    c.add_argument("--round-to", type=_round_to, default="auto", metavar="N|auto",
                   help="keep a multiple of N channels per group (auto: 8 on CUDA, 1 on the CPU)")
    c.add_argument("--global", dest="global_ranking", action="store_true",
                   help="rank channels across all groups instead of the same sparsity in each")
    c.add_argument("--max-sparsity", type=float, default=1.0, help="at most this fraction of a group goes")
    c.add_argument("--target-macs", type=float, help="keep this fraction of the MACs (solves for the sparsity)")
    c.add_argument("--target-latency", type=float, metavar="F",
                   help="reach this fraction of the original ONNX Runtime latency (per-group timings)")
    c.add_argument("--latency-batch", type=_positive_int, default=32, metavar="N",
                   help="batch size for --target-latency (default 32)")
    c.add_argument("--allocate", default="uniform", choices=["uniform", "sensitivity"],
                   help="sensitivity: per-group sparsities measured on --calib data to meet --target-macs")
    c.add_argument("--ignore", action="append", default=[], metavar="NODE_GLOB",
                   help="leave the output channels of matching nodes untouched (repeatable)")
    c.add_argument("--keep-bn", action="store_true", help="do not fold BatchNormalization into Conv/Gemm")
    c.add_argument("--input-shape", action="append", default=[], metavar="[NAME:]D0,D1,...",
                   help="shape of an input with dynamic dimensions, for MAC counts and random inputs")
    c.add_argument("--calib", help="calibration data: .npz (one array per input, optional labels) or a folder "
                   "of images (see the preprocessing options)")
    _add_calib_options(c)
    c.add_argument("--repair", default="auto", choices=["auto", "none", "stats", "lsq"],
                   help="statistics repair with the calibration data (auto: stats when --calib is given)")
    c.add_argument("--data", help="validation data (.npz); default: the calibration data, else random inputs")
    c.add_argument("--labels", default="labels", help="key of the labels array in the .npz files")
    c.add_argument("--no-validate", action="store_true", help="skip the ONNX Runtime comparison")
    c.add_argument("--device", default="auto", choices=DEVICES)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--report", help="write the report as JSON")

    i = sub.add_parser("inspect", help="list the channel groups")
    i.add_argument("input")
    i.add_argument("--json", action="store_true")
    i.add_argument("--ignore", action="append", default=[], metavar="NODE_GLOB")
    i.add_argument("--keep-bn", action="store_true")
    i.add_argument("--input-shape", action="append", default=[], metavar="[NAME:]D0,D1,...",
                   help="shape of an input with dynamic dimensions, for MAC counts")

    v = sub.add_parser("validate", help="compare two models in ONNX Runtime")
    v.add_argument("original")
    v.add_argument("compressed")
    v.add_argument("--data", help=".npz inputs (random inputs when omitted)")
    v.add_argument("--labels", default="labels")
    v.add_argument("--device", default="auto", choices=DEVICES)
    v.add_argument("--json", action="store_true")
    v.add_argument("--input-shape", action="append", default=[], metavar="[NAME:]D0,D1,...",
                   help="shape of an input with dynamic dimensions, for random inputs")

    b = sub.add_parser("bench", help="latency and throughput of two models in ONNX Runtime")
    b.add_argument("original")
    b.add_argument("compressed")
    _add_bench_options(b)
    b.add_argument("--json", action="store_true")
    b.add_argument("--input-shape", action="append", default=[], metavar="[NAME:]D0,D1,...",
                   help="shape of an input with dynamic dimensions other than the batch")

    w = sub.add_parser("sweep", help="compress at several sparsities and methods; table and plot")
    w.add_argument("input")
    w.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="folder for sweep.md/.json/.png")
    w.add_argument("--sparsities", type=_fractions, default=(0.1, 0.3, 0.5, 0.7), metavar="S[,S...]")
    w.add_argument("--methods", type=lambda t: tuple(t.split(",")), default=("prune", "fuse"), metavar="M[,M]")
    w.add_argument("--calib", help="calibration data (.npz or image folder), for the repair")
    w.add_argument("--calib-samples", type=_positive_int, default=256, metavar="N",
                   help="use at most N calibration samples (default 256)")
    w.add_argument("--data", help="validation data (.npz, with labels for accuracy)")
    w.add_argument("--repair", default="auto", choices=["auto", "none", "stats", "lsq"])
    w.add_argument("--round-to", type=_round_to, default="auto", metavar="N|auto")
    w.add_argument("--seed", type=int, default=0)
    _add_bench_options(w, batches="32")
    w.add_argument("--labels", default="labels")

    k = sub.add_parser("calib", help="calibration data tools")
    ksub = k.add_subparsers(dest="calib_command", metavar="{make,synth}", required=True, parser_class=_Parser)
    m = ksub.add_parser("make", help="build a calibration .npz from a folder of images")
    m.add_argument("images", metavar="IMAGES_DIR")
    m.add_argument("-o", "--output", required=True)
    m.add_argument("--model", required=True, help="the model the data is for (input name, shape, dtype)")
    m.add_argument("--seed", type=int, default=0)
    _add_calib_options(m)
    y = ksub.add_parser("synth", help="data-free: synthetic images matched to the model's BatchNormalization "
                        "statistics, as a calibration .npz")
    y.add_argument("model", metavar="MODEL", help="an image model with BatchNormalization nodes (not folded)")
    y.add_argument("-o", "--output", required=True)
    y.add_argument("--calib-samples", type=_positive_int, default=256, metavar="N",
                   help="number of synthetic samples (default 256)")
    y.add_argument("--seed", type=int, default=0)
    return parser


def _add_bench_options(p: argparse.ArgumentParser, batches: str = "1,32") -> None:
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--batch", type=_positive_ints, default=_positive_ints(batches), metavar="B[,B...]",
                   help=f"batch sizes (default {batches})")
    p.add_argument("--runs", type=_positive_int, default=50, help="timed runs per model and batch (default 50)")
    p.add_argument("--warmup", type=_positive_int, default=5, help="untimed runs first (default 5)")
    p.add_argument("--threads", type=_positive_int, help="intra-op threads, the same for both models "
                   "(default: the CPUs this process may use)")


def _add_calib_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calib-samples", type=_positive_int, default=256, metavar="N",
                   help="use at most N calibration samples, drawn with --seed when there are more (default 256)")
    g = p.add_argument_group("preprocessing of a folder of images")
    g.add_argument("--preprocess-size", type=_size, metavar="H,W", help="resize to H,W (default: the model's H,W)")
    g.add_argument("--scale", type=_scale, default=1.0,
                   help="multiply the 0..255 pixel values, e.g. 1/255 (default 1: raw values)")
    g.add_argument("--mean", type=_floats, metavar="M[,M,M]", help="per-channel mean subtracted after --scale")
    g.add_argument("--std", type=_floats, metavar="S[,S,S]", help="per-channel std divided by after --mean")
    g.add_argument("--layout", type=str.upper, choices=["NCHW", "NHWC"],
                   help="default: NCHW when the model input's dim 1 is 1 or 3, else NHWC")
    g.add_argument("--color", type=_color, choices=["grey", "rgb"],
                   help="default: grey for 1 channel, rgb for 3")


def _preprocess(args) -> Preprocess:
    return Preprocess(size=args.preprocess_size, scale=args.scale, mean=args.mean, std=args.std,
                      layout=args.layout, color=args.color)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _round_to(text: str) -> int | str:
    return "auto" if text == "auto" else _positive_int(text)


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(t) for t in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(0 <= v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions in [0, 1), got {text!r}")
    return values


def _positive_ints(text: str) -> tuple[int, ...]:
    return tuple(_positive_int(t) for t in text.split(","))


def _size(text: str) -> tuple[int, int]:
    parts = text.replace("x", ",").split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected H,W (two positive integers), got {text!r}")
    return int(parts[0]), int(parts[1])


def _scale(text: str) -> float:
    try:
        num, _, den = text.partition("/")
        value = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number such as 1/255 or 0.5, got {text!r}")
    return value


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if len(values) not in (1, 3) or not all(abs(v) < float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"expected 1 or 3 finite numbers, got {text!r}")
    return values


def _color(text: str) -> str:
    return {"gray": "grey", "greyscale": "grey", "grayscale": "grey", "l": "grey"}.get(text.lower(), text.lower())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except OnnxfuseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `onnxfuse inspect model.onnx | head`: the reader left, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _compress(args) -> int:
    outputs = [Path(args.output)] + (list(report_paths(args.report)) if args.report else [])
    for out in outputs:
        for source in (args.input, args.calib, args.data):  # never write over a file we read
            if source:
                check_output_path(out, source)
    if any(out.resolve() == outputs[0].resolve() for out in outputs[1:]):
        raise OnnxfuseError(f"{args.report}: the report (JSON + .md) would overwrite the output model; "
                            "choose another path")
    model, report = api.compress(
        args.input, args.sparsity, method=args.method, importance=args.importance, round_to=args.round_to,
        global_ranking=args.global_ranking, max_sparsity=args.max_sparsity, target_macs=args.target_macs,
        target_latency=args.target_latency, latency_batch=args.latency_batch,
        allocate=args.allocate, ignore=args.ignore, fold_bn=not args.keep_bn, calib=args.calib, data=args.data,
        calib_samples=args.calib_samples, preprocess=_preprocess(args), labels_key=args.labels, repair=args.repair,
        validate=not args.no_validate, normalization=args.normalization, ot_p=args.ot_p, ot_solver=args.ot_solver,
        ot_reg=args.ot_reg, ot_marginals=args.ot_marginals, ot_features=args.ot_features, device=args.device,
        seed=args.seed, input_shape=args.input_shape, report_path=args.report)
    save_model(model, args.output, input_path=args.input)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _inspect(args) -> int:
    report = api.inspect(args.input, ignore=args.ignore, fold_bn=not args.keep_bn, input_shape=args.input_shape)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    prunable = [g for g in report["groups"] if g["prunable"]]
    print(f"{args.input}: {report['params']:,} params, {report['macs']:,} MACs, "
          f"{len(report['groups'])} groups ({len(prunable)} prunable)")
    print(api.format_groups(report["groups"]))
    print(f"MACs in nodes that prunable groups shrink: {100 * report['prunable_mac_share']:.1f}%")
    return 0


def _validate(args) -> int:
    report = api.validate(args.original, args.compressed, data=args.data, labels_key=args.labels,
                          device=args.device, input_shape=args.input_shape)
    print(json.dumps(report, indent=2) if args.json else _validation_text(report))
    return 0


def _bench(args) -> int:
    report = api.bench(args.original, args.compressed, batch_sizes=args.batch, runs=args.runs, warmup=args.warmup,
                       device=args.device, threads=args.threads, input_shape=args.input_shape, log=_stderr)
    print(json.dumps(report, indent=2) if args.json else format_bench(report))
    return 0


def _sweep(args) -> int:
    out = Path(args.output)
    for source in (args.input, args.calib, args.data):
        if source and Path(source).resolve() == out.resolve():
            raise OnnxfuseError(f"{out}: the output folder is an input; choose another")
    (batch, *more) = args.batch
    if more:
        raise OnnxfuseError("sweep times one batch size; give one --batch")
    api.sweep(args.input, out, args.sparsities, args.methods, batch=batch, runs=args.runs, threads=args.threads,
              calib=args.calib, calib_samples=args.calib_samples, data=args.data, repair=args.repair,
              round_to=args.round_to, device=args.device, seed=args.seed, labels_key=args.labels, log=_stderr)
    return 0


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _calib(args) -> int:  # calib make | synth
    if args.calib_command == "synth":
        data = api.make_synthetic_calibration(args.model, args.output, samples=args.calib_samples, seed=args.seed,
                                              log=_stderr)
    else:
        data = api.make_calibration(args.images, args.model, args.output, samples=args.calib_samples,
                                    seed=args.seed, preprocess=_preprocess(args))
    (name, array), = data.feeds.items()
    print(f"wrote {args.output}: {len(array)} samples, {name!r} {array.dtype} {tuple(array.shape)}", file=sys.stderr)
    return 0


def _validation_text(r: dict) -> str:
    lines = [f"provider: {r['provider']}, {r['samples']} samples from {r['data']}",
             f"params: {r['params_before']:,} -> {r['params_after']:,}",
             f"MACs:   {r['macs_before']:,} -> {r['macs_after']:,}"]
    if "top1_agreement" in r:
        lines.append(f"top-1 agreement: {100 * r['top1_agreement']:.2f}%")
    if "accuracy_original" in r:
        lines.append(f"accuracy: {100 * r['accuracy_original']:.2f}% -> {100 * r['accuracy_compressed']:.2f}%")
    for name, o in r["outputs"].items():
        if "max_abs_error" in o:
            lines.append(f"output {name}: max |error| {o['max_abs_error']:.4g}, mean {o['mean_abs_error']:.4g}")
    return "\n".join(lines)


COMMANDS = {"compress": _compress, "inspect": _inspect, "validate": _validate, "bench": _bench, "sweep": _sweep,
            "calib": _calib}

if __name__ == "__main__":
    sys.exit(main())
