"""Public API: compress, inspect, validate, bench, sweep, make_calibration, make_synthetic_calibration."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx

from . import pipeline, synthetic
from .channels import Analysis
from .data import (
    Dataset,
    check_samples,
    has_dynamic_dims,
    load_calibration,
    load_npz,
    parse_input_shapes,
    random_inputs,
    save_npz,
)
from .errors import OnnxfuseError
from .graphio import check_model, check_output_path, load_model
from .images import Preprocess
from .latency import compare_speed, cpu_channel_block
from .metrics import count_macs, count_params
from .normalize import import_graph, infer_shapes, with_input_shapes
from .reports import write_report
from .validate import compare

ModelLike = str | os.PathLike | onnx.ModelProto


def compress(model: ModelLike, sparsity: float = 0.5, *, report_path: str | None = None, quiet: bool = False,
             **options) -> tuple[onnx.ModelProto, dict]:
    """Shrink every prunable channel group; returns the new model and a report (dict).

    Options (the CLI flags of `onnxfuse compress`, see `pipeline.Options`): method ("prune" keeps
    the most important channels of each group, "fuse" merges every channel into the kept ones with
    an optimal-transport map), importance, round_to, global_ranking, max_sparsity, target_macs,
    allocate, ignore, fold_bn, calib (an .npz file or a folder of images read with `preprocess`,
    at most `calib_samples` of it, drawn with `seed`), data, labels_key, repair, validate, device,
    seed, and for fusion normalization, ot_p, ot_solver, ot_reg, ot_marginals, ot_features."""
    options = pipeline.Options.from_flat(sparsity=sparsity, **options)
    ctx = pipeline.Context(options=options, source=_source(model))
    if quiet:
        ctx.log = lambda msg: None
    ctx = pipeline.run(ctx)
    report = _compress_report(ctx)
    if report_path:
        write_report(report, report_path)
    ctx.log(summary(report))
    return ctx.result, report


def inspect(model: ModelLike, *, ignore: tuple[str, ...] | list[str] = (), fold_bn: bool = True,
            input_shape: tuple[str, ...] | list[str] = ()) -> dict:
    """The channel groups of a model: width, producers, consumers, MAC share, prunable or why not."""
    options = pipeline.Options(ignore=tuple(ignore), fold_bn=fold_bn, input_shape=tuple(input_shape))
    ctx = pipeline.run(pipeline.Context(options=options, source=_source(model)), stop_after="analyze")
    macs = ctx.report["macs_before"]
    return {"params": ctx.report["params_before"], "macs": macs, "normalize": ctx.report["normalize"],
            "prunable_mac_share": round(ctx.analysis.prunable_mac_share(), 4),
            "groups": group_rows(ctx.analysis, macs)}


def validate(original: ModelLike, compressed: ModelLike, *, data: str | None = None, labels_key: str = "labels",
             device: str = "auto", seed: int = 0, input_shape: tuple[str, ...] | list[str] = ()) -> dict:
    """Run both models in ONNX Runtime on the same inputs; agreement, errors, accuracy, params, MACs."""
    a, b = _load(original), _load(compressed)
    shapes = parse_input_shapes(list(input_shape), a)
    dataset = load_npz(data, a, labels_key) if data else random_inputs(a, seed=seed, shapes=shapes)
    report = compare(a, b, dataset, device)
    report["data"] = str(data) if data else "random inputs"
    if has_dynamic_dims(a):
        for name, array in dataset.feeds.items():
            shapes.setdefault(name, [1, *array.shape[1:]])
    for name, model in (("before", a), ("after", b)):
        report[f"params_{name}"], report[f"macs_{name}"] = _counts(model, shapes)
    return report


def bench(original: ModelLike, compressed: ModelLike, *, batch_sizes: tuple[int, ...] | list[int] = (1, 32),
          runs: int = 50, warmup: int = 5, device: str = "auto", threads: int | None = None, seed: int = 0,
          input_shape: tuple[str, ...] | list[str] = (), log=None) -> dict:
    """Latency (median, IQR, p10–p90) and throughput of both models per batch size, timed interleaved
    under the same session options, with the speed-up next to the ideal one from the MAC ratio."""
    a, b = _load(original), _load(compressed)
    shapes = parse_input_shapes(list(input_shape), a)
    report = compare_speed(a, b, batch_sizes=tuple(batch_sizes), runs=runs, warmup=warmup, device=device,
                           threads=threads, seed=seed, shapes=shapes, log=log)
    (_, before), (_, after) = _counts(a, shapes), _counts(b, shapes)
    report.update(macs_before=before, macs_after=after)
    if before and after:
        report.update(mac_ratio=round(after / before, 4), ideal_speedup=round(before / after, 4))
    return report


def sweep(model: ModelLike, out_dir: str | os.PathLike, sparsities=(0.1, 0.3, 0.5, 0.7), methods=("prune", "fuse"),
          *, batch: int = 32, runs: int = 30, threads: int | None = None, log=None, **options) -> dict:
    """Compress at each sparsity with each method (compress options as keywords), validate and time
    each result; writes sweep.md, sweep.json and (with matplotlib) sweep.png into `out_dir`."""
    from .sweep import run_sweep

    return run_sweep(model, out_dir, tuple(sparsities), tuple(methods), batch=batch, runs=runs, threads=threads,
                     log=log, **options)


def _counts(model: onnx.ModelProto, shapes: dict) -> tuple[int, int]:
    """Parameters and MACs (at batch 1; `shapes` for dynamic input dimensions)."""
    graph = infer_shapes(import_graph(model), model)
    if shapes:
        graph = with_input_shapes(graph, model, shapes)
    return count_params(graph), count_macs(graph)


def make_calibration(images: str | os.PathLike, model: ModelLike, output: str | os.PathLike | None = None, *,
                     samples: int = 256, seed: int = 0, preprocess: Preprocess | None = None,
                     log=None) -> Dataset:
    """Calibration data from a folder of images for `model`'s one image input (at most `samples`, drawn
    with `seed`); written atomically as an .npz keyed by the input name when `output` is given."""
    folder = Path(images)
    if not folder.is_dir():
        raise OnnxfuseError(f"{folder}: {'not a folder' if folder.exists() else 'no such folder'}")
    sources = (folder,) + ((model,) if isinstance(model, (str, os.PathLike)) else ())
    for source in sources if output is not None else ():  # fail before reading any image
        check_output_path(Path(output), source)
    data = load_calibration(folder, _load(model), samples, seed, preprocess, log=log)
    if output is not None:
        save_npz(data, output, sources)
    return data


def make_synthetic_calibration(model: ModelLike, output: str | os.PathLike | None = None, *, samples: int = 256,
                               seed: int = 0, log=None) -> Dataset:
    """Data-free calibration data for `model`'s one image input: synthetic images from the generator that
    best reproduces the model's BatchNormalization statistics (onnxfuse/synthetic.py); written atomically
    as an .npz keyed by the input name when `output` is given. `log` receives a line saying which generator."""
    sources = (model,) if isinstance(model, (str, os.PathLike)) else ()
    for source in sources if output is not None else ():
        check_output_path(Path(output), source)
    check_samples(samples)
    data, summary = synthetic.synthesize(_load(model), samples, seed)
    (log or (lambda line: None))(summary)
    if output is not None:
        save_npz(data, output, sources)
    return data


def group_rows(analysis: Analysis, total_macs: int, keep: dict | None = None) -> list[dict]:
    rows = []
    for group in analysis.groups:
        row = {
            "id": group.id,
            "width": group.width,
            "producers": group.nodes("producer"),
            "consumers": group.nodes("consumer"),
            "mac_share": round(group.macs / total_macs, 4) if total_macs else 0.0,
            "prunable": group.prunable,
        }
        if group.frozen:
            row["frozen"] = group.frozen
        if keep is not None and group.id in keep:
            row["kept"] = len(keep[group.id])
        rows.append(row)
    return rows


def format_groups(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        state = "prunable" if r["prunable"] else f"frozen: {r['frozen']}"
        kept = f" -> {r['kept']}" if "kept" in r else ""
        lines.append(f"group {r['id']:>3}  width {r['width']:>5}{kept}  macs {100 * r['mac_share']:5.1f}%  "
                     f"producers [{', '.join(r['producers'])}]  consumers [{', '.join(r['consumers'])}]  {state}")
    return "\n".join(lines)


def summary(report: dict) -> str:
    groups = report["groups"]
    pruned = sum(1 for g in groups if g["prunable"] and g.get("kept", g["width"]) < g["width"])
    frozen = sum(1 for g in groups if not g["prunable"])
    lines = [
        f"groups: {len(groups)} ({pruned} shrunk, {frozen} frozen)" if frozen < len(groups) else
        f"nothing to prune: all {len(groups)} channel groups are frozen (see `onnxfuse inspect`); "
        "the output is an unchanged copy",
        f"params: {report['params_before']:,} -> {report['params_after']:,} "
        f"({_ratio(report['params_after'], report['params_before'])})",
        f"MACs:   {report['macs_before']:,} -> {report['macs_after']:,} "
        f"({_ratio(report['macs_after'], report['macs_before'])})",
    ]
    lines += _repair_lines(report)
    val = report.get("validation")
    if val:
        line = f"validation on {val['samples']} samples of {val['data']} ({val['provider']}):"
        if "top1_agreement" in val:
            line += f" top-1 agreement {100 * val['top1_agreement']:.1f}%"
        if "accuracy_original" in val:
            line += (f", accuracy {100 * val['accuracy_original']:.2f}% -> "
                     f"{100 * val['accuracy_compressed']:.2f}%")
        errors = [o["max_abs_error"] for o in val["outputs"].values() if "max_abs_error" in o]
        if errors:
            line += f", max output error {max(errors):.3g}"
        lines.append(line)
    lines += _alignment_hint(report)
    return "\n".join(lines)


def _alignment_hint(report: dict) -> list[str]:
    """On the CPU, widths between two multiples of ONNX Runtime's channel block cost as much as the
    next multiple: say so when the default --round-to 1 left such widths."""
    options = report.get("options", {})
    block = cpu_channel_block()
    if options.get("round_to") != 1 or options.get("device") not in ("auto", "cpu") or block <= 1:
        return []
    unaligned = [g for g in report["groups"] if g["prunable"] and g.get("kept", g["width"]) < g["width"]
                 and g["kept"] % block]
    if not unaligned:
        return []
    return [f"hint: {len(unaligned)} shrunk groups have widths that are not multiples of {block}, the channel "
            f"block of ONNX Runtime's CPU convolutions here; --round-to {block} turns MAC savings into "
            "more latency savings (see `onnxfuse bench`)"]


def _repair_lines(report: dict) -> list[str]:
    """What the repair step recovered: its own fit per group/consumer, and agreement before it."""
    lines, steps = [], report.get("repair") or []
    if steps and "output_error_before" in steps[0]:
        before, after = (np.mean([s[key] for s in steps]) for key in ("output_error_before", "output_error_after"))
        lines.append(f"lsq repair: {len(steps)} consumers refit, mean relative output error on the calibration "
                     f"data {before:.3f} -> {after:.3f}")
    elif steps:
        error = np.mean([s["std_error_before"] for s in steps])
        lines.append(f"stats repair: {len(steps)} groups; the new channels' std was off its target by "
                     f"{100 * error:.0f}% on average, matched after")
    before = report.get("validation_before_repair")
    if before and "top1_agreement" in before:
        line = f"before repair: top-1 agreement {100 * before['top1_agreement']:.1f}%"
        if "accuracy_compressed" in before:
            line += f", accuracy {100 * before['accuracy_compressed']:.2f}%"
        lines.append(line)
    return lines


def _compress_report(ctx: pipeline.Context) -> dict:
    opts = ctx.options
    options = asdict(opts)
    if opts.method != "fuse":
        del options["fusion"]
    report = {
        "options": options,
        "groups": group_rows(ctx.analysis, ctx.report["macs_before"], ctx.keep),
    }
    report.update(ctx.report)
    return report


def _source(model: ModelLike):
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    raise OnnxfuseError(f"expected a path or an onnx.ModelProto, got {type(model).__name__}")


def _load(model: ModelLike) -> onnx.ModelProto:
    source = _source(model)
    if isinstance(source, onnx.ModelProto):
        check_model(source)
        return source
    return load_model(source)


def _ratio(after: int, before: int) -> str:
    return f"{after / before:.3f}x" if before else "n/a"
