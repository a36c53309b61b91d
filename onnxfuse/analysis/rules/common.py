"""Helpers the op-rule families share."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs


def first_input(node: gs.Node) -> gs.Tensor:
    return node.inputs[0]


def first_output(node: gs.Node) -> gs.Tensor:
    return node.outputs[0]


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def replace_at(values, i, value):
    values = list(np.asarray(values).tolist())
    values[i] = value
    return values


def fix_reshape(node: gs.Node, new_width, new_index):
    shape = np.array(node.inputs[1].values)
    y = node.outputs[0]
    changed = False
    for j, value in enumerate(shape.tolist()):
        if value > 0:
            width = new_width((y.name, j))
            if width is not None and width != value:
                shape[j] = width
                changed = True
    if changed:
        node.inputs[1] = gs.Constant(f"{node.name}_shape", shape)
