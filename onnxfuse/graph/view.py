"""A thin view over an onnx-graphsurgeon graph: shapes, constants, producers and consumers."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

Dim = int | str | None


class GraphView:
    """Read-only questions the op rules ask about a graph."""

    def __init__(self, graph: gs.Graph):
        self.graph = graph
        self.tensors: dict[str, gs.Tensor] = graph.tensors()
        self.input_names = {t.name for t in graph.inputs}
        self.output_names = {t.name for t in graph.outputs}
        self.opset = _default_opset(graph)

    def shape(self, tensor: gs.Tensor) -> list[Dim] | None:
        if isinstance(tensor, gs.Constant):
            return list(tensor.values.shape)
        return None if tensor.shape is None else list(tensor.shape)

    def rank(self, tensor: gs.Tensor) -> int | None:
        shape = self.shape(tensor)
        return None if shape is None else len(shape)

    def dim(self, tensor: gs.Tensor, axis: int) -> Dim:
        shape = self.shape(tensor)
        if shape is None or not -len(shape) <= axis < len(shape):
            return None
        return shape[axis]

    def const(self, tensor: gs.Tensor | None) -> np.ndarray | None:
        """The value of a constant tensor, or None for activations and omitted inputs."""
        if tensor is None or not isinstance(tensor, gs.Constant):
            return None
        return np.asarray(tensor.values)

    def input(self, node: gs.Node, i: int) -> gs.Tensor | None:
        if i >= len(node.inputs) or node.inputs[i].is_empty():
            return None
        return node.inputs[i]

    def int_list(self, node: gs.Node, attr: str, input_index: int) -> list[int] | None:
        """An integer list given as attribute (old opsets) or constant input (new opsets)."""
        if attr in node.attrs:
            return [int(v) for v in np.atleast_1d(node.attrs[attr])]
        value = self.const(self.input(node, input_index))
        return None if value is None else [int(v) for v in np.atleast_1d(value)]


def _default_opset(graph: gs.Graph) -> int:
    return int(graph.opset) if graph.opset else onnx.defs.onnx_opset_version()


def node_label(node: gs.Node) -> str:
    return node.name or f"<{node.op}>"


def is_onnx_domain(node: gs.Node) -> bool:
    return node.domain in (None, "", "ai.onnx")
