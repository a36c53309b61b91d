from onnxfuse.data import random_inputs
from onnxfuse.latency import PROBE_RUNS, LatencyProbe
from onnxfuse.validate import compare


class Validate:
    """ONNX Runtime on the original and the result: validation data, else calibration data, else random."""

    name = "validate"

    def run(self, ctx):
        if ctx.options.target_latency is not None:
            self._latency(ctx)
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

    @staticmethod
    def _latency(ctx):
        """The result's latency against the original's, measured (not estimated), and said plainly."""
        opts = ctx.options
        probe = LatencyProbe(ctx.original, opts.device, opts.latency_batch, ctx.input_shapes, ctx.model_source)
        reached = probe.ratio(ctx.result, runs=3 * PROBE_RUNS)
        ctx.report["latency"] = {"target": opts.target_latency, "reached": round(reached, 4),
                                 "met": reached <= opts.target_latency, "batch": opts.latency_batch,
                                 "provider": probe.sess.get_providers()[0], "threads": probe.threads}
        verdict = "met" if reached <= opts.target_latency else "MISSED"
        ctx.log(f"latency: target {opts.target_latency:.3f}, reached {reached:.3f} of the original "
                f"at batch {opts.latency_batch} ({verdict})")
