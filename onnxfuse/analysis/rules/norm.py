"""Normalisation layers: BatchNormalization, InstanceNormalization, LayerNormalization over the channel
axis, GroupNormalization and the TorchScript export of nn.GroupNorm (pruned per group like a grouped
conv: channel l of every group goes together, the group count stays; each group's statistics then
cover its remaining channels, which changes them as pruning changes any activation)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ...graph.legacy import batchnorm_not_per_channel
from ...graph.view import GraphView, node_label
from ..relations import Couple, Expand, Fixup, Freeze, Local, Member, Normalised
from .common import first_input, first_output, fix_reshape, norm_axis
from .registry import register_op_rule


@register_op_rule("BatchNormalization", "InstanceNormalization")
def batchnorm(node, tensor, axis, g: GraphView):
    """BatchNormalization / InstanceNormalization: per-channel parameters on axis 1."""
    x, y = first_input(node), first_output(node)
    if tensor is not x and tensor is not y:
        return []
    if node.op == "BatchNormalization" and (node.attrs.get("training_mode", 0) or len(node.outputs) > 1):
        return [Freeze((tensor.name, axis), f"BatchNormalization in training mode ({node_label(node)})")]
    if node.op == "BatchNormalization" and (reason := batchnorm_not_per_channel(node, g.opset)):
        return [Freeze((tensor.name, axis), f"{reason} ({node_label(node)})")]
    if node.op == "InstanceNormalization" and axis != 1:
        return [Freeze((tensor.name, axis), f"InstanceNormalization normalises axis {axis}")]
    relations = [Couple((x.name, axis), (y.name, axis))]
    if axis != 1:
        return relations
    params = node.inputs[1:]
    if not all(isinstance(p, gs.Constant) for p in params):
        return [Freeze((tensor.name, axis), f"{node.op} with computed parameters ({node_label(node)})")]
    # BatchNormalization inputs: X, scale, B, mean, var; InstanceNormalization: X, scale, B.
    roles = [("param", True), ("shift", False), ("shift", False), ("param", False)]
    for p, (role, scored) in zip(params, roles):
        relations.append(Member((x.name, 1), p.name, 0, role, node_label(node), scored))
    return relations


@register_op_rule("LayerNormalization")
def layernorm(node, tensor, axis, g: GraphView):
    """LayerNormalization over the channel axis alone (channels-last MLPs and transformers): its
    scale and bias follow the channels. Pruning changes the statistics it normalises with, as it
    changes any downstream activation; over several axes (C×H×W) it stays frozen."""
    x, y = first_input(node), first_output(node)
    if tensor is not x and tensor is not y:
        return []
    rank = g.rank(x)
    if rank is None:
        return [Freeze((tensor.name, axis), f"LayerNormalization of unknown rank ({node_label(node)})")]
    first = norm_axis(int(node.attrs.get("axis", -1)), rank)
    if axis < first:
        return [Couple((x.name, axis), (y.name, axis))]
    if first != rank - 1 or len(node.outputs) > 1 and any(not o.is_empty() for o in node.outputs[1:]):
        return [Freeze((tensor.name, axis), f"LayerNormalization over several axes ({node_label(node)})")]
    relations = [Couple((x.name, axis), (y.name, axis)), Normalised((x.name, axis), node_label(node))]
    for i, (role, scored) in ((1, ("param", True)), (2, ("shift", False))):
        p = g.input(node, i)
        if p is None:
            continue
        if not isinstance(p, gs.Constant) or p.values.ndim != 1:
            return [Freeze((tensor.name, axis), f"LayerNormalization with computed parameters ({node_label(node)})")]
        relations.append(Member((x.name, axis), p.name, 0, role, node_label(node), scored))
    return relations


def _per_group(x: gs.Tensor, y: gs.Tensor, groups: int, width: int) -> list:
    per = width // groups
    local = (f"{y.name}#per-group", 0)
    return [Couple((x.name, 1), (y.name, 1)), Local(local, per),
            Expand(local, (x.name, 1), np.arange(width).reshape(groups, per).T)]


@register_op_rule("com.microsoft.SkipLayerNormalization", "com.microsoft.SkipSimplifiedLayerNormalization")
def skip_layernorm(node, tensor, axis, g: GraphView):
    """ONNX Runtime's LayerNormalization(input + skip + bias) over the last axis, optionally also
    writing the sum (output 3): input, skip, the output and the sum share every axis; gamma scales,
    beta and bias shift the channels. Its mean and inverse deviation outputs read all channels."""
    x, y = first_input(node), first_output(node)
    rank = g.rank(x)
    if rank is None:
        return [Freeze((tensor.name, axis), f"{node.op} of unknown rank ({node_label(node)})")]
    label = node_label(node)
    axis = norm_axis(axis, g.rank(tensor) or rank) + rank - (g.rank(tensor) or rank)  # skip may lack batch axes
    tensors = [t for t in (x, g.input(node, 1), y, node.outputs[3] if len(node.outputs) > 3 else None)
               if t is not None and not t.is_empty()]
    relations = [Couple((x.name, axis), (t.name, axis - rank + g.rank(t))) for t in tensors[1:]
                 if g.rank(t) is not None and axis - rank + g.rank(t) >= 0]
    if axis != rank - 1:
        return relations
    if any(not o.is_empty() and o.outputs for o in node.outputs[1:3]):
        return [Freeze((tensor.name, axis), f"{node.op} with its statistics used ({label})")]
    simplified = node.op == "SkipSimplifiedLayerNormalization"
    relations.append(Normalised((x.name, axis), label))
    roles = [(2, "param", True)] + ([] if simplified else [(3, "shift", False)]) + [(3 if simplified else 4, "shift",
                                                                                     False)]
    for i, role, scored in roles:
        p = g.input(node, i)
        if p is None:
            continue
        if not isinstance(p, gs.Constant) or p.values.ndim != 1:
            return [Freeze((tensor.name, axis), f"{node.op} with computed parameters ({label})")]
        relations.append(Member((x.name, axis), p.name, 0, role, label, scored))
    return relations


@register_op_rule("com.microsoft.EmbedLayerNormalization")
def embed_layernorm(node, tensor, axis, g: GraphView):
    """ONNX Runtime's LayerNormalization(word[ids] + position[pos] + segment[seg]) of BERT-style
    encoders: the tables write the hidden channels (columns), gamma scales, beta shifts; the
    output and the optional embedding sum (output 2) share every axis."""
    y, label = first_output(node), node_label(node)
    outputs = [t for t in (y, node.outputs[2] if len(node.outputs) > 2 else None) if t is not None and not t.is_empty()]
    if tensor not in outputs:
        return []
    relations = [Couple((y.name, axis), (t.name, axis)) for t in outputs[1:]]
    if axis != (g.rank(y) or 0) - 1:
        return relations
    relations.append(Normalised((y.name, axis), label))
    roles = [(2, "producer", True), (3, "shift", False), (4, "shift", False), (5, "param", True), (6, "shift", False)]
    for i, role, scored in roles:
        p = g.input(node, i)
        if p is None:
            continue
        if not isinstance(p, gs.Constant):
            return [Freeze((tensor.name, axis), f"{node.op} with computed tables ({label})")]
        relations.append(Member((y.name, axis), p.name, p.values.ndim - 1, role, label, scored))
    return relations


@register_op_rule("GroupNormalization")
def group_normalization(node, tensor, axis, g: GraphView):
    """GroupNormalization: scale and bias are per group up to opset 20 (they stay), per channel
    from opset 21 (they follow the channels)."""
    x, y = first_input(node), first_output(node)
    if tensor is not x and tensor is not y:
        return []
    groups, width, label = int(node.attrs["num_groups"]), g.dim(x, 1), node_label(node)
    if axis != 1 or not isinstance(width, int) or width % groups:
        return [Freeze((tensor.name, axis), f"GroupNormalization over axis {axis} ({label})")]
    relations = _per_group(x, y, groups, width)
    if g.opset < 21:
        return relations
    for i, (role, scored) in ((1, ("param", True)), (2, ("shift", False))):
        p = node.inputs[i]
        if not isinstance(p, gs.Constant) or p.values.shape != (width,):
            return [Freeze((tensor.name, axis), f"GroupNormalization with computed parameters ({label})")]
        relations.append(Member((x.name, 1), p.name, 0, role, label, scored))
    return relations


@dataclass(frozen=True)
class _GroupNormPattern:
    first: gs.Node  # Reshape x (N, C, *S) → (N, G, C/G·S)
    second: gs.Node  # Reshape back to x's shape
    x: gs.Tensor
    y: gs.Tensor
    groups: int


def group_norm_pattern(node: gs.Node, g: GraphView) -> _GroupNormPattern | None:
    """The TorchScript exporter's nn.GroupNorm: Reshape(x, (0, G, -1)) → InstanceNormalization →
    Reshape to x's shape (then a per-channel Mul and Add, which the table handles), or None."""
    norm = _only_consumer(node.outputs[0])
    if norm is not None and norm.op == "InstanceNormalization":
        first, second = node, _only_consumer(norm.outputs[0])
    else:
        norm = _producer(node.inputs[0])
        first, second = (_producer(norm.inputs[0]) if norm is not None else None), node
    if norm is None or norm.op != "InstanceNormalization" or first is None or second is None \
            or first.op != "Reshape" or second.op != "Reshape" or not isinstance(first.inputs[1], gs.Constant):
        return None
    if _only_consumer(first.outputs[0]) is not norm or second.inputs[0] is not norm.outputs[0]:
        return None
    x, y = first.inputs[0], second.outputs[0]
    shape, flat = g.shape(x), g.shape(first.outputs[0])
    if shape is None or flat is None or len(shape) < 3 or len(flat) != 3 \
            or (g.shape(y) or [])[1:] != shape[1:]:
        return None
    if not all(isinstance(d, int) for d in shape[1:]) or not isinstance(flat[1], int):
        return None
    groups = flat[1]
    if shape[1] % groups or flat[2] != int(np.prod(shape[1:])) // groups:
        return None
    return _GroupNormPattern(first, second, x, y, groups)


def group_norm_reshapes(p: _GroupNormPattern, tensor, axis) -> list:
    if tensor is not p.x and tensor is not p.y:
        return []
    if axis != 1:
        return [Freeze((tensor.name, axis), f"group normalisation over axis {axis} ({node_label(p.first)})")]
    width = int(p.x.shape[1])
    relations = _per_group(p.x, p.y, p.groups, width)
    relations.append(Fixup(node_label(p.first), "group-norm", _fix_group_flat(p.x.name, width)))
    if isinstance(p.second.inputs[1], gs.Constant):
        relations.append(Fixup(node_label(p.second), "reshape", fix_reshape))
    return relations


def _fix_group_flat(x_name: str, width: int):
    def apply(node: gs.Node, new_width, new_index):
        shape = np.array(node.inputs[1].values)
        if shape[2] > 0:  # a fixed C/G·S (not -1): it shrinks with C
            shape[2] = shape[2] * new_width((x_name, 1)) // width
            node.inputs[1] = gs.Constant(f"{node.name}_shape", shape)
    return apply


def _only_consumer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.outputs[0] if len(tensor.outputs) == 1 else None


def _producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if len(tensor.inputs) == 1 else None
