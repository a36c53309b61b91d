from onnxfuse.importance import score_group


class Score:
    """Per-channel importance of every prunable group."""

    name = "score"

    def run(self, ctx):
        tensors = ctx.graph.tensors()
        for group in ctx.analysis.prunable:
            ctx.scores[group.id] = score_group(ctx.options.importance, group, tensors, ctx.options.seed,
                                              ctx.activity.get(group.id))
        return ctx
