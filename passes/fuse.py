from onnxfuse.channelmap import GroupMap, apply_maps
from onnxfuse.errors import OnnxfuseError


class Fuse:
    """Choose one map per group (a selection for `prune`) and apply it to every member."""

    name = "fuse"

    def run(self, ctx):
        if ctx.options.method != "prune":
            raise OnnxfuseError(f"method {ctx.options.method!r} is not implemented yet; use --method prune")
        for group in ctx.analysis.prunable:
            ctx.maps[group.id] = GroupMap.selection(group.width, ctx.keep[group.id])
        apply_maps(ctx.graph, ctx.analysis, ctx.maps)
        return ctx
