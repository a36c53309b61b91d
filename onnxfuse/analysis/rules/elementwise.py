"""Elementwise and channel-preserving ops: activations, broadcasting arithmetic, pools, reductions,
Softmax, Shape/Size."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...graph.legacy import channel_scale
from ...graph.view import GraphView, node_label
from ..relations import Couple, Fixup, Freeze, Member, Normalised
from .common import first_input, first_output, norm_axis
from .registry import register_op_rule

UNARY_OPS = ("Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Tanh", "Dropout", "Identity", "Elu",
             "Selu", "Celu", "Softplus", "Softsign", "Gelu", "Erf", "Mish", "Neg", "Abs", "Sqrt", "Exp", "Log",
             "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Cast", "ThresholdedRelu", "Swish", "Sin", "Cos")


@register_op_rule(*UNARY_OPS)
def unary(node, tensor, axis, g: GraphView):
    """Elementwise on the first input: every axis of input 0 is the same axis of output 0."""
    x, y = first_input(node), first_output(node)
    if tensor is not x and tensor is not y:
        return []  # a scalar side input (Clip min/max, Dropout ratio)
    return [Couple((x.name, axis), (y.name, axis))]


@register_op_rule("com.microsoft.BiasGelu", "com.microsoft.FastGelu", "com.microsoft.BiasAdd")
def bias_activation(node, tensor, axis, g: GraphView):
    """ONNX Runtime's fused activations: elementwise on input 0 plus a 1-D bias on the last axis
    (BiasAdd: plus a skip input of the same shape)."""
    x, y = first_input(node), first_output(node)
    rank = g.rank(x)
    bias = g.input(node, 1)
    if rank is None:
        return [Freeze((tensor.name, axis), f"{node.op} of unknown rank ({node_label(node)})")]
    relations = [Couple((x.name, axis), (y.name, axis))]
    skip = g.input(node, 2) if node.op == "BiasAdd" else None
    if skip is not None and g.rank(skip) == rank:
        relations.append(Couple((skip.name, axis), (y.name, axis)))
    if bias is not None and axis == rank - 1:
        if not isinstance(bias, gs.Constant) or bias.values.ndim != 1:
            return [Freeze((tensor.name, axis), f"{node.op} with a computed bias ({node_label(node)})")]
        relations.append(Member((y.name, axis), bias.name, 0, "shift", node_label(node)))
    return relations


@register_op_rule("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool", "Resize",
                  "Upsample")
def spatial_pool(node, tensor, axis, g: GraphView):
    """Pools, Resize, Upsample: batch and channel pass through, spatial axes change size."""
    x, y = first_input(node), first_output(node)
    if tensor is not x and tensor is not y:
        return []
    if axis != 1:
        return [Freeze((tensor.name, axis), f"{node.op} changes axis {axis} ({node_label(node)})")]
    if node.op in ("Resize", "Upsample") and (reason := _scales_channels(node, x, y, g)):
        return [Freeze((tensor.name, axis), f"{node.op} {reason} ({node_label(node)})")]
    relations = [Couple((x.name, 1), (y.name, 1))]
    if node.op == "Resize" and isinstance(g.input(node, 3), gs.Constant):
        relations.append(Fixup(node_label(node), "sizes", _fix_resize_sizes))  # a target size per axis
    return relations


def _scales_channels(node: gs.Node, x: gs.Tensor, y: gs.Tensor, g: GraphView) -> str | None:
    """Why a Resize/Upsample may not keep the channel axis as it is, or None."""
    scale = channel_scale(node, g.opset)
    if scale is not None:
        return None if scale == 1 else f"scales the channel axis by {scale:g}"
    before, after = g.dim(x, 1), g.dim(y, 1)
    if isinstance(before, int) and isinstance(after, int):
        return None if before == after else "changes the channel axis"
    return "with computed scales" if node.op == "Upsample" else None


def _fix_resize_sizes(node: gs.Node, new_width, new_index):
    sizes = np.array(node.inputs[3].values)
    sizes[1] = new_width((node.outputs[0].name, 1))
    node.inputs[3] = gs.Constant(f"{node.name}_sizes", sizes)


@register_op_rule("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2", "ReduceProd",
                  "ReduceLogSumExp", "ReduceSumSquare")
def reduce(node, tensor, axis, g: GraphView):
    x, y = first_input(node), first_output(node)
    if tensor is not x and tensor is not y:
        return []
    rank = g.rank(x)
    axes = g.int_list(node, "axes", 1)
    keepdims = int(node.attrs.get("keepdims", 1))
    if rank is None:
        return [Freeze((tensor.name, axis), f"unknown rank at {node_label(node)}")]
    if axes is None:
        if node.attrs.get("noop_with_empty_axes", 0):
            return [Couple((x.name, axis), (y.name, axis))] if tensor in (x, y) else []
        axes = list(range(rank))
    axes = sorted(norm_axis(a, rank) for a in axes)
    kept = [a for a in range(rank) if a not in axes]
    if keepdims:
        mapping = {a: a for a in kept}
    else:
        mapping = {a: i for i, a in enumerate(kept)}
    if tensor is x:
        if axis in axes:
            if keepdims and axes == [rank - 1] and _normalisation_statistic(node):
                return [Normalised((x.name, axis), node_label(node))]  # a LayerNorm written out
            return [Freeze((x.name, axis), f"{node.op} reduces over the channel axis ({node_label(node)})")]
        return [Couple((x.name, axis), (y.name, mapping[axis]))]
    inverse = {v: k for k, v in mapping.items()}
    if axis not in inverse:
        return [Freeze((y.name, axis), f"{node.op} output axis {axis} is reduced ({node_label(node)})")]
    return [Couple((x.name, inverse[axis]), (y.name, axis))]


def _normalisation_statistic(node: gs.Node) -> bool:
    """A ReduceMean that is a written-out LayerNorm's mean (its only reader subtracts it from its
    input) or variance (its input is the square of such a centred tensor)."""
    if node.op != "ReduceMean":
        return False
    x, y = node.inputs[0], node.outputs[0]
    if len(y.outputs) == 1 and y.outputs[0].op == "Sub" and list(y.outputs[0].inputs) == [x, y]:
        return True
    square = x.inputs[0] if x.inputs else None
    if square is None or not (square.op == "Pow" or square.op == "Mul" and square.inputs[0] is square.inputs[1]):
        return False
    centred = square.inputs[0]
    producer = centred.inputs[0] if centred.inputs else None
    return producer is not None and producer.op == "Sub" and producer.inputs[1].inputs and \
        producer.inputs[1].inputs[0].op == "ReduceMean" and producer.inputs[1].inputs[0].inputs[0] is producer.inputs[0]


ADDITIVE = {"Add", "Sub", "Sum"}


@register_op_rule("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Pow")
def broadcast(node, tensor, axis, g: GraphView):
    """Add/Sub/Mul/Div/Max/Min/...: numpy broadcasting couples inputs whose axis has full size."""
    y = first_output(node)
    out_rank = g.rank(y)
    if out_rank is None:
        return [Freeze((tensor.name, axis), f"unknown shape at {node_label(node)}")]
    if tensor is y:
        out_axis = axis
    else:
        out_axis = axis + out_rank - g.rank(tensor)
    width = g.dim(y, out_axis)
    relations = []
    for x in node.inputs:
        if x.is_empty():
            continue
        rank = g.rank(x)
        in_axis = out_axis - (out_rank - rank)
        if in_axis < 0:
            continue
        dim = g.dim(x, in_axis)
        if dim == 1 and width != 1:
            continue  # broadcast along this axis: couples nothing
        if dim != width or not isinstance(width, int):
            return [Freeze((tensor.name, axis), f"cannot match broadcast shapes at {node_label(node)}")]
        if isinstance(x, gs.Constant):
            role = "shift" if node.op in ADDITIVE else "param"
            relations.append(Member((y.name, out_axis), x.name, in_axis, role, node_label(node)))
        else:
            relations.append(Couple((x.name, in_axis), (y.name, out_axis)))
    return relations


@register_op_rule("PRelu")
def prelu(node, tensor, axis, g: GraphView):
    x, slope, y = node.inputs[0], node.inputs[1], first_output(node)
    if tensor is slope:
        return []
    relations = [Couple((x.name, axis), (y.name, axis))]
    rank, srank = g.rank(x), g.rank(slope)
    s_axis = axis - (rank - srank)
    if s_axis >= 0 and g.dim(slope, s_axis) not in (1, None):
        if not isinstance(slope, gs.Constant):
            return [Freeze((tensor.name, axis), f"PRelu with a computed slope ({node_label(node)})")]
        relations.append(Member((x.name, axis), slope.name, s_axis, "param", node_label(node)))
    return relations


@register_op_rule("Softmax", "LogSoftmax")
def softmax(node, tensor, axis, g: GraphView):
    x, y = first_input(node), first_output(node)
    rank = g.rank(x)
    default = -1 if g.opset >= 13 else 1
    sm_axis = norm_axis(int(node.attrs.get("axis", default)), rank)
    if axis == sm_axis or (g.opset < 13 and axis > sm_axis):
        return [Freeze((tensor.name, axis), f"{node.op} normalises over axis {axis} ({node_label(node)})")]
    return [Couple((x.name, axis), (y.name, axis))]


@register_op_rule("Shape", "Size")
def reads_shape_only(node, tensor, axis, g: GraphView):
    """Shape/Size read a tensor's shape at run time, so a narrower tensor just reads a new value."""
    return []
