from onnxfuse.methods.importance import IMPORTANCES, score_group
from onnxfuse.pipeline.contract import Pass, register_pass


@register_pass
class Score(Pass):
    """Per-channel importance of every prunable group (and of each candidate when the importance is
    a choice among several: choose_importance picks per group)."""

    name = "score"
    requires = ("model.graph", "model.analysis")
    provides = ("decisions.scores",)

    def run(self, ctx):
        name, decisions = ctx.options.importance, ctx.decisions
        decisions.scores = self.scores(ctx, name)
        choices = IMPORTANCES.get(name).choices
        decisions.choices = {choice: self.scores(ctx, choice) for choice in choices} if choices else None

    @staticmethod
    def scores(ctx, importance: str) -> dict:
        tensors = ctx.model.graph.tensors()
        activity = ctx.calibration.activity
        return {group.id: score_group(importance, group, tensors, ctx.options.seed, activity.get(group.id))
                for group in ctx.model.analysis.prunable}
