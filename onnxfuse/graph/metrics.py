"""Parameter and MAC counts, at batch size 1, from a graph with inferred shapes."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .layouts import layout_of
from .view import node_label


def count_params(graph: gs.Graph) -> int:
    """Elements of the floating-point tensor constants (scalars, shapes and indices excluded)."""
    return int(sum(np.prod(t.shape) for t in graph.tensors().values()  # shapes: no values loaded
                   if isinstance(t, gs.Constant) and len(t.shape) > 0 and _floating(t.dtype)))


def _floating(dtype) -> bool:
    try:
        return np.issubdtype(np.dtype(dtype), np.floating)
    except TypeError:  # an ONNX type numpy does not know
        return False


def node_macs(graph: gs.Graph) -> dict[str, int]:
    return {node_label(n): _macs(n) for n in graph.nodes if _macs(n)}


def count_macs(graph: gs.Graph) -> int:
    return int(sum(node_macs(graph).values()))


def _static(shape) -> list[int] | None:
    """Shape with a symbolic batch (or other) dimension taken as 1; None if the rank is unknown."""
    if shape is None:
        return None
    return [d if isinstance(d, int) and d >= 0 else 1 for d in shape]


def _shape(tensor):
    return _static(None if tensor.shape is None else list(tensor.shape))  # constants: no values loaded


def _macs(node: gs.Node) -> int:
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
