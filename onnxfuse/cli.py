"""Command line: onnxfuse compress | finetune | merge | inspect | validate | bench | sweep | calib make | calib synth.

The arguments of `compress` are generated from the fields of `pipeline.Options` (their flag, help,
choices, type, metavar and action metadata) and of `FusionOptions`; the
other commands take their shared flags from the same fields, and their counts from the defaults of
the `api` functions, so that no default or choice list is written twice.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from inspect import signature
from pathlib import Path

from . import api, log, scratch
from .calibration.images import Preprocess
from .errors import OnnxfuseError
from .graph.io import check_output_path, save_model
from .methods.intra_fusion import FusionOptions
from .pipeline.options import Options
from .reporting.report import report_paths, training_markdown, write_report
from .reporting.summary import format_groups
from .runtime.timing import compare_speed, format_bench
from .training import remove_checkpoints
from .training.options import TrainOptions
from .version import __version__

_OPTION_FIELDS = {f.name: f for f in dataclasses.fields(Options)}
_VERBOSE_HELP = "let ONNX Runtime's own warnings through (silenced by default)"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other user error
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="onnxfuse", description="Shrink ONNX models by merging or pruning channels.")
    parser.add_argument("--version", action="version", version=f"onnxfuse {__version__}")
    parser.add_argument("--verbose", action="store_true", help=_VERBOSE_HELP)
    common = argparse.ArgumentParser(add_help=False)  # --verbose after the command too; unset unless given
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=_VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, help: str, into=sub) -> argparse.ArgumentParser:
        return into.add_parser(name, help=help, parents=[common])

    _add_compress(command("compress", "compress a model"))
    _add_finetune(command("finetune", "train a compressed model by distillation from the original"))
    _add_merge(command("merge", "fuse models of one architecture into one (OT alignment, then averaging)"))
    _add_inspect(command("inspect", "list the channel groups"))
    _add_validate(command("validate", "compare two models in ONNX Runtime"))
    _add_bench(command("bench", "latency and throughput of two models in ONNX Runtime"))
    _add_sweep(command("sweep", "compress at several sparsities and methods; table and plot"))
    k = command("calib", "calibration data tools")
    ksub = k.add_subparsers(dest="calib_command", metavar="{make,synth}", required=True, parser_class=_Parser)
    _add_calib_make(command("make", "build a calibration .npz from a folder of images", ksub))
    _add_calib_synth(command("synth", "data-free: synthetic images matched to the model's BatchNormalization "
                             "statistics, as a calibration .npz", ksub))
    return parser


def _add_compress(c: argparse.ArgumentParser) -> None:
    c.add_argument("input")
    c.add_argument("-o", "--output", required=True)
    dests = []
    for name, f in _OPTION_FIELDS.items():
        if name == "fusion":
            for fusion in dataclasses.fields(FusionOptions):  # flattened: --normalization, --ot-*
                flag = fusion.metadata.get("flag", "--" + fusion.name)
                dests.append(_add_option(c, flag[2:].replace("-", "_"), fusion.default, fusion.metadata))
        elif name == "preprocess":
            _add_preprocess_options(c)
        elif name == "train":
            dests += _add_train_options(c.add_argument_group("training after compression (with --train-data)"))
        elif f.metadata.get("cli", True):
            dests.append(_add_option(c, name, f.default, f.metadata))
    c.add_argument("--report", help="write the report as JSON")
    c.set_defaults(option_dests=tuple(dests))


def _add_finetune(f: argparse.ArgumentParser) -> None:
    f.add_argument("teacher", metavar="TEACHER.onnx", help="the original model")
    f.add_argument("student", metavar="STUDENT.onnx", help="the compressed model to train")
    f.add_argument("-o", "--output", required=True)
    dests = _add_train_options(f)
    for name in ("device", "seed", "labels_key"):
        _add_shared(f, name)
    f.add_argument("--report", help="write the report as JSON")
    _add_preprocess_options(f)
    f.set_defaults(option_dests=tuple(dests))


def _add_merge(m: argparse.ArgumentParser) -> None:
    from .methods.merge import ALIGNS, ANCHORS, REPAIRS

    m.add_argument("models", nargs="+", metavar="MODEL.onnx", help="two or more models of one architecture")
    m.add_argument("-o", "--output", required=True)
    _add_shared(m, "calib", help="calibration inputs (.npz or image folder) for --align activations")
    _add_shared(m, "calib_samples")
    m.add_argument("--align", choices=ALIGNS, default="activations",
                   help="match channels by their activations on --calib (default) or by their weights")
    m.add_argument("--weights", type=_weight_list, metavar="W,W[,...]", help="one weight per model in the average "
                   "(default: equal)")
    m.add_argument("--anchor", choices=ANCHORS, default="first", help="the model whose channel order is kept")
    m.add_argument("--repair", choices=REPAIRS, default="auto", help="after averaging, give every producer's "
                   "channels the models' mean channel statistics on --calib (stats: REPAIR; auto: stats with --calib)")
    _add_shared(m, "data", help=".npz inputs (labels optional) on which each model, the merged one and the plain "
                "average are scored")
    for name in ("labels_key", "fold_bn", "seed"):
        _add_shared(m, name)
    m.add_argument("--report", help="write the report as JSON")
    _add_preprocess_options(m)


def _weight_list(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _add_train_options(p) -> list[str]:
    return [_add_option(p, t.name, t.default, t.metadata) for t in dataclasses.fields(TrainOptions)
            if t.metadata.get("cli", True)]


def _add_inspect(i: argparse.ArgumentParser) -> None:
    i.add_argument("input")
    i.add_argument("--json", action="store_true")
    _add_shared(i, "ignore")
    _add_shared(i, "fold_bn")
    _add_shared(i, "input_shape", help="shape of an input with dynamic dimensions, for MAC counts")


def _add_validate(v: argparse.ArgumentParser) -> None:
    v.add_argument("original")
    v.add_argument("compressed")
    _add_shared(v, "data", help=".npz inputs (random inputs when omitted)")
    _add_shared(v, "labels_key")
    _add_shared(v, "device")
    v.add_argument("--json", action="store_true")
    _add_shared(v, "input_shape", help="shape of an input with dynamic dimensions, for random inputs")


def _add_bench(b: argparse.ArgumentParser) -> None:
    b.add_argument("original")
    b.add_argument("compressed")
    defaults = _defaults(api.bench)
    _add_bench_options(b, defaults["batch_sizes"], defaults["runs"], defaults["warmup"])
    b.add_argument("--json", action="store_true")
    _add_shared(b, "input_shape", help="shape of an input with dynamic dimensions other than the batch")


def _add_sweep(w: argparse.ArgumentParser) -> None:
    defaults = _defaults(api.sweep)
    w.add_argument("input")
    w.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="folder for sweep.md/.json/.png")
    w.add_argument("--sparsities", type=_fractions, default=defaults["sparsities"], metavar="S[,S...]")
    w.add_argument("--methods", type=lambda t: tuple(t.split(",")), default=defaults["methods"], metavar="M[,M]")
    _add_shared(w, "calib", help="calibration data (.npz or image folder), for the repair")
    _add_shared(w, "calib_samples", help="use at most N calibration samples")
    _add_shared(w, "data", help="validation data (.npz, with labels for accuracy)")
    for name in ("repair", "round_to", "seed", "ray"):
        _add_shared(w, name)
    # api.sweep times with compare_speed's own warm-up: the flag's default says which
    _add_bench_options(w, (defaults["batch"],), defaults["runs"], _defaults(compare_speed)["warmup"])
    _add_shared(w, "labels_key")


def _add_calib_make(m: argparse.ArgumentParser) -> None:
    m.add_argument("images", metavar="IMAGES_DIR")
    m.add_argument("-o", "--output", required=True)
    m.add_argument("--model", required=True, help="the model the data is for (input name, shape, dtype)")
    _add_shared(m, "seed")
    _add_shared(m, "calib_samples", help=_OPTION_FIELDS["calib_samples"].metadata["help"])
    _add_preprocess_options(m)


def _add_calib_synth(y: argparse.ArgumentParser) -> None:
    y.add_argument("model", metavar="MODEL", help="an image model with BatchNormalization nodes (not folded)")
    y.add_argument("-o", "--output", required=True)
    _add_shared(y, "calib_samples", help="number of synthetic samples")
    _add_shared(y, "seed")


def _add_option(p: argparse.ArgumentParser, dest: str, default, meta) -> str:
    """One argument from a field's metadata; returns its dest (the field name, or ot_* for fusion)."""
    action, help = meta.get("action"), (meta.get("help") or "").replace("%", "%%") or None
    if help and meta.get("type") == "positive_int":  # counts say their default, as they always did
        help += " (default %(default)s)"
    flag, kwargs = meta.get("flag", "--" + dest.replace("_", "-")), {"dest": dest, "help": help}
    if action in ("store_true", "store_false"):
        if default is not (action == "store_false"):
            raise ValueError(f"{dest}: default {default!r} does not fit action {action}")
        kwargs["action"] = action
    else:
        kwargs.update(default=list(default) if action == "append" else default, type=_value_type(default, meta))
        kwargs.update({k: meta[k] for k in ("action", "metavar", "nargs") if k in meta})
        if "choices" in meta:
            choices = meta["choices"]() if callable(meta["choices"]) else tuple(meta["choices"])
            if default is not None and default not in choices:
                raise ValueError(f"{dest}: default {default!r} is not among its choices {choices}")
            kwargs["choices"] = choices
        else:
            kwargs.setdefault("metavar", flag[2:].replace("-", "_").upper())  # --labels LABELS, not LABELS_KEY
    p.add_argument(flag, **kwargs)
    return dest


def _add_shared(p: argparse.ArgumentParser, name: str, help: str | None = None) -> None:
    """An Options field's flag, default, type and choices on another command, with that command's help."""
    f = _OPTION_FIELDS[name]
    _add_option(p, name, f.default, {**f.metadata, "help": help})


def _value_type(default, meta):
    kind = meta.get("type")
    if kind is None:
        kind = str if default is None or isinstance(default, (tuple, list)) else type(default)
    return {"positive_int": _positive_int, "round_to": _round_to}.get(kind, kind) if isinstance(kind, str) else kind


def _defaults(func) -> dict:
    return {k: v.default for k, v in signature(func).parameters.items() if v.default is not v.empty}


def _add_bench_options(p: argparse.ArgumentParser, batches: tuple[int, ...], runs: int, warmup: int) -> None:
    _add_shared(p, "device")
    p.add_argument("--batch", type=_positive_ints, default=tuple(batches), metavar="B[,B...]",
                   help=f"batch sizes (default {','.join(map(str, batches))})")
    p.add_argument("--runs", type=_positive_int, default=runs,
                   help="timed runs per model and batch (default %(default)s)")
    p.add_argument("--warmup", type=_positive_int, default=warmup, help="untimed runs first (default %(default)s)")
    p.add_argument("--threads", type=_positive_int, help="intra-op threads, the same for both models "
                   "(default: the CPUs this process may use)")


def _add_preprocess_options(p: argparse.ArgumentParser) -> None:
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
    """One command in one run: its temporary files live in one private folder, removed at the end;
    Ctrl-C removes the outputs already written too, prints one line and exits 130."""
    try:
        args = build_parser().parse_args(argv)
        if args.verbose:
            log.verbose(True)
        with scratch.run():
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
        for source in (args.input, args.calib, args.data, *args.fuse_first):  # never write over a file we read
            if source:
                check_output_path(out, source)
    if any(out.resolve() == outputs[0].resolve() for out in outputs[1:]):
        raise OnnxfuseError(f"{args.report}: the report (JSON + .md) would overwrite the output model; "
                            "choose another path")
    options = {dest: getattr(args, dest) for dest in args.option_dests}
    options["checkpoint"] = default_folder = _checkpoint_folder(args)
    model, _ = api.compress(args.input, **options, preprocess=_preprocess(args), report_path=args.report)
    save_model(model, args.output, input_path=args.input)
    _finished(args, default_folder)
    return 0


def _finetune(args) -> int:
    outputs = [Path(args.output)] + (list(report_paths(args.report)) if args.report else [])
    for out in outputs:
        for source in (args.teacher, args.student, args.train_data, args.val_data):
            if source:
                check_output_path(out, source)
    options = {dest: getattr(args, dest) for dest in args.option_dests}
    options["checkpoint"] = default_folder = _checkpoint_folder(args)
    model, report = api.finetune(args.teacher, args.student, **options, device=args.device, seed=args.seed,
                                 labels_key=args.labels_key, preprocess=_preprocess(args))
    if args.report:
        write_report(report, args.report, training_markdown)
    save_model(model, args.output, input_path=args.student)
    _finished(args, default_folder)
    return 0


def _checkpoint_folder(args) -> str | None:
    """A training run on the command line always checkpoints: into --checkpoint, else OUTPUT.ckpt."""
    return args.checkpoint or (f"{args.output}.ckpt" if args.train_data else None)


def _finished(args, checkpoints: str | None) -> None:
    """The output is written: the default checkpoint folder has done its job (one the user named stays)."""
    if checkpoints and not args.checkpoint:
        remove_checkpoints(checkpoints)
    print(f"wrote {args.output}", file=sys.stderr)


def _inspect(args) -> int:
    report = api.inspect(args.input, ignore=args.ignore, fold_bn=args.fold_bn, input_shape=args.input_shape)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    prunable = [g for g in report["groups"] if g["prunable"]]
    print(f"{args.input}: {report['params']:,} params, {report['macs']:,} MACs, "
          f"{len(report['groups'])} groups ({len(prunable)} prunable)")
    print(format_groups(report["groups"]))
    print(f"MACs in nodes that prunable groups shrink: {100 * report['prunable_mac_share']:.1f}%")
    return 0


def _merge(args) -> int:
    out = Path(args.output)
    for source in [*args.models, args.calib, args.data]:
        if source:
            check_output_path(out, source)
    model, report = api.merge(args.models, calib=args.calib, align=args.align, weights=args.weights,
                              anchor=args.anchor, data=args.data, labels_key=args.labels_key,
                              calib_samples=args.calib_samples, fold_bn=args.fold_bn, seed=args.seed,
                              preprocess=_preprocess(args), repair=args.repair)
    if args.report:
        write_report(report, args.report)
    save_model(model, args.output, input_path=args.models[0])
    log.info(json.dumps({k: v for k, v in report.items() if k in ("unmoved_share", "scores")}))
    return 0


def _validate(args) -> int:
    report = api.validate(args.original, args.compressed, data=args.data, labels_key=args.labels_key,
                          device=args.device, input_shape=args.input_shape)
    print(json.dumps(report, indent=2) if args.json else _validation_text(report))
    return 0


def _bench(args) -> int:
    report = api.bench(args.original, args.compressed, batch_sizes=args.batch, runs=args.runs, warmup=args.warmup,
                       device=args.device, threads=args.threads, input_shape=args.input_shape)
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
              round_to=args.round_to, device=args.device, seed=args.seed, labels_key=args.labels_key, ray=args.ray)
    return 0


def _calib(args) -> int:  # calib make | synth
    if args.calib_command == "synth":
        data = api.make_synthetic_calibration(args.model, args.output, samples=args.calib_samples, seed=args.seed)
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


COMMANDS = {"compress": _compress, "finetune": _finetune, "merge": _merge, "inspect": _inspect, "validate": _validate,
            "bench": _bench, "sweep": _sweep, "calib": _calib}

if __name__ == "__main__":
    sys.exit(main())
