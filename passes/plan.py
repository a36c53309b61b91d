from onnxfuse.planning import keep_count, top_k


class Plan:
    """How many channels each group keeps (uniform sparsity, round-to) and which (top-k)."""

    name = "plan"

    def run(self, ctx):
        opts = ctx.options
        for group in ctx.analysis.prunable:
            m = keep_count(group.width, opts.sparsity, opts.round_to)
            ctx.keep[group.id] = top_k(ctx.scores[group.id], m)
        return ctx
