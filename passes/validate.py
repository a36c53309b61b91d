from onnxfuse.calibration.data import random_inputs
from onnxfuse.log import info
from onnxfuse.pipeline.contract import Pass, register_pass
from onnxfuse.planning.latency import PROBE_RUNS, LatencyProbe
from onnxfuse.runtime.compare import compare


@register_pass
class Validate(Pass):
    """ONNX Runtime on the original and the result: validation data, else calibration data, else
    random inputs; with a latency target, the result's measured latency."""

    name = "validate"
    requires = ("model.original", "model.result")

    def run(self, ctx):
        opts, model, cal = ctx.options, ctx.model, ctx.calibration
        if opts.target_latency is not None:
            self._latency(ctx)
        if not opts.validate:
            return
        if cal.data is not None:
            data, source = cal.data, opts.data
        elif cal.calib is not None:
            data, source = cal.calib, f"{opts.calib} (calibration data)"
        else:
            data, source = random_inputs(model.original, seed=opts.seed, shapes=model.input_shapes), "random inputs"
        teacher, path = model.teacher  # the original of the whole run, also after --iterative rounds
        ctx.report["validation"] = compare(teacher, model.result, data, opts.device, original_path=path)
        ctx.report["validation"]["data"] = source

    @staticmethod
    def _latency(ctx):
        """The result's latency against the original's, measured (not estimated), and said plainly."""
        opts, model = ctx.options, ctx.model
        probe = LatencyProbe(model.original, opts.device, opts.latency_batch, model.input_shapes, model.model_source)
        reached = probe.ratio(model.result, runs=3 * PROBE_RUNS)
        ctx.report["latency"] = {"target": opts.target_latency, "reached": round(reached, 4),
                                 "met": reached <= opts.target_latency, "batch": opts.latency_batch,
                                 "provider": probe.sess.get_providers()[0], "threads": probe.threads}
        verdict = "met" if reached <= opts.target_latency else "MISSED"
        info(f"latency: target {opts.target_latency:.3f}, reached {reached:.3f} of the original "
             f"at batch {opts.latency_batch} ({verdict})")
