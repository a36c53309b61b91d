import onnx
from onnx.external_data_helper import load_external_data_for_model
from onnxfuse.passes.analyze import mac_graph

from onnxfuse.graphio import TWO_GB
from onnxfuse.metrics import count_macs, count_params
from onnxfuse.normalize import export_model, infer_shapes


class Emit:
    """Re-infer shapes, export with the original opsets, check fully, keep the same interface.
    The result proto takes over the weights: the graph's constants read them from it."""

    name = "emit"

    def run(self, ctx):
        if not ctx.analysis.prunable:
            ctx.result = ctx.original  # nothing to prune: an unchanged copy
            if ctx.weights_dir:
                ctx.result = onnx.ModelProto()
                ctx.result.CopyFrom(ctx.original)
                load_external_data_for_model(ctx.result, ctx.weights_dir)
            ctx.report["params_after"] = ctx.report["params_before"]
            ctx.report["macs_after"] = ctx.report["macs_before"]
            return ctx
        ctx.graph = infer_shapes(ctx.graph, ctx.original)
        model = export_model(ctx.graph, ctx.original, release=True)
        try:
            if model.ByteSize() < TWO_GB:  # the checker cannot take larger protos
                onnx.checker.check_model(model, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise RuntimeError(f"internal error: the compressed model fails the checker: {exc}") from exc
        _check_interface(ctx.original, model)
        ctx.result = model
        ctx.report["params_after"] = count_params(ctx.graph)
        ctx.report["macs_after"] = count_macs(mac_graph(ctx, ctx.graph))
        return ctx



def _check_interface(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    def names(model, kind):
        initializers = {t.name for t in model.graph.initializer}
        return [v.name for v in getattr(model.graph, kind) if v.name not in initializers]

    for kind in ("input", "output"):
        if names(before, kind) != names(after, kind):
            raise RuntimeError(f"internal error: graph {kind}s changed")
