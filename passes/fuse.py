from onnxfuse.channelmap import GroupMap, apply_maps
from onnxfuse.fusion import fusion_map
from onnxfuse.normalize import runnable


class Fuse:
    """Choose one map per group — a selection for `prune`, optimal transport for `fuse` — and
    apply it to every member."""

    name = "fuse"

    def run(self, ctx):
        tensors = ctx.graph.tensors()
        for group in ctx.analysis.prunable:
            if group.id not in ctx.keep:
                continue
            kept = ctx.keep[group.id]
            if ctx.options.method == "fuse":
                ctx.maps[group.id] = fusion_map(group, tensors, kept, ctx.scores[group.id], ctx.options.fusion,
                                                ctx.activations.get(group.id))
            else:
                ctx.maps[group.id] = GroupMap.selection(group.width, kept)
        if ctx.options.effective_repair != "none":
            ctx.before_fuse = runnable(ctx.graph, ctx.original)
        ctx.space_maps = apply_maps(ctx.graph, ctx.analysis, ctx.maps)
        return ctx
