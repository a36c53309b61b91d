import onnx

from onnxfuse.data import load_npz
from onnxfuse.graphio import check_model, load_model


class Load:
    """Read the model (path or ModelProto), the calibration data and the validation data."""

    name = "load"

    def run(self, ctx):
        if isinstance(ctx.source, onnx.ModelProto):
            check_model(ctx.source)
            ctx.original = ctx.source
        else:
            ctx.original = load_model(ctx.source)
        if ctx.options.calib:
            ctx.calib = load_npz(ctx.options.calib, ctx.original, ctx.options.labels_key)
        if ctx.options.data:
            ctx.data = load_npz(ctx.options.data, ctx.original, ctx.options.labels_key)
        return ctx
