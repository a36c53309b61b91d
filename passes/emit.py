import onnx
from onnx.external_data_helper import load_external_data_for_model

from onnxfuse.graph.convert import export_model
from onnxfuse.graph.io import TWO_GB
from onnxfuse.graph.metrics import count_macs, count_params
from onnxfuse.graph.shapes import infer_shapes, mac_graph
from onnxfuse.pipeline.contract import Pass, register_pass


@register_pass
class Emit(Pass):
    """Re-infer shapes, export with the original opsets, check fully, keep the same interface.
    The result proto takes over the weights: the graph's constants read them from it."""

    name = "emit"
    requires = ("model.original", "model.graph", "model.analysis")
    provides = ("model.result",)

    def run(self, ctx):
        model = ctx.model
        if not model.analysis.prunable:
            model.result = model.original  # nothing to prune: an unchanged copy
            if model.weights_dir:
                model.result = onnx.ModelProto()
                model.result.CopyFrom(model.original)
                load_external_data_for_model(model.result, model.weights_dir)
            ctx.report["params_after"] = ctx.report["params_before"]
            ctx.report["macs_after"] = ctx.report["macs_before"]
            return
        model.graph = infer_shapes(model.graph, model.original)
        result = export_model(model.graph, model.original, release=True)
        try:
            if result.ByteSize() < TWO_GB:  # the checker cannot take larger protos
                onnx.checker.check_model(result, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise RuntimeError(f"the compressed model fails the checker: {exc}") from exc
        _check_interface(model.original, result)
        model.result = result
        ctx.report["params_after"] = count_params(model.graph)
        ctx.report["macs_after"] = count_macs(mac_graph(model.graph, model.original, model.input_shapes))


def _check_interface(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    def names(model, kind):
        initializers = {t.name for t in model.graph.initializer}
        return [v.name for v in getattr(model.graph, kind) if v.name not in initializers]

    for kind in ("input", "output"):
        if names(before, kind) != names(after, kind):
            raise RuntimeError(f"graph {kind}s changed")
