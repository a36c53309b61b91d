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

from ..errors import OnnxfuseError
from .layouts import bias_values, layout_of, scale_output_rows, write_bias
from .legacy import batchnorm_not_per_channel
from .view import is_onnx_domain


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
        nodes = list({id(node): node for node in tensor.outputs}.values())
        readers = [(node, i) for node in nodes for i, t in enumerate(node.inputs) if t is tensor]
        for k, (node, i) in enumerate(readers[1:]):
            repeated = k > 0 and readers[k][0] is node  # one node reading it twice (a bias and a shift)
            name = f"{tensor.name}__{node.name}" + (f"_{i}" if repeated else "")
            node.inputs[i] = gs.Constant(name, np.array(tensor.values))
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
        if batchnorm_not_per_channel(bn, _opset(graph)):
            continue  # spatial=0, is_test=0: left as it is (the analysis freezes it)
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


def _opset(graph: gs.Graph) -> int:
    return int(graph.opset) if graph.opset else onnx.defs.onnx_opset_version()


def _fold_scale_into(node: gs.Node, scale: np.ndarray, shift: np.ndarray) -> None:
    layout = layout_of(node)
    dtype = np.asarray(node.inputs[1].values).dtype
    scale_output_rows(node, layout, scale)
    bias = bias_values(node, layout, len(scale))
    if bias is None:
        raise OnnxfuseError(f"{node.name}: cannot fold BatchNormalization into a computed bias")
    write_bias(node, layout, bias * scale + shift, dtype)
