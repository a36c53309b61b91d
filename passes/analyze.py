from onnxfuse.analysis.channels import analyze
from onnxfuse.graph.metrics import count_params, node_macs
from onnxfuse.graph.shapes import mac_graph
from onnxfuse.pipeline.contract import Pass, register_pass


@register_pass
class Analyze(Pass):
    """Channel spaces → groups of coupled channels, each prunable or frozen with a reason."""

    name = "analyze"
    requires = ("model.graph",)
    provides = ("model.analysis",)

    def run(self, ctx):
        model = ctx.model
        macs = node_macs(mac_graph(model.graph, model.original, model.input_shapes))
        model.analysis = analyze(model.graph, ctx.options.ignore, macs)
        ctx.report["params_before"] = count_params(model.graph)
        ctx.report["macs_before"] = sum(macs.values())
        if model.input_shapes:
            ctx.report["mac_input_shapes"] = model.input_shapes
