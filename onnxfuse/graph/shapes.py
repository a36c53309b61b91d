"""Shape inference: ONNX's, then ONNX Runtime's symbolic inference where reshaped tensors stay
unresolved (shapes computed at run time)."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.importers.onnx_importer import get_onnx_tensor_dtype, get_onnx_tensor_shape
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

from ..errors import OnnxfuseError
from ..scratch import private_cwd
from .convert import import_graph, skeleton


def with_input_shapes(graph: gs.Graph, like: onnx.ModelProto, shapes: dict[str, list[int]]) -> gs.Graph:
    """A copy of the graph with these input shapes and shapes inferred from them (to count MACs of
    a model whose inputs have dynamic spatial dimensions)."""
    model = skeleton(graph, like)
    for value in model.graph.input:
        if value.name in shapes:
            dims = value.type.tensor_type.shape.dim
            if len(dims) != len(shapes[value.name]):
                raise OnnxfuseError(f"input shape {shapes[value.name]} for {value.name!r} has the wrong rank "
                                    f"(the model's input has rank {len(dims)})")
            for dim, size in zip(dims, shapes[value.name]):
                dim.Clear()
                dim.dim_value = int(size)
    return import_graph(_infer(model))


def infer_shapes(graph: gs.Graph, like: onnx.ModelProto) -> gs.Graph:
    """Fresh shape inference (stale shapes cleared first), written into `graph`; returns it."""
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and tensor not in graph.inputs and tensor not in graph.outputs:
            tensor.shape = None
            tensor.dtype = None if tensor.inputs else tensor.dtype
    inferred = _infer(skeleton(graph, like))
    infos = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for name, tensor in graph.tensors().items():
        if isinstance(tensor, gs.Variable) and name in infos:
            tensor.shape = get_onnx_tensor_shape(infos[name])
            tensor.dtype = get_onnx_tensor_dtype(infos[name])
    return graph


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference; where it leaves a reshaped tensor's non-batch dims unknown (shapes
    computed at run time: Shape → Gather → Concat → Reshape), ONNX Runtime's symbolic shape
    inference, which resolves them (it is much slower on large graphs, hence second)."""
    originals = _stand_ins(model)
    inferred = _infer_standard(model)
    for node in list(model.graph.node) + list(inferred.graph.node):
        if node.output and node.output[0] in originals:
            node.CopyFrom(originals[node.output[0]])
    return inferred


# Ops ONNX infers no shapes for, and a standard op whose output has the same shape: ONNX
# Runtime's fused ops (the activation and an added Z are elementwise), GroupNormalization-21 (a
# function without inference), GroupQueryAttention with separate K and V (its output is the
# query's shape; ONNX Runtime's symbolic inference gives up on it without a KV cache).
STAND_INS = {("com.microsoft", "FusedConv"): ("Conv", 3), ("com.microsoft", "FusedGemm"): ("Gemm", 3),
             ("", "GroupNormalization"): ("Identity", 1), ("com.microsoft", "GroupQueryAttention"): ("Identity", 1)}


def _stands_in(node: onnx.NodeProto) -> bool:
    if (node.domain, node.op_type) not in STAND_INS:
        return False
    return node.op_type != "GroupQueryAttention" or len(node.input) > 1 and bool(node.input[1])


def _stand_ins(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Replace those ops by their stand-ins in place; returns the originals by first output."""
    originals = {}
    for node in model.graph.node:
        if not _stands_in(node):
            continue
        originals[node.output[0]] = onnx.NodeProto()
        originals[node.output[0]].CopyFrom(node)
        node.domain, (node.op_type, inputs) = "", STAND_INS[(node.domain, node.op_type)]
        del node.input[inputs:]
        known = onnx.defs.get_schema(node.op_type).attributes
        kept = [a for a in node.attribute if a.name in known]
        del node.attribute[:]
        node.attribute.extend(kept)
    return originals


def _infer_standard(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        raise OnnxfuseError(f"shape inference failed: {str(exc).splitlines()[0]}") from None
    if not _unresolved_reshapes(inferred):
        return inferred
    try:  # where it stops short it saves the model (external data too) into the working directory
        with private_cwd():
            symbolic = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # it raises assorted errors on ops it does not know; keep ONNX's result
        return inferred
    return symbolic if symbolic is not None else inferred


RESHAPING_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}


def _unresolved_reshapes(model: onnx.ModelProto) -> bool:
    """A reshaped tensor with an unknown non-batch dim, or any output of an op outside ONNX's
    domain (ONNX Runtime's contrib ops, which only its symbolic inference knows) without a shape."""
    shapes = {v.name: v.type.tensor_type for v in list(model.graph.value_info) + list(model.graph.output)}
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") and node.output and node.output[0]:
            tensor = shapes.get(node.output[0])
            if tensor is None or not tensor.HasField("shape"):
                return True
        if node.op_type not in RESHAPING_OPS:
            continue
        tensor = shapes.get(node.output[0])
        if tensor is None or not tensor.HasField("shape"):
            return True
        if any(not d.HasField("dim_value") for d in list(tensor.shape.dim)[1:]):
            return True
    return False


def mac_graph(graph: gs.Graph, like: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> gs.Graph:
    """The graph to count MACs on: with concrete input shapes where the model's are dynamic."""
    return with_input_shapes(graph, like, input_shapes) if input_shapes else graph
