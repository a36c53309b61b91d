from pathlib import Path

import onnx

from onnxfuse.data import has_dynamic_dims, load_calibration, load_npz, parse_input_shapes
from onnxfuse.graphio import check_model, has_external_data, load_model


class Load:
    """Read the model (path or ModelProto), the calibration data (.npz or image folder, at most
    calib_samples) and the validation data. Weights stored as external data stay in their files:
    the graph reads them from there (normalize), one at a time."""

    name = "load"

    def run(self, ctx):
        if isinstance(ctx.source, onnx.ModelProto):
            check_model(ctx.source)
            ctx.original = onnx.ModelProto()
            ctx.original.CopyFrom(ctx.source)  # the graph tools write into the protos they import
        else:
            ctx.original = load_model(ctx.source, external_data=False)
            if has_external_data(ctx.original):
                ctx.weights_dir = str(Path(ctx.source).parent)
        if ctx.options.calib and ctx.calib is None:  # probes of the allocator pass it in
            opts = ctx.options
            ctx.calib = load_calibration(opts.calib, ctx.original, opts.calib_samples, opts.seed, opts.preprocess,
                                         opts.labels_key, log=ctx.log)
        if ctx.options.data:
            ctx.data = load_npz(ctx.options.data, ctx.original, ctx.options.labels_key)
        ctx.input_shapes = parse_input_shapes(list(ctx.options.input_shape), ctx.original)
        example = ctx.data or ctx.calib
        if example is not None and has_dynamic_dims(ctx.original):
            for name, array in example.feeds.items():
                ctx.input_shapes.setdefault(name, [1, *array.shape[1:]])
        return ctx
