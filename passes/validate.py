from onnxfuse.data import random_inputs
from onnxfuse.validate import compare


class Validate:
    """ONNX Runtime on the original and the result, on the calibration data or random inputs."""

    name = "validate"

    def run(self, ctx):
        if not ctx.options.validate:
            return ctx
        data = ctx.calib if ctx.calib is not None else random_inputs(ctx.original, seed=ctx.options.seed)
        ctx.report["validation"] = compare(ctx.original, ctx.result, data, ctx.options.device)
        ctx.report["validation"]["data"] = "calibration set" if ctx.calib is not None else "random inputs"
        return ctx
