from onnxfuse.methods.importance import score_group
from onnxfuse.pipeline.contract import Pass, register_pass


@register_pass
class Score(Pass):
    """Per-channel importance of every prunable group."""

    name = "score"
    requires = ("model.graph", "model.analysis")
    provides = ("decisions.scores",)

    def run(self, ctx):
        tensors = ctx.model.graph.tensors()
        activity = ctx.calibration.activity
        ctx.decisions.scores = {group.id: score_group(ctx.options.importance, group, tensors, ctx.options.seed,
                                                      activity.get(group.id))
                                for group in ctx.model.analysis.prunable}
