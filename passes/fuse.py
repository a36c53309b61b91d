from onnxfuse.graph.convert import runnable
from onnxfuse.methods import METHODS
from onnxfuse.methods.channelmap import apply_maps
from onnxfuse.pipeline.contract import Pass, register_pass


@register_pass
class Fuse(Pass):
    """One map per group from the registered method — a selection for `prune`, optimal transport for
    `fuse` — applied to every member through the one apply path."""

    name = "fuse"
    requires = ("model.graph", "model.analysis", "decisions.scores", "decisions.keep")
    provides = ("decisions.maps", "decisions.space_maps")

    def run(self, ctx):
        model, decisions, opts = ctx.model, ctx.decisions, ctx.options
        group_map = METHODS.get(opts.method).group_map
        tensors = model.graph.tensors()
        decisions.maps = {}
        for group in model.analysis.prunable:
            if group.id in decisions.keep:
                decisions.maps[group.id] = group_map(group, tensors, decisions.keep[group.id],
                                                     decisions.scores[group.id], opts,
                                                     ctx.calibration.activations.get(group.id))
        if opts.repair != "none":
            model.before_fuse = runnable(model.graph, model.original)
        decisions.space_maps = apply_maps(model.graph, model.analysis, decisions.maps)
