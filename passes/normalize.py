from onnxfuse.graph.attention import normalize_attention
from onnxfuse.graph.convert import import_graph
from onnxfuse.graph.rewrites import normalize
from onnxfuse.graph.shapes import infer_shapes
from onnxfuse.pipeline.contract import Pass, register_pass


@register_pass
class Normalize(Pass):
    """Constant nodes → initializers, Identity removal, bias-Add and BN folding, shape inference;
    attention exports with heads on an axis of their own (graph/attention.py)."""

    name = "normalize"
    requires = ("model.original",)
    provides = ("model.graph",)

    def run(self, ctx):
        model = ctx.model
        graph = infer_shapes(import_graph(model.original, model.weights_dir), model.original)  # lets Shape ops fold
        ctx.report["normalize"] = normalize(graph, fold_bn=ctx.options.fold_bn)
        model.graph = infer_shapes(graph, model.original)
        ctx.report["normalize"] += normalize_attention(model.graph, model.original, ctx.options.fold_bn,
                                                       model.input_shapes)
