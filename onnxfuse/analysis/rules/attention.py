"""Fused attention ops: ONNX Runtime's com.microsoft Attention (QKV projection inside the op),
MultiHeadAttention and GroupQueryAttention, and ai.onnx Attention (opset 23).

A head is a unit the op owns: a node-local space (analysis/relations.py: Local) whose channel h
expands into the features of head h in every tensor that holds them (Q, K and V, the packed
weight's columns and bias, the output), so a head is removed or merged whole and the head-count
attributes follow. With fewer KV heads than query heads (GQA) the unit is a KV group: one K/V head
and the query heads that read it. A KV cache (past/present), per-head masks and outputs that
expose the attention scores freeze the heads with the reason; batch and sequence axes pass through.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...graph.view import GraphView, node_label
from ..relations import Couple, Expand, Fixup, Freeze, Local, Member, Space, Within
from .registry import register_op_rule


def head_space(node: gs.Node) -> Space:
    """The node's own space of heads (KV groups under GQA)."""
    return (f"{node_label(node)}#heads", 0)


def blocks(units: int, per_unit: int, offset: int = 0) -> np.ndarray:
    """(units, per_unit) feature positions: unit u holds offset + u·per_unit … + per_unit − 1."""
    return offset + np.arange(units * per_unit).reshape(units, per_unit)


def _seeds(node: gs.Node, g: GraphView) -> list[Space]:
    return [(t.name, g.rank(t) - 1) for t in (node.inputs[0], node.outputs[0]) if g.rank(t)]


def _used(t: gs.Tensor | None, g: GraphView) -> bool:
    return t is not None and not t.is_empty() and (bool(t.outputs) or t.name in g.output_names)


def _sequence_axes(node, tensor, axis, g, inputs) -> list | None:
    """Batch (axis 0) ties every listed input to the output; the query's sequence (axis 1) is the
    output's. None when asked about a channel axis, [] for tensors the op reads as masks or lengths."""
    y = node.outputs[0]
    if tensor is not y and tensor not in inputs:
        return []
    if axis == (g.rank(tensor) or 0) - 1:
        return None
    if axis == 0:
        return [Couple((t.name, 0), (y.name, 0)) for t in inputs if g.rank(t)]
    if axis == 1 and (tensor is y or tensor is inputs[0]):
        return [Couple((inputs[0].name, 1), (y.name, 1))]
    return []


def _heads(node, units: int, flat: list[tuple[Space, np.ndarray]], fixup) -> list:
    space = head_space(node)
    return [Local(space, units), Fixup(node_label(node), "heads", fixup)] + \
        [Expand(space, target, index) for target, index in flat]


def _coordinates(node, qk: list[tuple[Space, np.ndarray]], v: list[tuple[Space, np.ndarray]], per: tuple[int, int]):
    """Within relations for the op's Q·Kᵀ side (Q and K columns of each unit) and its A·V side (V and
    the output), coordinate = column mod the head size; none with rotary embeddings, which pair
    coordinates up."""
    if node.attrs.get("do_rotary", 0):
        return []
    keys = [(f"{node_label(node)}#{side}", 0) for side in ("qk", "v")]
    return [Within(space, index, np.arange(index.shape[1]) % size, key)
            for key, side, size in zip(keys, (qk, v), per) for space, index in side]


def _cache_or_scores(node, g: GraphView, past: tuple[int, ...], extra_outputs: tuple[int, ...]) -> str | None:
    if any(g.input(node, i) is not None for i in past) or \
            any(i < len(node.outputs) and _used(node.outputs[i], g) for i in extra_outputs):
        return "with a KV cache or its scores used"
    return None


def _per_head_bias(node, g: GraphView, index: int, heads: int) -> tuple[list, str | None]:
    """An additive attention bias (…, H, S, T): a constant per-head one follows the heads, a
    broadcast one ties nothing, a computed per-head one freezes them."""
    bias = g.input(node, index)
    if bias is None or g.rank(bias) != 4 or g.dim(bias, 1) == 1:
        return [], None
    if isinstance(bias, gs.Constant) and g.dim(bias, 1) == heads:
        return [Member(head_space(node), bias.name, 1, "shift", node_label(node))], None
    return [], "with a computed per-head attention bias"


@register_op_rule("com.microsoft.Attention", seeds=_seeds)
def packed_attention(node, tensor, axis, g: GraphView):
    """x (B, S, C) · W (C, Q+K+V) + bias, split into num_heads heads, output (B, S, V): the packed
    weight's columns are a space of the node's own, head h its Q, K and V column blocks."""
    x, w, b, y = node.inputs[0], node.inputs[1], g.input(node, 2), node.outputs[0]
    label = node_label(node)
    passed = _sequence_axes(node, tensor, axis, g, [x])
    if passed is not None:
        return passed
    if not isinstance(w, gs.Constant) or w.values.ndim != 2 or b is not None and not isinstance(b, gs.Constant):
        return [Freeze((tensor.name, axis), f"Attention with computed weights ({label})")]
    if tensor is x:
        return [Member((x.name, axis), w.name, 0, "consumer", label, True)]
    heads = int(node.attrs.get("num_heads", 0))
    sizes = [int(s) for s in node.attrs.get("qkv_hidden_sizes", [w.values.shape[1] // 3] * 3)]
    reason = _cache_or_scores(node, g, (4,), (1,))
    bias_rels, bias_reason = _per_head_bias(node, g, 5, heads)
    reason = reason or bias_reason
    if reason or heads < 1 or sum(sizes) != w.values.shape[1] or any(s % heads for s in sizes):
        return [Freeze((y.name, axis), f"Attention {reason or 'whose sizes do not split into its heads'} ({label})")]
    per = [s // heads for s in sizes]
    parts = [blocks(heads, p, off) for p, off in zip(per, np.cumsum([0] + sizes[:2]))]
    columns = np.concatenate(parts, axis=1)
    packed = (w.name, 1)
    output = ((y.name, axis), blocks(heads, per[2]))
    within = _coordinates(node, [(packed, parts[0]), (packed, parts[1])], [(packed, parts[2]), output],
                          (per[0], per[2])) if per[0] == per[1] else []

    def fix(node, new_width, new_index):
        kept = new_width(head_space(node))
        node.attrs["num_heads"] = kept
        if "qkv_hidden_sizes" in node.attrs:
            node.attrs["qkv_hidden_sizes"] = [kept * p for p in per]

    return [Local(packed, sum(sizes)), Member(packed, w.name, 1, "producer", label, True)] + \
        ([Member(packed, b.name, 0, "shift", label)] if b is not None else []) + bias_rels + \
        _heads(node, heads, [(packed, columns), output], fix) + within


@register_op_rule("com.microsoft.MultiHeadAttention", seeds=_seeds)
def multi_head_attention(node, tensor, axis, g: GraphView):
    """Projected Q (B, S, H·D), K, V (B, L, H·D) and an optional packed bias (Q+K+V) in, output
    (B, S, H·Dv); the packed forms (QKV or KV in one input, K/V already split into heads) stay frozen."""
    q, k, v, b, y = node.inputs[0], g.input(node, 1), g.input(node, 2), g.input(node, 3), node.outputs[0]
    label = node_label(node)
    if k is None or v is None or any(g.rank(t) != 3 for t in (q, k, v)):
        return [Freeze((tensor.name, axis), f"MultiHeadAttention with packed or per-head inputs ({label})")]
    passed = _sequence_axes(node, tensor, axis, g, [q, k, v])
    if passed is not None:
        return passed + ([Couple((k.name, 1), (v.name, 1))] if tensor in (k, v) and axis == 1 else [])
    heads = int(node.attrs.get("num_heads", 0))
    widths = [g.dim(t, 2) for t in (q, k, v)]
    reason = _cache_or_scores(node, g, (6, 7), (1, 2, 3))
    bias_rels, bias_reason = _per_head_bias(node, g, 5, heads)
    reason = reason or bias_reason
    if b is not None and not isinstance(b, gs.Constant):
        reason = "with a computed bias"
    if reason or heads < 1 or not all(isinstance(d, int) and d % heads == 0 for d in widths):
        why = reason or "whose widths do not split into its heads"
        return [Freeze((tensor.name, axis), f"MultiHeadAttention {why} ({label})")]
    per = [d // heads for d in widths]
    flat = [((t.name, 2), blocks(heads, p)) for t, p in zip((q, k, v, y), per + per[2:])]
    qk, vo = flat[:2], flat[2:]
    extra = []
    if b is not None:
        packed = (b.name, 0)
        parts = [blocks(heads, p, off) for p, off in zip(per, np.cumsum([0] + widths[:2]))]
        flat.append((packed, np.concatenate(parts, axis=1)))
        extra = [Local(packed, sum(widths)), Member(packed, b.name, 0, "shift", label)]
        qk, vo = qk + [(packed, parts[0]), (packed, parts[1])], vo + [(packed, parts[2])]
    if per[0] == per[1]:
        extra += _coordinates(node, qk, vo, (per[0], per[2]))

    def fix(node, new_width, new_index):
        node.attrs["num_heads"] = new_width(head_space(node))

    return extra + bias_rels + _heads(node, heads, flat, fix)


@register_op_rule("com.microsoft.GroupQueryAttention", "Attention", seeds=_seeds)
def grouped_query_attention(node, tensor, axis, g: GraphView):
    """Q (B, S, Hq·D), K and V (B, L, Hkv·D) with Hq a multiple of Hkv (query head i reads KV head
    i // (Hq/Hkv)): the unit is a KV group. ONNX Runtime's GroupQueryAttention (num_heads,
    kv_num_heads; its present K/V and past inputs carry the KV heads on axis 1) and ai.onnx
    Attention in its 3-D form (q_num_heads, kv_num_heads); ai.onnx's 4-D form (B, H, S, D) keeps
    the heads on an axis of their own."""
    q, k, v, y = node.inputs[0], g.input(node, 1), g.input(node, 2), node.outputs[0]
    label = node_label(node)
    onnx_op = node.op == "Attention"
    if k is None or v is None:
        return [Freeze((tensor.name, axis), f"{node.op} with packed QKV ({label})")]
    if onnx_op and g.rank(q) == 4:
        return _attention_4d(node, tensor, axis, g)
    if any(g.rank(t) != 3 for t in (q, k, v)):
        return [Freeze((tensor.name, axis), f"{node.op} of unexpected rank ({label})")]
    passed = _sequence_axes(node, tensor, axis, g, [q, k, v])
    if passed is not None:
        return passed + ([Couple((k.name, 1), (v.name, 1))] if tensor in (k, v) and axis == 1 else [])
    names = ("q_num_heads", "kv_num_heads") if onnx_op else ("num_heads", "kv_num_heads")
    q_heads, kv_heads = (int(node.attrs.get(n, 0)) for n in names)
    widths = [g.dim(t, 2) for t in (q, k, v)]
    reason = _cache_or_scores(node, g, (4, 5) if onnx_op else (), (3,) if onnx_op else ())
    if not onnx_op and _used(g.input(node, 10), g):
        reason = "with an attention bias"
    if onnx_op and (mask := g.input(node, 3)) is not None and g.rank(mask) == 4 and g.dim(mask, 1) != 1:
        reason = "with a per-head mask"
    if reason or kv_heads < 1 or q_heads % kv_heads or \
            not all(isinstance(d, int) and d % h == 0 for d, h in zip(widths, (q_heads, kv_heads, kv_heads))):
        return [Freeze((tensor.name, axis), f"{node.op} {reason or 'whose widths do not split into its heads'} "
                                            f"({label})")]
    ratio, head_dim, value_dim = q_heads // kv_heads, widths[0] // q_heads, widths[2] // kv_heads
    flat = [((q.name, 2), blocks(kv_heads, ratio * head_dim)), ((k.name, 2), blocks(kv_heads, widths[1] // kv_heads)),
            ((v.name, 2), blocks(kv_heads, value_dim)), ((y.name, 2), blocks(kv_heads, ratio * value_dim))]
    within = _coordinates(node, flat[:2], flat[2:], (head_dim, value_dim)) if widths[1] // kv_heads == head_dim else []
    if not onnx_op:  # present K/V (B, Hkv, T, D), and past K/V when given: the KV heads on axis 1
        caches = [t for t in (g.input(node, 3), g.input(node, 4), *node.outputs[1:3]) if t is not None and
                  not t.is_empty() and g.rank(t) == 4]
        flat += [((t.name, 1), blocks(kv_heads, 1)) for t in caches]

    def fix(node, new_width, new_index):
        kept = new_width(head_space(node))
        node.attrs[names[0]], node.attrs[names[1]] = kept * ratio, kept

    return _heads(node, kv_heads, flat, fix) + within


def _attention_4d(node, tensor, axis, g: GraphView):
    """ai.onnx Attention on (B, H, S, D) tensors: the head axis 1 passes from K/V (KV heads) to Q and
    the output (query heads, Hq/Hkv per KV head); sequence and head-dim axes pair up as in the product."""
    q, k, v, y = node.inputs[0], node.inputs[1], node.inputs[2], node.outputs[0]
    label = node_label(node)
    if tensor not in (q, k, v, y):
        return []
    if g.rank(y) != 4 or _cache_or_scores(node, g, (4, 5), (3,)):
        return [Freeze((tensor.name, axis), f"Attention with a KV cache, its scores used or a 3-D output ({label})")]
    q_heads, kv_heads = g.dim(q, 1), g.dim(k, 1)
    if not (isinstance(q_heads, int) and isinstance(kv_heads, int)) or q_heads % kv_heads:
        return [Freeze((tensor.name, axis), f"Attention with unknown head counts ({label})")]
    if axis == 0:
        return [Couple((t.name, 0), (y.name, 0)) for t in (q, k, v)]
    if axis == 1:
        index = blocks(kv_heads, q_heads // kv_heads)
        return [Couple((k.name, 1), (v.name, 1)), Expand((k.name, 1), (q.name, 1), index),
                Expand((k.name, 1), (y.name, 1), index)]
    pairs = {2: [((q.name, 2), (y.name, 2)), ((k.name, 2), (v.name, 2))], 3: [((q.name, 3), (k.name, 3)),
                                                                                ((v.name, 3), (y.name, 3))]}
    return [Couple(a, b) for a, b in pairs[axis]]
