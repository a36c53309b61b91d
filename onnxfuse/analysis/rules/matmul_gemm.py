"""Gemm and MatMul with a constant 2-D weight (and ONNX Runtime's FusedGemm)."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from ...graph.layouts import layout_of
from ...graph.view import GraphView, node_label
from ..relations import Couple, Freeze, Member
from .common import first_output
from .registry import register_op_rule, weighted_seeds


@register_op_rule("Gemm", "com.microsoft.FusedGemm", seeds=weighted_seeds)
def gemm(node, tensor, axis, g: GraphView):
    a, w, y = node.inputs[0], node.inputs[1], first_output(node)
    c = g.input(node, 2)
    label = node_label(node)
    if tensor is w or (tensor is c and isinstance(c, gs.Constant)):
        return []
    if not isinstance(w, gs.Constant):
        return [Freeze((tensor.name, axis), f"Gemm with computed weights ({label})")]
    layout = layout_of(node)
    if tensor is a:
        if axis != layout.data_axis:
            return [Freeze((a.name, axis), f"Gemm batch axis ({label})")]
        return [Member((a.name, axis), w.name, layout.in_axis, "consumer", label, True)]
    if tensor is y and axis != 1:
        return [Freeze((y.name, axis), f"Gemm batch axis ({label})")]
    relations = [Member((y.name, 1), w.name, layout.out_axis, "producer", label, True)]
    if c is not None:
        rank = g.rank(c)
        if g.dim(c, -1) not in (1, None) and rank is not None:
            if isinstance(c, gs.Constant):
                relations.append(Member((y.name, 1), c.name, rank - 1, "shift", label))
            else:
                relations.append(Couple((c.name, rank - 1), (y.name, 1)))
    return relations


@register_op_rule("MatMul", seeds=weighted_seeds)
def matmul(node, tensor, axis, g: GraphView):
    a, w, y = node.inputs[0], node.inputs[1], first_output(node)
    label = node_label(node)
    if tensor is w:
        return []
    rank = g.rank(a)
    if not isinstance(w, gs.Constant) and not isinstance(a, gs.Constant):
        return _activation_product(node, tensor, axis, g)
    if not isinstance(w, gs.Constant) or w.values.ndim != 2 or rank is None or rank < 2:
        return [Freeze((tensor.name, axis), f"MatMul without a constant 2-D weight ({label})")]
    last = rank - 1
    if axis != last:
        return [Couple((a.name, axis), (y.name, axis))]  # batch / token axes pass through
    if tensor is a:
        return [Member((a.name, last), w.name, layout_of(node).in_axis, "consumer", label, True)]
    return [Member((y.name, last), w.name, layout_of(node).out_axis, "producer", label, True)]


def _activation_product(node, tensor, axis, g: GraphView):
    """A · B of two activations (…, M, K) · (…, K, N) → (…, M, N), as in attention (Q·Kᵀ, A·V): the
    batch axes (heads among them) pass through where their sizes match, M and N go to the output,
    and A's K is B's K (the summed axis: both shrink together)."""
    a, b, y = node.inputs[0], node.inputs[1], first_output(node)
    ranks = [g.rank(t) for t in (a, b, y)]
    if None in ranks or min(ranks) < 2:
        return [Freeze((tensor.name, axis), f"MatMul of activations with unknown or 1-D shapes ({node_label(node)})")]
    ra, rb, ry = ranks
    if tensor is a and axis == ra - 1 or tensor is b and axis == rb - 2:
        return [Couple((a.name, ra - 1), (b.name, rb - 2))]
    if tensor is a and axis == ra - 2 or tensor is y and axis == ry - 2:
        return [Couple((a.name, ra - 2), (y.name, ry - 2))]
    if tensor is b and axis == rb - 1 or tensor is y and axis == ry - 1:
        return [Couple((b.name, rb - 1), (y.name, ry - 1))]
    out_axis = axis + ry - (ra if tensor is a else rb if tensor is b else ry)
    relations = []
    for t, r in ((a, ra), (b, rb)):
        t_axis = out_axis - (ry - r)
        if t_axis >= 0 and g.dim(t, t_axis) == g.dim(y, out_axis):  # a broadcast size-1 axis ties nothing
            relations.append(Couple((t.name, t_axis), (y.name, out_axis)))
    return relations or [Freeze((tensor.name, axis), f"MatMul broadcasts axis {axis} ({node_label(node)})")]
