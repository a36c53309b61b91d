from onnxfuse.repair import repair_stats


class Repair:
    """With calibration data: match every new channel's statistics to its sources' (REPAIR)."""

    name = "repair"

    def run(self, ctx):
        if ctx.options.effective_repair == "none" or not ctx.space_maps.maps:
            return ctx
        ctx.report["repair"] = repair_stats(ctx.graph, ctx.original, ctx.before_fuse, ctx.analysis, ctx.space_maps,
                                            ctx.calib, ctx.log)
        return ctx
