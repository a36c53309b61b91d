"""Convolutions: regular, 1×1, grouped (per-group channels), depthwise (with a channel multiplier),
ConvTranspose, and ONNX Runtime's com.microsoft FusedConv."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...graph.layouts import layout_of
from ...graph.view import GraphView, node_label
from ..relations import Couple, Expand, Fixup, Freeze, Local, Member
from .common import first_output
from .registry import register_op_rule, weighted_seeds


@register_op_rule("Conv", "ConvTranspose", seeds=weighted_seeds)
def conv(node, tensor, axis, g: GraphView):
    x, w, y = node.inputs[0], node.inputs[1], first_output(node)
    b = g.input(node, 2)
    label = node_label(node)
    if tensor is w or tensor is b:
        return []
    if not isinstance(w, gs.Constant) or (b is not None and not isinstance(b, gs.Constant)):
        return [Freeze((tensor.name, axis), f"{node.op} with computed weights ({label})")]
    if axis != 1:
        return [Freeze((tensor.name, axis), f"{node.op} axis {axis} is not a channel axis ({label})")]
    transposed = node.op == "ConvTranspose"
    groups = int(node.attrs.get("group", 1))
    c_in = g.dim(x, 1)
    c_out = g.dim(y, 1)
    layout = layout_of(node)
    if groups == 1:
        bias = [Member((y.name, 1), b.name, 0, "shift", label)] if b is not None else []
        if tensor is y:
            return [Member((y.name, 1), w.name, layout.out_axis, "producer", label, True)] + bias
        return [Member((x.name, 1), w.name, layout.in_axis, "consumer", label, True)]
    if groups == c_in and isinstance(c_out, int) and c_out % c_in == 0:
        multiplier = c_out // c_in
        if not transposed or multiplier == 1:
            return _depthwise(x, w, y, b, c_in, multiplier, label)
    if not transposed and isinstance(c_in, int) and isinstance(c_out, int) and c_in % groups == 0 \
            and c_out % groups == 0:
        return _grouped(x, w, y, b, groups, c_in, c_out, label)
    return [Freeze((tensor.name, 1), f"grouped {node.op} with group={groups} ({label})")]


def _grouped(x, w, y, b, groups, c_in, c_out, label):
    """Grouped conv (1 < group < channels): pruning keeps the group count, so channel l of every
    group goes together, on the input side (the weight's per-group input axis is their space) and
    on the output side (output channels at the same place in each group form one channel)."""
    local_in = (w.name, 1)
    per_in, per_out = c_in // groups, c_out // groups
    in_index = np.arange(c_in).reshape(groups, per_in).T  # local channel l → l + k·per_in
    out_index = np.arange(c_out).reshape(groups, per_out).T
    out_local = (f"{y.name}#per-group", 0)
    return [Local(local_in, per_in), Expand(local_in, (x.name, 1), in_index),
            Local(out_local, per_out), Expand(out_local, (y.name, 1), out_index),
            Member(local_in, w.name, 1, "consumer", label, True),
            Member((y.name, 1), w.name, 0, "producer", label, True)] + \
        ([Member((y.name, 1), b.name, 0, "shift", label)] if b is not None else [])


def _depthwise(x, w, y, b, c_in, multiplier, label):
    """Depthwise conv: each input channel owns `multiplier` output channels and their kernels."""
    relations = []
    if multiplier == 1:
        relations.append(Couple((x.name, 1), (y.name, 1)))
    else:
        index = np.arange(c_in * multiplier).reshape(c_in, multiplier)
        relations.append(Expand((x.name, 1), (y.name, 1), index))
    relations.append(Member((y.name, 1), w.name, 0, "param", label, True))
    if b is not None:
        relations.append(Member((y.name, 1), b.name, 0, "shift", label))
    relations.append(Fixup(label, "group", _fix_group))
    return relations


def _fix_group(node: gs.Node, new_width, new_index):
    node.attrs["group"] = int(new_width((node.inputs[0].name, 1)))


@register_op_rule("com.microsoft.FusedConv", seeds=weighted_seeds)
def fused_conv(node, tensor, axis, g: GraphView):
    """ONNX Runtime's com.microsoft FusedConv (in models it saves optimised): a Conv, plus an
    optional 4th input Z added before the elementwise activation, coupled like a residual Add."""
    z, y = g.input(node, 3), first_output(node)
    if z is None:
        return conv(node, tensor, axis, g)
    if axis != 1:
        return [Freeze((tensor.name, axis), f"FusedConv axis {axis} is not a channel axis ({node_label(node)})")]
    coupled = Couple((z.name, 1), (y.name, 1))
    return [coupled] if tensor is z else conv(node, tensor, axis, g) + [coupled]
