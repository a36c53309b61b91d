from onnxfuse.graph.convert import runnable
from onnxfuse.pipeline.contract import Pass, register_pass
from onnxfuse.repair import REPAIRS, RepairJob
from onnxfuse.runtime.compare import compare


@register_pass
class Repair(Pass):
    """With calibration data: the registered repair (stats: match every new channel's statistics to
    its sources'; lsq: refit the consumers of every shrunk group by least squares)."""

    name = "repair"
    requires = ("model.graph", "decisions.space_maps")

    def run(self, ctx):
        method, model, cal = ctx.options.repair, ctx.model, ctx.calibration
        if method == "none" or not ctx.decisions.space_maps.maps:
            return
        if ctx.options.validate and cal.data is not None:  # what the repair recovers, in the report
            ctx.report["validation_before_repair"] = compare(model.original, runnable(model.graph, model.original),
                                                             cal.data, ctx.options.device,
                                                             original_path=model.original_path)
        job = RepairJob(model.graph, model.original, model.before_fuse, model.analysis, ctx.decisions.space_maps,
                        cal.calib, ctx.options.seed, cal.original_outputs)
        ctx.report["repair"] = REPAIRS.get(method)(job)
