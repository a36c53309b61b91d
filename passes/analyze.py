from onnxfuse.channels import analyze
from onnxfuse.metrics import count_macs, count_params, node_macs


class Analyze:
    """Channel spaces → groups of coupled channels, each prunable or frozen with a reason."""

    name = "analyze"

    def run(self, ctx):
        ctx.analysis = analyze(ctx.graph, ctx.options.ignore, node_macs(ctx.graph))
        ctx.report["params_before"] = count_params(ctx.graph)
        ctx.report["macs_before"] = count_macs(ctx.graph)
        return ctx
