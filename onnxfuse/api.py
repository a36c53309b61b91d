"""Public API: compress, finetune, merge, inspect, validate, bench, sweep, make_calibration,
make_synthetic_calibration."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import onnx

from . import log, pipeline
from .calibration import synthetic
from .calibration.data import (
    Dataset,
    check_samples,
    has_dynamic_dims,
    load_calibration,
    load_npz,
    parse_input_shapes,
    random_inputs,
    save_npz,
)
from .calibration.images import Preprocess
from .errors import OnnxfuseError
from .graph.convert import import_graph
from .graph.io import check_model, check_output_path, load_model
from .graph.metrics import count_macs, count_params
from .graph.shapes import infer_shapes, mac_graph
from .methods import METHODS
from .pipeline import iterate
from .pipeline.fuse_first import run_fuse_first
from .pipeline.merge import merge_models
from .reporting.report import write_report, write_text
from .reporting.summary import group_rows, summary, train_summary
from .reporting.sweep import check_out_dir, plot, sweep_row, table
from .runtime.compare import compare
from .runtime.sessions import assumed_input_shapes
from .runtime.timing import compare_speed
from .scaleout import run_tasks
from .training import load_finetune
from .training.options import TrainOptions

ModelLike = str | os.PathLike | onnx.ModelProto


def compress(model: ModelLike, sparsity: float = 0.5, *, report_path: str | None = None, quiet: bool = False,
             **options) -> tuple[onnx.ModelProto, dict]:
    """Shrink every prunable channel group; returns the new model and a report (dict).

    Options (the CLI flags of `onnxfuse compress`, see `pipeline.Options`): method ("prune" keeps
    the most important channels of each group, "fuse" merges every channel into the kept ones with
    an optimal-transport map), importance, round_to, global_ranking, max_sparsity, target_macs,
    allocate, ignore, fold_bn, calib (an .npz file or a folder of images read with `preprocess`,
    at most `calib_samples` of it, drawn with `seed`), data, labels_key, repair, validate, device,
    seed, and for fusion normalization, ot_p, ot_solver, ot_reg, ot_marginals, ot_features, fuse_keep."""
    options = pipeline.Options.from_flat(sparsity=sparsity, **options)
    with log.quiet(quiet):
        if options.fuse_first:
            ctx = run_fuse_first(options, source_of(model))
        elif options.iterative > 1:
            ctx = iterate.run_rounds(options, source_of(model))
        else:
            ctx = pipeline.run(pipeline.Context.for_model(options, source_of(model)))
        report = _compress_report(ctx)
        if report_path:
            write_report(report, report_path)
        log.info(summary(report))
    return ctx.model.result, report


def finetune(teacher: ModelLike, student: ModelLike, *, train_data: str, device: str = "auto", seed: int = 0,
             labels_key: str = "labels", preprocess: Preprocess | None = None, quiet: bool = False,
             **options) -> tuple[onnx.ModelProto, dict]:
    """Train `student` (a compressed `teacher`: same inputs and outputs) by distillation from `teacher`
    on the inputs in `train_data`; returns the best validated student and a report (steps, seconds,
    loss curve, validation before and after). Options: the fields of `training.options.TrainOptions`
    (train_steps, batch, lr, optimizer, temperature, val_data, checkpoint, resume, ...)."""
    options = TrainOptions.from_flat(train_data=train_data, **options)
    options.check()
    with log.quiet(quiet):
        run = load_finetune()
        a, b = load(teacher), load(student)
        model, report = run(a, b, options, device=device, seed=seed, labels_key=labels_key, preprocess=preprocess,
                            teacher_source=None if isinstance(teacher, onnx.ModelProto) else str(teacher))
        log.info(train_summary(report))
    return model, report


def merge(models: list[ModelLike], *, calib: str | None = None, align: str = "activations",
          weights: list[float] | None = None, anchor: str = "first", data: str | None = None,
          labels_key: str = "labels", calib_samples: int = 256, fold_bn: bool = True, seed: int = 0,
          preprocess: Preprocess | None = None, repair: str = "auto") -> tuple[onnx.ModelProto, dict]:
    """One model from several of one architecture (OTFusion): every other model's channels matched
    to the anchor's group by group (by activations on `calib`, or by weights), then every weight
    averaged (`weights`: one per model, default equal); with `calib`, every producer's channels then
    get the aligned models' mean statistics (`repair` auto or stats: REPAIR; none: plain averaging).
    With `data`, the report scores each input
    model, the merged one and the plain average without alignment (accuracy with labels, else
    top-1 agreement with the anchor)."""
    options = pipeline.Options(calib=calib, calib_samples=calib_samples, fold_bn=fold_bn, seed=seed, data=data,
                               labels_key=labels_key, **({"preprocess": preprocess} if preprocess else {}))
    names = [str(m) if isinstance(m, (str, os.PathLike)) else f"model {i + 1}" for i, m in enumerate(models)]
    return merge_models([(name, source_of(m)) for name, m in zip(names, models)], options, align, weights, anchor,
                        repair=repair)


def inspect(model: ModelLike, *, ignore: tuple[str, ...] | list[str] = (), fold_bn: bool = True,
            input_shape: tuple[str, ...] | list[str] = ()) -> dict:
    """The channel groups of a model: width, producers, consumers, MAC share, prunable or why not."""
    options = pipeline.Options(ignore=tuple(ignore), fold_bn=fold_bn, input_shape=tuple(input_shape))
    ctx = pipeline.run(pipeline.Context.for_model(options, source_of(model)), stop_after="analyze")
    macs, analysis = ctx.report["macs_before"], ctx.model.analysis
    return {"params": ctx.report["params_before"], "macs": macs, "normalize": ctx.report["normalize"],
            "prunable_mac_share": round(analysis.prunable_mac_share(), 4), "groups": group_rows(analysis, macs)}


def validate(original: ModelLike, compressed: ModelLike, *, data: str | None = None, labels_key: str = "labels",
             device: str = "auto", seed: int = 0, input_shape: tuple[str, ...] | list[str] = ()) -> dict:
    """Run both models in ONNX Runtime on the same inputs; agreement, errors, accuracy, params, MACs."""
    a, b = load(original), load(compressed)
    shapes = parse_input_shapes(list(input_shape), a)
    shapes.update(assumed_input_shapes(a, shapes, None if isinstance(original, onnx.ModelProto) else str(original)))
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
          input_shape: tuple[str, ...] | list[str] = (), quiet: bool = False) -> dict:
    """Latency (median, IQR, p10–p90) and throughput of both models per batch size, timed interleaved
    under the same session options, with the speed-up next to the ideal one from the MAC ratio."""
    a, b = load(original), load(compressed)
    shapes = parse_input_shapes(list(input_shape), a)
    shapes.update(assumed_input_shapes(a, shapes, None if isinstance(original, onnx.ModelProto) else str(original)))
    with log.quiet(quiet):
        report = compare_speed(a, b, batch_sizes=tuple(batch_sizes), runs=runs, warmup=warmup, device=device,
                               threads=threads, seed=seed, shapes=shapes)
    (_, before), (_, after) = _counts(a, shapes), _counts(b, shapes)
    report.update(macs_before=before, macs_after=after)
    if before and after:
        report.update(mac_ratio=round(after / before, 4), ideal_speedup=round(before / after, 4))
    return report


def sweep(model: ModelLike, out_dir: str | os.PathLike, sparsities=(0.1, 0.3, 0.5, 0.7), methods=("prune", "fuse"),
          *, batch: int = 32, runs: int = 30, threads: int | None = None, quiet: bool = False, **options) -> dict:
    """Compress at each sparsity with each method (compress options as keywords), validate and time
    each result; writes sweep.md, sweep.json and (with matplotlib) sweep.png into `out_dir` once
    everything has been measured."""
    out_dir, sparsities, methods = Path(out_dir), tuple(sparsities), tuple(methods)
    check_out_dir(out_dir)
    if not sparsities or not all(0 <= s < 1 for s in sparsities):
        raise OnnxfuseError(f"sparsities must be in [0, 1), got {list(sparsities)}")
    if not methods:
        raise OnnxfuseError(f"no method to sweep; choose from {', '.join(METHODS.names())}")
    original = load(model)
    _check_sweep_inputs(original, methods, options)
    configurations = [(method, s) for method in methods for s in sparsities]
    ray = options.pop("ray", None)
    rows, total = [], len(configurations)
    with log.quiet(quiet):
        if ray:  # the compress calls are independent: Ray tasks; the timings stay one at a time
            log.info(f"sweep: {total} compress runs as Ray tasks ({ray})")
            results = run_tasks(_compress_task, [(original.SerializeToString(), s, method, options)
                                                 for method, s in configurations], ray)
            compressed_all = [(onnx.load_from_string(data), report) for data, report in results]
        for index, (method, s) in enumerate(configurations):
            if ray:
                compressed, report = compressed_all[index]
            else:
                log.info(f"sweep {index + 1}/{total}: {method} at sparsity {s}: compressing")
                compressed, report = compress(original, s, method=method, quiet=True, **options)
            log.info(f"sweep {index + 1}/{total}: {method} at sparsity {s}: timing at batch {batch}")
            with log.quiet():
                speed = compare_speed(original, compressed, batch_sizes=(batch,), runs=runs,
                                      device=options.get("device", "auto"), threads=threads)
            rows.append(sweep_row(method, s, report, speed))
        result = {"model": str(model) if not hasattr(model, "graph") else "model", "batch": batch,
                  "provider": speed["provider"], "threads": speed["threads"], "rows": rows,
                  "accuracy_original": report["validation"].get("accuracy_original")}
        out_dir.mkdir(exist_ok=True)
        write_text(out_dir / "sweep.json", json.dumps(result, indent=2))
        write_text(out_dir / "sweep.md", table(result))
        try:
            plot(result, out_dir / "sweep.png")
        except ImportError:
            log.info("note: matplotlib is not installed, so no sweep.png (pip install 'onnxfuse[bench]')")
        log.info(f"wrote {out_dir}/sweep.md, sweep.json" + (", sweep.png" if (out_dir / "sweep.png").exists() else ""))
    return result


def _compress_task(model: bytes, sparsity: float, method: str, options: dict) -> tuple[bytes, dict]:
    """One configuration of a sweep, as a Ray task (arguments and result serialised)."""
    compressed, report = compress(onnx.load_from_string(model), sparsity, method=method, quiet=True, **options)
    return compressed.SerializeToString(), report


def make_calibration(images: str | os.PathLike, model: ModelLike, output: str | os.PathLike | None = None, *,
                     samples: int = pipeline.options.CALIB_SAMPLES, seed: int = 0,
                     preprocess: Preprocess | None = None) -> Dataset:
    """Calibration data from a folder of images for `model`'s one image input (at most `samples`, drawn
    with `seed`); written atomically as an .npz keyed by the input name when `output` is given."""
    folder = Path(images)
    if not folder.is_dir():
        raise OnnxfuseError(f"{folder}: {'not a folder' if folder.exists() else 'no such folder'}")
    sources = (folder,) + ((model,) if isinstance(model, (str, os.PathLike)) else ())
    for source in sources if output is not None else ():  # fail before reading any image
        check_output_path(Path(output), source)
    data = load_calibration(folder, load(model), samples, seed, preprocess)
    if output is not None:
        save_npz(data, output, sources)
    return data


def make_synthetic_calibration(model: ModelLike, output: str | os.PathLike | None = None, *,
                               samples: int = pipeline.options.CALIB_SAMPLES, seed: int = 0) -> Dataset:
    """Data-free calibration data for `model`'s one image input: synthetic images from the generator that
    best reproduces the model's BatchNormalization statistics (calibration/synthetic.py); written
    atomically as an .npz keyed by the input name when `output` is given. Logs which generator won."""
    sources = (model,) if isinstance(model, (str, os.PathLike)) else ()
    for source in sources if output is not None else ():
        check_output_path(Path(output), source)
    check_samples(samples)
    data, description = synthetic.synthesize(load(model), samples, seed)
    log.info(description)
    if output is not None:
        save_npz(data, output, sources)
    return data


def source_of(model: ModelLike) -> str | onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    raise OnnxfuseError(f"expected a path or an onnx.ModelProto, got {type(model).__name__}")


def load(model: ModelLike) -> onnx.ModelProto:
    """The model as a checked proto (a path is read with its external data)."""
    source = source_of(model)
    if isinstance(source, onnx.ModelProto):
        check_model(source)
        return source
    return load_model(source)


def _counts(model: onnx.ModelProto, shapes: dict) -> tuple[int, int]:
    """Parameters and MACs (at batch 1; `shapes` for dynamic input dimensions)."""
    graph = infer_shapes(import_graph(model), model)
    return count_params(graph), count_macs(mac_graph(graph, model, shapes))


def _check_sweep_inputs(original: onnx.ModelProto, methods: tuple[str, ...], options: dict) -> None:
    """Bad options and data files fail here, before any long stage starts."""
    for method in methods:
        opts = pipeline.Options.from_flat(**options, method=method)
        opts.check()
    with log.quiet():
        if opts.calib:
            load_calibration(opts.calib, original, opts.calib_samples, opts.seed, opts.preprocess, opts.labels_key)
        if opts.data:
            load_npz(opts.data, original, opts.labels_key)


def _compress_report(ctx: pipeline.Context) -> dict:
    options = asdict(ctx.options)
    if ctx.options.method != "fuse":
        del options["fusion"]
    report = {"options": options,
              "groups": group_rows(ctx.model.analysis, ctx.report["macs_before"], ctx.decisions.keep)}
    report.update(ctx.report)
    return report
