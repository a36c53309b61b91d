import onnx

from onnxfuse.errors import OnnxfuseError
from onnxfuse.metrics import count_macs, count_params
from onnxfuse.normalize import export_model, infer_shapes


class Emit:
    """Re-infer shapes, export with the original opsets, check fully, keep the same interface."""

    name = "emit"

    def run(self, ctx):
        ctx.graph = infer_shapes(ctx.graph, ctx.original)
        model = export_model(ctx.graph, ctx.original)
        try:
            onnx.checker.check_model(model, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise RuntimeError(f"internal error: the compressed model fails the checker: {exc}") from exc
        _check_interface(ctx.original, model)
        ctx.result = model
        ctx.report["params_after"] = count_params(ctx.graph)
        ctx.report["macs_after"] = count_macs(ctx.graph)
        return ctx


def _check_interface(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    for kind in ("input", "output"):
        old = [(v.name, v.type.SerializeToString()) for v in getattr(before.graph, kind)]
        new = [(v.name, v.type.SerializeToString()) for v in getattr(after.graph, kind)]
        init = {t.name for t in after.graph.initializer}
        if kind == "input":
            old = [v for v in old if v[0] not in {t.name for t in before.graph.initializer}]
            new = [v for v in new if v[0] not in init]
        if old != new:
            raise OnnxfuseError(f"internal error: graph {kind}s changed")
