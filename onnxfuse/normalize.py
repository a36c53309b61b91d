"""Normalisation: bring an exported graph into the one form the analysis reads.

Constant nodes become initializers, Identity nodes go, every node gets a unique name, constants
shared by several nodes are unshared (so each can shrink with its own node), a Conv bias exported
as a separate Add is folded into the Conv, BatchNormalization after Conv/Gemm is folded with its
eps, and shapes are inferred.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx.external_data_helper import load_external_data_for_tensor
from onnx_graphsurgeon.importers.onnx_importer import get_itemsize, get_onnx_tensor_dtype, get_onnx_tensor_shape
from onnx_graphsurgeon.ir.tensor import LazyValues
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

from .errors import OnnxfuseError
from .graph import is_onnx_domain


def import_graph(model: onnx.ModelProto, weights_dir: str | None = None) -> gs.Graph:
    """The graph of `model`; initializers the proto keeps as external data are read from their
    files in `weights_dir` when first used (see ExternalValues)."""
    try:
        graph = gs.import_onnx(model)
    except Exception as exc:  # graphsurgeon raises plain exceptions on malformed graphs
        raise OnnxfuseError(f"cannot read the graph ({str(exc).splitlines()[0] if str(exc) else exc})") from None
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and isinstance(tensor._values, LazyValues) \
                and tensor._values.tensor.data_location == onnx.TensorProto.EXTERNAL:
            tensor._values = ExternalValues(tensor._values.tensor, weights_dir)
            tensor.data_location = None
    return graph


class ExternalValues(LazyValues):
    """A weight whose data stays in its external-data file: `tensor` reads it into a fresh proto
    each time it is asked for (graphsurgeon exports it so), `load` (the first access to the
    constant's values) into an array. Neither the model proto nor the graph holds a copy before."""

    def __init__(self, header: onnx.TensorProto, folder: str | None):
        self.header, self.folder = header, folder
        self.shape = get_onnx_tensor_shape(header)
        self.dtype = get_onnx_tensor_dtype(header)
        self.nbytes = int(np.prod(self.shape)) * get_itemsize(self.dtype)

    @property
    def tensor(self) -> onnx.TensorProto:
        if self.folder is None:
            raise OnnxfuseError(f"tensor {self.header.name}: external data, but no folder to read it from")
        loaded = onnx.TensorProto()
        loaded.CopyFrom(self.header)
        try:
            load_external_data_for_tensor(loaded, self.folder)
        except (OSError, ValueError) as exc:
            raise OnnxfuseError(f"cannot read external data of {self.header.name} ({exc})") from None
        loaded.ClearField("data_location")  # as if it had always been inline
        return loaded


def export_model(graph: gs.Graph, like: onnx.ModelProto, release: bool = False) -> onnx.ModelProto:
    """Export with the original model's opsets, IR version and metadata. Large weights are copied
    into the proto one at a time; with `release` each constant then reads its values from the
    proto (the graph drops its arrays), so the weights exist once."""
    stubbed = _export_structure(graph, like, _large)
    _fill_weights(stubbed, release)
    return stubbed.model


def _large(tensor: gs.Constant) -> bool:
    if isinstance(tensor._values, ExternalValues):
        return True
    return _nbytes(tensor) > LARGE and np.dtype(tensor.dtype).kind in "biufc"


class _Stubbed:
    def __init__(self, model: onnx.ModelProto, constants: dict[str, gs.Constant]):
        self.model, self.constants = model, constants


def _export_structure(graph: gs.Graph, like: onnx.ModelProto, stub) -> _Stubbed:
    """The model with every constant for which `stub(constant)` holds as a stub without data
    (an external-data entry that points nowhere)."""
    saved = {}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and tensor._export_dtype in (None, tensor.dtype) and stub(tensor):
            saved[tensor.name] = (tensor, tensor._values)
            tensor._values = LazyValues(_stub(tensor))
    try:
        model = _export(graph, like)
    finally:
        for tensor, values in saved.values():
            tensor._values = values
    return _Stubbed(model, {name: tensor for name, (tensor, _) in saved.items()})


def _fill_weights(stubbed: _Stubbed, release: bool) -> None:
    for init in stubbed.model.graph.initializer:
        tensor = stubbed.constants.get(init.name)
        if tensor is None:
            continue
        if isinstance(tensor._values, LazyValues):  # as graphsurgeon exports it: its proto
            init.CopyFrom(tensor._values.tensor)
            init.name = tensor.name
        else:
            init.ClearField("external_data")
            init.ClearField("data_location")
            init.raw_data = tensor.values.tobytes()
            if tensor.data_location is not None:
                init.data_location = tensor.data_location
        if release:
            tensor._values = LazyValues(init)


def _export(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    model = gs.export_onnx(graph, do_type_check=False)
    model.ir_version = like.ir_version
    del model.opset_import[:]
    model.opset_import.extend(like.opset_import)
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(model, field, getattr(like, field))
    del model.metadata_props[:]
    model.metadata_props.extend(like.metadata_props)
    _keep_interface_types(model, like)
    return model


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


def runnable(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """The graph as a model ONNX Runtime can run while its shapes are stale (no value_info)."""
    model = export_model(graph, like)
    del model.graph.value_info[:]
    return model


def _keep_interface_types(model: onnx.ModelProto, like: onnx.ModelProto) -> None:
    """Graph inputs and outputs keep their declared types (shape inference may rename symbolic
    dims); a static dimension that really changed is an error."""
    for kind in ("input", "output"):
        declared = {v.name: v for v in getattr(like.graph, kind)}
        for value in getattr(model.graph, kind):
            if value.name not in declared:
                continue
            old, new = declared[value.name].type.tensor_type, value.type.tensor_type
            if old.HasField("shape") and new.HasField("shape"):
                for a, b in zip(old.shape.dim, new.shape.dim):
                    if a.HasField("dim_value") and b.HasField("dim_value") and a.dim_value != b.dim_value:
                        raise RuntimeError(f"internal error: graph {kind} {value.name} changed shape")
            value.type.CopyFrom(declared[value.name].type)


def normalize(graph: gs.Graph, fold_bn: bool = True) -> list[str]:
    """Rewrite `graph` in place; returns a line per change for the report."""
    notes = []
    name_nodes(graph)
    notes += constant_nodes_to_initializers(graph)
    notes += fold_constant_subgraphs(graph)
    notes += remove_identities(graph)
    notes += unshare_constants(graph)
    notes += fold_bias_adds(graph)
    if fold_bn:
        notes += fold_batchnorms(graph)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return notes


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


LARGE = 4096  # bytes
WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm"}


def skeleton(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """The graph as a model whose large weights are stubs without data (external-data entries
    that point nowhere), so that shape inference never copies them. Only weights read by
    weighted ops alone: shape inference needs their shapes, not their values (ONNX Runtime's
    symbolic inference reads the values of other constants, e.g. an Add's)."""
    def weight(tensor: gs.Constant) -> bool:
        return _large(tensor) and tensor.outputs and all(n.op in WEIGHTED and n.inputs[0] is not tensor
                                                         for n in tensor.outputs)

    model = _export_structure(graph, like, weight).model
    del model.graph.value_info[:]
    return model


def _nbytes(tensor: gs.Constant) -> int:
    try:
        return int(np.prod(tensor.shape)) * np.dtype(tensor.dtype).itemsize
    except TypeError:  # a type numpy does not know: keep it
        return 0


def _stub(tensor: gs.Constant) -> onnx.TensorProto:
    if isinstance(tensor._values, ExternalValues):
        data_type = tensor._values.header.data_type
    elif isinstance(tensor._values, LazyValues):
        data_type = tensor._values.tensor.data_type
    else:
        data_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(tensor.dtype))
    stub = onnx.TensorProto(name=tensor.name, dims=list(tensor.shape), data_type=data_type,
                            data_location=onnx.TensorProto.EXTERNAL)
    stub.external_data.add(key="location", value="skeleton-without-data")
    return stub


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
# function without inference).
STAND_INS = {("com.microsoft", "FusedConv"): ("Conv", 3), ("com.microsoft", "FusedGemm"): ("Gemm", 3),
             ("", "GroupNormalization"): ("Identity", 1)}


def _stand_ins(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Replace those ops by their stand-ins in place; returns the originals by first output."""
    originals = {}
    for node in model.graph.node:
        if (node.domain, node.op_type) not in STAND_INS:
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
    try:
        symbolic = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # it raises assorted errors on ops it does not know; keep ONNX's result
        return inferred
    return symbolic if symbolic is not None else inferred


RESHAPING_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}


def _unresolved_reshapes(model: onnx.ModelProto) -> bool:
    shapes = {v.name: v.type.tensor_type for v in list(model.graph.value_info) + list(model.graph.output)}
    for node in model.graph.node:
        if node.op_type not in RESHAPING_OPS:
            continue
        tensor = shapes.get(node.output[0])
        if tensor is None or not tensor.HasField("shape"):
            return True
        if any(not d.HasField("dim_value") for d in list(tensor.shape.dim)[1:]):
            return True
    return False


def name_nodes(graph: gs.Graph) -> None:
    used = set()
    for i, node in enumerate(graph.nodes):
        name = node.name or f"{node.op}_{i}"
        while name in used:
            name = f"{name}_{i}"
        node.name = name
        used.add(name)


def constant_nodes_to_initializers(graph: gs.Graph) -> list[str]:
    count = 0
    for node in graph.nodes:
        if node.op != "Constant" or not is_onnx_domain(node):
            continue
        value = constant_node_value(node)
        if value is None:
            continue
        out = node.outputs[0]
        node.outputs.clear()
        out.to_constant(value)
        count += 1
    return [f"{count} Constant nodes turned into initializers"] if count else []


def constant_node_value(node: gs.Node):
    attrs = node.attrs
    if "value" in attrs:
        value = attrs["value"]
        return np.asarray(value.values) if isinstance(value, gs.Constant) else np.asarray(value)
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    return None


QUANTIZATION_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


def fold_constant_subgraphs(graph: gs.Graph) -> list[str]:
    """Evaluate nodes whose inputs are all constant (a Reshape of a bias, a Cast of weights, shape
    arithmetic on static shapes) with ONNX Runtime. Quantisation nodes are never folded: a quantised
    model must stay quantised."""
    before = len(graph.nodes)
    graph.fold_constants(error_ok=True, should_exclude_node=lambda node: node.op in QUANTIZATION_OPS)
    graph.cleanup(remove_unused_graph_inputs=False)
    folded = before - len(graph.nodes)
    return [f"{folded} nodes with constant inputs folded"] if folded > 0 else []


def remove_identities(graph: gs.Graph) -> list[str]:
    count = 0
    outputs = set(id(t) for t in graph.outputs)
    for node in list(graph.nodes):
        if node.op != "Identity" or not is_onnx_domain(node):
            continue
        src, dst = node.inputs[0], node.outputs[0]
        if id(dst) in outputs:
            if id(src) in outputs or src in graph.inputs or isinstance(src, gs.Constant) or len(src.outputs) > 1:
                continue  # keep: the graph output name must stay
            producer = src.inputs[0]
            producer.outputs[producer.outputs.index(src)] = dst
        else:
            for consumer in list(dst.outputs):
                consumer.inputs[consumer.inputs.index(dst)] = src
        node.inputs.clear()
        node.outputs.clear()
        count += 1
    return [f"{count} Identity nodes removed"] if count else []


def unshare_constants(graph: gs.Graph) -> list[str]:
    """A non-scalar constant read by several nodes gets one copy per extra reader."""
    count = 0
    for tensor in list(graph.tensors().values()):
        if not isinstance(tensor, gs.Constant) or np.prod(tensor.shape) <= 1 or len(tensor.outputs) <= 1:
            continue
        for node in list(tensor.outputs)[1:]:
            for i, inp in enumerate(node.inputs):
                if inp is tensor:
                    node.inputs[i] = gs.Constant(f"{tensor.name}__{node.name}", np.array(tensor.values))
                    count += 1
    return [f"{count} shared constants unshared"] if count else []


def _single_consumer(tensor: gs.Tensor, graph: gs.Graph) -> gs.Node | None:
    if len(tensor.outputs) != 1 or tensor in graph.outputs:
        return None
    return tensor.outputs[0]


def fold_bias_adds(graph: gs.Graph) -> list[str]:
    """Conv → Add(per-channel constant) becomes a Conv with a bias."""
    count = 0
    for conv in list(graph.nodes):
        if conv.op != "Conv" or not isinstance(conv.inputs[1], gs.Constant):
            continue
        add = _single_consumer(conv.outputs[0], graph)
        if add is None or add.op != "Add":
            continue
        other = [t for t in add.inputs if t is not conv.outputs[0]]
        if len(other) != 1 or not isinstance(other[0], gs.Constant):
            continue
        c_out = conv.inputs[1].values.shape[0]
        bias = _per_channel(np.asarray(other[0].values), c_out, rank=len(conv.inputs[1].values.shape))
        if bias is None:
            continue
        if len(conv.inputs) > 2 and not conv.inputs[2].is_empty():
            bias = bias + np.asarray(conv.inputs[2].values)
            conv.inputs[2] = gs.Constant(conv.inputs[2].name, bias.astype(conv.inputs[1].values.dtype))
        else:
            conv.inputs.append(gs.Constant(f"{conv.name}_bias", bias.astype(conv.inputs[1].values.dtype)))
        conv.outputs = list(add.outputs)
        add.outputs.clear()
        add.inputs.clear()
        count += 1
    return [f"{count} bias Adds folded into Conv"] if count else []


def _per_channel(value: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """A constant added to an NC... tensor, as a (channels,) vector, if it only varies per channel."""
    shape = value.shape
    if value.size == 1:
        return np.full(channels, value.reshape(()).item(), dtype=value.dtype)
    if len(shape) > rank or value.size != channels:
        return None
    padded = (1,) * (rank - len(shape)) + shape
    if padded[1] != channels:
        return None
    return value.reshape(channels)


def fold_batchnorms(graph: gs.Graph) -> list[str]:
    count = 0
    for node in list(graph.nodes):
        if node.op not in ("Conv", "ConvTranspose", "Gemm") or not isinstance(node.inputs[1], gs.Constant):
            continue
        bn = _single_consumer(node.outputs[0], graph)
        if bn is None or bn.op != "BatchNormalization" or len(bn.outputs) != 1 or bn.attrs.get("training_mode", 0):
            continue
        params = bn.inputs[1:5]
        if not all(isinstance(p, gs.Constant) for p in params):
            continue
        if node.op == "ConvTranspose" and int(node.attrs.get("group", 1)) != 1:
            continue
        if node.op == "Gemm" and int(node.attrs.get("transA", 0)):
            continue
        gamma, beta, mean, var = (np.asarray(p.values, dtype=np.float64) for p in params)
        scale = gamma / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
        _fold_scale_into(node, scale, beta - mean * scale)
        node.outputs = list(bn.outputs)
        bn.outputs.clear()
        bn.inputs.clear()
        count += 1
    return [f"{count} BatchNormalization folded into Conv/Gemm"] if count else []


def _fold_scale_into(node: gs.Node, scale: np.ndarray, shift: np.ndarray) -> None:
    w = node.inputs[1]
    values = np.asarray(w.values)
    out_axis = {"Conv": 0, "ConvTranspose": 1}.get(node.op, 0 if node.attrs.get("transB", 0) else 1)
    shape = [1] * values.ndim
    shape[out_axis] = -1
    w.values = (values.astype(np.float64) * scale.reshape(shape)).astype(values.dtype)
    has_bias = len(node.inputs) > 2 and not node.inputs[2].is_empty()
    bias = np.zeros_like(scale)
    if has_bias:
        if not isinstance(node.inputs[2], gs.Constant):
            raise OnnxfuseError(f"{node.name}: cannot fold BatchNormalization into a computed bias")
        old = np.asarray(node.inputs[2].values, dtype=np.float64)
        bias = np.broadcast_to(old.reshape(-1) if old.size == scale.size else old, scale.shape)
    if node.op == "Gemm":
        bias = bias * float(node.attrs.get("beta", 1.0))
        node.attrs["beta"] = 1.0
    new_bias = gs.Constant(f"{node.name}_bias", (bias * scale + shift).astype(values.dtype))
    if has_bias:
        node.inputs[2] = new_bias
    else:
        node.inputs.append(new_bias)
