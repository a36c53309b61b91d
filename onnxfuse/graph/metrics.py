"""Parameter and MAC counts, at batch size 1, from a graph with inferred shapes."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .layouts import is_packed_attention, layout_of
from .view import is_onnx_domain, node_label


def count_params(graph: gs.Graph) -> int:
    """Elements of the floating-point tensor constants (scalars, shapes and indices excluded)."""
    return int(sum(np.prod(t.shape) for t in graph.tensors().values()  # shapes: no values loaded
                   if isinstance(t, gs.Constant) and len(t.shape) > 0 and _floating(t.dtype)))


def _floating(dtype) -> bool:
    try:
        return np.issubdtype(np.dtype(dtype), np.floating)
    except TypeError:  # an ONNX type numpy does not know
        return False


PRODUCTS = "#products"  # suffix of a fused attention node's Q·Kᵀ and A·V MACs (they scale with the heads alone)


def node_macs(graph: gs.Graph) -> dict[str, int]:
    macs = {}
    for node in graph.nodes:
        for suffix, count in (("", _macs(node)), (PRODUCTS, _attention_products(node))):
            if count:
                macs[node_label(node) + suffix] = count
    return macs


def count_macs(graph: gs.Graph) -> int:
    return int(sum(node_macs(graph).values()))


def _static(shape) -> list[int] | None:
    """Shape with a symbolic batch (or other) dimension taken as 1; None if the rank is unknown."""
    if shape is None:
        return None
    return [d if isinstance(d, int) and d >= 0 else 1 for d in shape]


def _shape(tensor):
    return _static(None if tensor.shape is None else list(tensor.shape))  # constants: no values loaded


def is_fused_attention(node: gs.Node) -> bool:
    return node.op == "Attention" and is_onnx_domain(node) or \
        node.domain == "com.microsoft" and node.op in ("Attention", "MultiHeadAttention", "GroupQueryAttention")


def _packed_shapes(node: gs.Node):
    """(x, packed weight) shapes of a com.microsoft Attention (QKV projection inside the op), None
    when either is unknown."""
    x, w = _shape(node.inputs[0]), _shape(node.inputs[1])
    return None if x is None or w is None else (x, w)


def _attention_products(node: gs.Node) -> int:
    """Q·Kᵀ and A·V of a fused attention op: (elements of Q + of the output) × key length."""
    if not is_fused_attention(node):
        return 0
    y = _shape(node.outputs[0])
    if is_packed_attention(node):
        packed = _packed_shapes(node)
        if packed is None or y is None:
            return 0
        x, w = packed
        q_width = int(node.attrs.get("qkv_hidden_sizes", [w[-1] // 3])[0])
        return int((np.prod(x[:-1]) * q_width + np.prod(y)) * x[-2])
    q = _shape(node.inputs[0])
    k = _shape(node.inputs[1]) if len(node.inputs) > 1 and not node.inputs[1].is_empty() else None
    if q is None or k is None or y is None:
        return 0
    return int((np.prod(q) + np.prod(y)) * k[-2])


def _macs(node: gs.Node) -> int:
    if is_packed_attention(node):  # its QKV projection
        packed = _packed_shapes(node)
        return 0 if packed is None else int(np.prod(packed[0][:-1]) * np.prod(packed[1]))
    layout = layout_of(node)
    if layout is None or len(node.inputs) < 2:
        return 0
    op = layout.op
    x, w, y = _shape(node.inputs[0]), _shape(node.inputs[1]), _shape(node.outputs[0])
    if x is None or w is None or y is None or len(w) == 0:
        return 0
    if op == "Conv":
        # each output element reads (C_in / group) × kernel inputs
        return int(np.prod(y[1:]) * np.prod(w[1:]))
    if op == "ConvTranspose":
        return int(np.prod(x[1:]) * np.prod(w[1:]))
    if op == "Gemm":
        k = x[layout.data_axis] if layout.data_axis == 0 else x[-1]
        return int(np.prod(y) * k)
    return int(np.prod(y) * x[-1])
