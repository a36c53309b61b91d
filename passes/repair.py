from onnxfuse.lsq import repair_lsq
from onnxfuse.normalize import runnable
from onnxfuse.repair import repair_stats
from onnxfuse.validate import compare


class Repair:
    """With calibration data: match every new channel's statistics to its sources' (stats,
    REPAIR), or refit the consumers of every shrunk group by least squares (lsq)."""

    name = "repair"

    def run(self, ctx):
        method = ctx.options.effective_repair
        if method == "none" or not ctx.space_maps.maps:
            return ctx
        if ctx.options.validate and ctx.data is not None:  # what the repair recovers, in the report
            ctx.report["validation_before_repair"] = compare(ctx.original, runnable(ctx.graph, ctx.original), ctx.data,
                                                             ctx.options.device, original_path=ctx.original_path)
        repair = repair_stats if method == "stats" else repair_lsq
        ctx.report["repair"] = repair(ctx.graph, ctx.original, ctx.before_fuse, ctx.analysis, ctx.space_maps,
                                      ctx.calib, log=ctx.log)
        return ctx
