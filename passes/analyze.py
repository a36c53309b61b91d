from onnxfuse.channels import analyze
from onnxfuse.metrics import count_params, node_macs
from onnxfuse.normalize import with_input_shapes


class Analyze:
    """Channel spaces → groups of coupled channels, each prunable or frozen with a reason."""

    name = "analyze"

    def run(self, ctx):
        macs = node_macs(mac_graph(ctx, ctx.graph))
        ctx.analysis = analyze(ctx.graph, ctx.options.ignore, macs)
        ctx.report["params_before"] = count_params(ctx.graph)
        ctx.report["macs_before"] = sum(macs.values())
        if ctx.input_shapes:
            ctx.report["mac_input_shapes"] = ctx.input_shapes
        return ctx


def mac_graph(ctx, graph):
    """The graph to count MACs on: with concrete input shapes where the model's are dynamic."""
    return with_input_shapes(graph, ctx.original, ctx.input_shapes) if ctx.input_shapes else graph
