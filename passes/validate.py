from onnxfuse.data import random_inputs
from onnxfuse.validate import compare


class Validate:
    """ONNX Runtime on the original and the result: validation data, else calibration data, else random."""

    name = "validate"

    def run(self, ctx):
        if not ctx.options.validate:
            return ctx
        if ctx.data is not None:
            data, source = ctx.data, ctx.options.data
        elif ctx.calib is not None:
            data, source = ctx.calib, f"{ctx.options.calib} (calibration data)"
        else:
            data, source = random_inputs(ctx.original, seed=ctx.options.seed, shapes=ctx.input_shapes), "random inputs"
        ctx.report["validation"] = compare(ctx.original, ctx.result, data, ctx.options.device,
                                           original_path=ctx.original_path)
        ctx.report["validation"]["data"] = source
        return ctx
