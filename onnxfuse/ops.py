"""The op table: how each ONNX op ties the channel spaces of its inputs and outputs together.

A channel space is one axis of one tensor, written `(tensor_name, axis)`. The analysis visits a
space and asks every node that produces or consumes its tensor, through `OP_RULES[node.op]`, how
that axis relates to the axes of the node's other tensors. A rule answers with relations:

- `Couple(a, b)`: same width, channel i of a is channel i of b (elementwise ops, residual adds).
- `Offset(whole, part, start)`: part[i] is whole[start + i] (Concat, Split, Slice).
- `Expand(channel, flat, index)`: channel c of `channel` is the features `index[c, :]` of `flat`
  (Flatten/Reshape of C×H×W into one axis, depthwise convs with a channel multiplier).
- `Member(space, tensor, axis, role)`: a constant whose `axis` runs over the space and must be
  rewritten when the space shrinks. Roles: `producer` (weight rows that write the channel),
  `shift` (values added to the channel: biases, BN mean and shift, additive constants),
  `consumer` (input columns) and `param` (per-channel multiplicative factors: BN scale/var,
  PRelu slopes, depthwise kernels).
  `scored` members count in magnitude importance (the Torch-Pruning definition: weights and BN
  scales, no biases).
- `Local(space, width)`: a channel space of one node's own (a grouped conv's per-group channels).
- `Freeze(space, reason)`: the space must keep all its channels.
- `Fixup(node, key, apply)`: an attribute or shape constant recomputed from the new widths.

An op missing from the table freezes every space that reaches it: unknown means frozen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from .graph import GraphView, is_onnx_domain, node_label

Space = tuple[str, int]


@dataclass(frozen=True)
class Couple:
    a: Space
    b: Space


@dataclass(frozen=True)
class Offset:
    whole: Space
    part: Space
    start: int


@dataclass(frozen=True, eq=False)
class Expand:
    channel: Space
    flat: Space
    index: np.ndarray  # (channels, features per channel) positions in `flat`

    def key(self):
        return ("expand", self.channel, self.flat)


@dataclass(frozen=True)
class Member:
    space: Space
    tensor: str
    axis: int
    role: str  # producer | shift | consumer | param
    node: str
    scored: bool = False


@dataclass(frozen=True)
class Local:
    """A channel space that belongs to one node (a grouped conv's per-group channels), tied to
    activations by Expand relations and explored no further."""

    space: Space
    width: int


@dataclass(frozen=True)
class Freeze:
    space: Space
    reason: str


@dataclass(frozen=True, eq=False)
class Fixup:
    node: str
    key: str
    apply: Callable = field(compare=False)  # apply(node, new_width: Callable[[Space], int], new_index)

    def dedupe_key(self):
        return ("fixup", self.node, self.key)


Relation = Couple | Offset | Expand | Member | Local | Freeze | Fixup


def _data_in(node: gs.Node) -> gs.Tensor:
    return node.inputs[0]


def _out(node: gs.Node) -> gs.Tensor:
    return node.outputs[0]


def _norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# --------------------------------------------------------------------------------------------
# elementwise and channel-preserving ops


def unary(node, tensor, axis, g: GraphView):
    """Elementwise on the first input: every axis of input 0 is the same axis of output 0."""
    x, y = _data_in(node), _out(node)
    if tensor is not x and tensor is not y:
        return []  # a scalar side input (Clip min/max, Dropout ratio)
    return [Couple((x.name, axis), (y.name, axis))]


def spatial_pool(node, tensor, axis, g: GraphView):
    """Pools, Resize, Upsample: batch and channel pass through, spatial axes change size."""
    x, y = _data_in(node), _out(node)
    if tensor is not x and tensor is not y:
        return []
    if axis != 1:
        return [Freeze((tensor.name, axis), f"{node.op} changes axis {axis} ({node_label(node)})")]
    relations = [Couple((x.name, 1), (y.name, 1))]
    if node.op == "Resize" and isinstance(g.input(node, 3), gs.Constant):
        relations.append(Fixup(node_label(node), "sizes", _fix_resize_sizes))  # a target size per axis
    return relations


def _fix_resize_sizes(node: gs.Node, new_width, new_index):
    sizes = np.array(node.inputs[3].values)
    sizes[1] = new_width((node.outputs[0].name, 1))
    node.inputs[3] = gs.Constant(f"{node.name}_sizes", sizes)


def reduce(node, tensor, axis, g: GraphView):
    x, y = _data_in(node), _out(node)
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
    axes = sorted(_norm_axis(a, rank) for a in axes)
    kept = [a for a in range(rank) if a not in axes]
    if keepdims:
        mapping = {a: a for a in kept}
    else:
        mapping = {a: i for i, a in enumerate(kept)}
    if tensor is x:
        if axis in axes:
            return [Freeze((x.name, axis), f"{node.op} reduces over the channel axis ({node_label(node)})")]
        return [Couple((x.name, axis), (y.name, mapping[axis]))]
    inverse = {v: k for k, v in mapping.items()}
    if axis not in inverse:
        return [Freeze((y.name, axis), f"{node.op} output axis {axis} is reduced ({node_label(node)})")]
    return [Couple((x.name, inverse[axis]), (y.name, axis))]


ADDITIVE = {"Add", "Sub", "Sum"}


def broadcast(node, tensor, axis, g: GraphView):
    """Add/Sub/Mul/Div/Max/Min/...: numpy broadcasting couples inputs whose axis has full size."""
    y = _out(node)
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


def prelu(node, tensor, axis, g: GraphView):
    x, slope, y = node.inputs[0], node.inputs[1], _out(node)
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


def batchnorm(node, tensor, axis, g: GraphView):
    """BatchNormalization / InstanceNormalization: per-channel parameters on axis 1."""
    x, y = _data_in(node), _out(node)
    if tensor is not x and tensor is not y:
        return []
    if node.op == "BatchNormalization" and (node.attrs.get("training_mode", 0) or len(node.outputs) > 1):
        return [Freeze((tensor.name, axis), f"BatchNormalization in training mode ({node_label(node)})")]
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


def layernorm(node, tensor, axis, g: GraphView):
    """LayerNormalization over the channel axis alone (channels-last MLPs and transformers): its
    scale and bias follow the channels. Pruning changes the statistics it normalises with, as it
    changes any downstream activation; over several axes (C×H×W) it stays frozen."""
    x, y = _data_in(node), _out(node)
    if tensor is not x and tensor is not y:
        return []
    rank = g.rank(x)
    first = _norm_axis(int(node.attrs.get("axis", -1)), rank)
    if axis < first:
        return [Couple((x.name, axis), (y.name, axis))]
    if first != rank - 1 or len(node.outputs) > 1 and any(not o.is_empty() for o in node.outputs[1:]):
        return [Freeze((tensor.name, axis), f"LayerNormalization over several axes ({node_label(node)})")]
    relations = [Couple((x.name, axis), (y.name, axis))]
    for i, (role, scored) in ((1, ("param", True)), (2, ("shift", False))):
        p = g.input(node, i)
        if p is None:
            continue
        if not isinstance(p, gs.Constant) or p.values.ndim != 1:
            return [Freeze((tensor.name, axis), f"LayerNormalization with computed parameters ({node_label(node)})")]
        relations.append(Member((x.name, axis), p.name, 0, role, node_label(node), scored))
    return relations


def transpose(node, tensor, axis, g: GraphView):
    x, y = _data_in(node), _out(node)
    rank = g.rank(x)
    perm = node.attrs.get("perm") or list(reversed(range(rank or 0)))
    if tensor is x:
        return [Couple((x.name, axis), (y.name, list(perm).index(axis)))]
    return [Couple((x.name, perm[axis]), (y.name, axis))]


def squeeze_like(node, tensor, axis, g: GraphView):
    """Squeeze / Unsqueeze: axes are renumbered; the squeezed size-1 axes never carry channels."""
    x, y = _data_in(node), _out(node)
    if tensor is not x and tensor is not y:
        return []
    in_rank, out_rank = g.rank(x), g.rank(y)
    axes = g.int_list(node, "axes", 1)
    if in_rank is None or out_rank is None or axes is None:
        return [Freeze((tensor.name, axis), f"{node.op} with unknown axes ({node_label(node)})")]
    if node.op == "Squeeze":
        gone = {_norm_axis(a, in_rank) for a in axes}
        in_axes = [a for a in range(in_rank) if a not in gone]
        out_axes = list(range(out_rank))
    else:
        added = {_norm_axis(a, out_rank) for a in axes}
        in_axes = list(range(in_rank))
        out_axes = [a for a in range(out_rank) if a not in added]
    pairs = dict(zip(in_axes, out_axes))
    if tensor is x:
        if axis not in pairs:
            return [Freeze((x.name, axis), f"{node.op} removes axis {axis}")]
        return [Couple((x.name, axis), (y.name, pairs[axis]))]
    inverse = {v: k for k, v in pairs.items()}
    if axis not in inverse:
        return [Freeze((y.name, axis), f"{node.op} adds axis {axis}")]
    return [Couple((x.name, inverse[axis]), (y.name, axis))]


def pad(node, tensor, axis, g: GraphView):
    x, y = _data_in(node), _out(node)
    if tensor is not x and tensor is not y:
        return []
    pads = g.int_list(node, "pads", 1)
    rank = g.rank(x)
    axes = g.int_list(node, "axes", 3) if len(node.inputs) > 3 else None
    if pads is None or rank is None:
        return [Freeze((tensor.name, axis), f"Pad with computed pads ({node_label(node)})")]
    axes = [_norm_axis(a, rank) for a in axes] if axes else list(range(rank))
    n = len(axes)
    padded = {a: (pads[i], pads[i + n]) for i, a in enumerate(axes)}
    if padded.get(axis, (0, 0)) != (0, 0):
        return [Freeze((tensor.name, axis), f"Pad pads the channel axis ({node_label(node)})")]
    return [Couple((x.name, axis), (y.name, axis))]


def softmax(node, tensor, axis, g: GraphView):
    x, y = _data_in(node), _out(node)
    rank = g.rank(x)
    default = -1 if g.opset >= 13 else 1
    sm_axis = _norm_axis(int(node.attrs.get("axis", default)), rank)
    if axis == sm_axis or (g.opset < 13 and axis > sm_axis):
        return [Freeze((tensor.name, axis), f"{node.op} normalises over axis {axis} ({node_label(node)})")]
    return [Couple((x.name, axis), (y.name, axis))]


def reads_shape_only(node, tensor, axis, g: GraphView):
    """Shape/Size read a tensor's shape at run time, so a narrower tensor just reads a new value."""
    return []


# --------------------------------------------------------------------------------------------
# concatenation and slicing on the channel axis


def concat(node, tensor, axis, g: GraphView):
    y = _out(node)
    rank = g.rank(y)
    cat_axis = _norm_axis(int(node.attrs["axis"]), rank)
    inputs = [t for t in node.inputs if not t.is_empty()]
    if axis != cat_axis:
        return [Couple((t.name, axis), (y.name, axis)) for t in inputs]
    relations, start = [], 0
    for t in inputs:
        width = g.dim(t, cat_axis)
        if not isinstance(width, int):
            return [Freeze((tensor.name, axis), f"Concat input with unknown width ({node_label(node)})")]
        relations.append(Offset((y.name, cat_axis), (t.name, cat_axis), start))
        start += width
    return relations


def split(node, tensor, axis, g: GraphView):
    x = _data_in(node)
    rank = g.rank(x)
    split_axis = _norm_axis(int(node.attrs.get("axis", 0)), rank)
    outputs = list(node.outputs)
    if axis != split_axis:
        return [Couple((x.name, axis), (y.name, axis)) for y in outputs]
    widths = [g.dim(y, split_axis) for y in outputs]
    if not all(isinstance(w, int) for w in widths):
        return [Freeze((tensor.name, axis), f"Split with unknown output widths ({node_label(node)})")]
    relations, start = [], 0
    for y, width in zip(outputs, widths):
        relations.append(Offset((x.name, split_axis), (y.name, split_axis), start))
        start += width
    relations.append(Fixup(node_label(node), "split", _fix_split(split_axis)))
    return relations


def _fix_split(split_axis: int):
    def apply(node: gs.Node, new_width, new_index):
        sizes = np.array([new_width((y.name, split_axis)) for y in node.outputs], dtype=np.int64)
        if "split" in node.attrs:
            node.attrs["split"] = [int(s) for s in sizes]
        elif len(node.inputs) > 1 and not node.inputs[1].is_empty():
            node.inputs[1] = gs.Constant(f"{node.name}_split", sizes)
        elif len(set(sizes.tolist())) > 1:
            node.attrs.pop("num_outputs", None)
            node.inputs.append(gs.Constant(f"{node.name}_split", sizes))
    return apply


def slice_(node, tensor, axis, g: GraphView):
    x, y = _data_in(node), _out(node)
    if tensor is not x and tensor is not y:
        return []
    rank = g.rank(x)
    starts = g.int_list(node, "starts", 1)
    ends = g.int_list(node, "ends", 2)
    axes = g.int_list(node, "axes", 3) if ("axes" in node.attrs or len(node.inputs) > 3) else None
    steps = g.int_list(node, "steps", 4) if len(node.inputs) > 4 else None
    if starts is None or ends is None or rank is None:
        return [Freeze((tensor.name, axis), f"Slice with computed bounds ({node_label(node)})")]
    axes = [_norm_axis(a, rank) for a in axes] if axes else list(range(len(starts)))
    if axis not in axes:
        return [Couple((x.name, axis), (y.name, axis))]
    i = axes.index(axis)
    width = g.dim(x, axis)
    if (steps and steps[i] != 1) or not isinstance(width, int):
        return [Freeze((tensor.name, axis), f"strided Slice on the channel axis ({node_label(node)})")]
    start = int(np.clip(starts[i] + width if starts[i] < 0 else starts[i], 0, width))
    return [Offset((x.name, axis), (y.name, axis), start),
            Fixup(node_label(node), f"slice{axis}", _fix_slice(axis, i, start))]


def _fix_slice(axis: int, i: int, start: int):
    def apply(node: gs.Node, new_width, new_index):
        x, y = node.inputs[0], node.outputs[0]
        new_start = int(new_index((x.name, axis), start))
        new_end = new_start + new_width((y.name, axis))
        if "starts" in node.attrs:
            node.attrs["starts"] = _replace(node.attrs["starts"], i, new_start)
            node.attrs["ends"] = _replace(node.attrs["ends"], i, new_end)
        else:
            for k, value in ((1, new_start), (2, new_end)):
                old = np.asarray(node.inputs[k].values)
                node.inputs[k] = gs.Constant(f"{node.name}_{'starts' if k == 1 else 'ends'}",
                                             np.asarray(_replace(old, i, value), dtype=old.dtype))
    return apply


def _replace(values, i, value):
    values = list(np.asarray(values).tolist())
    values[i] = value
    return values


# --------------------------------------------------------------------------------------------
# reshaping: flatten of C×H×W into one feature axis


def flatten(node, tensor, axis, g: GraphView):
    x, y = _data_in(node), _out(node)
    shape = g.shape(x)
    if shape is None:
        return [Freeze((tensor.name, axis), f"Flatten with unknown input shape ({node_label(node)})")]
    k = _norm_axis(int(node.attrs.get("axis", 1)), len(shape))
    groups = [(list(range(k)), 0), (list(range(k, len(shape))), 1)]
    return _merge_relations(node, tensor, axis, x, y, shape, groups)


def reshape(node, tensor, axis, g: GraphView):
    pattern = _group_norm_pattern(node, g)
    if pattern is not None:
        return _group_norm_reshapes(pattern, tensor, axis)
    x, y = _data_in(node), _out(node)
    if tensor is not x and tensor is not y:
        return []
    in_shape, out_shape = g.shape(x), g.shape(y)
    groups = _reshape_groups(in_shape, out_shape)
    if groups is None:
        return [Freeze((tensor.name, axis), f"Reshape that cannot be matched axis by axis ({node_label(node)})")]
    relations = _merge_relations(node, tensor, axis, x, y, in_shape, groups)
    if isinstance(node.inputs[1], gs.Constant):
        relations.append(Fixup(node_label(node), "reshape", _fix_reshape))
        return relations
    # A shape computed at run time is safe only where its entry for this axis is read from the
    # running tensors or is -1/0; a fixed channel count inside it cannot follow the new width.
    out_axis = axis if tensor is y else next((o for a, o in groups if axis in a), None)
    entries = _concat_entries(node.inputs[1], g)
    if entries is None or out_axis is None or out_axis >= len(entries) or entries[out_axis] not in (None, -1, 0):
        return [Freeze((tensor.name, axis), f"Reshape to a computed shape with a fixed size ({node_label(node)})")]
    return relations


def _concat_entries(shape: gs.Tensor, g: GraphView) -> list[int | None] | None:
    """The entries of a shape built by Concat: constants where known, None where computed."""
    producer = shape.inputs[0] if shape.inputs else None
    if producer is None or producer.op != "Concat":
        return None
    entries = []
    for part in producer.inputs:
        if isinstance(part, gs.Constant):
            entries += [int(v) for v in np.asarray(part.values).ravel()]
        elif isinstance(g.dim(part, 0), int) and g.rank(part) == 1:
            entries += [None] * g.dim(part, 0)
        else:
            return None
    return entries


def _merge_relations(node, tensor, axis, x, y, in_shape, groups):
    """groups: list of (input axes, output axis) where input axes merge into one output axis."""
    for in_axes, out_axis in groups:
        if tensor is x and axis in in_axes:
            if len(in_axes) == 1:
                return [Couple((x.name, axis), (y.name, out_axis))]
            dims = [in_shape[a] for a in in_axes]
            if not all(isinstance(d, int) for d in dims):
                return [Freeze((x.name, axis), f"{node.op} merges axes of unknown size ({node_label(node)})")]
            grid = np.arange(int(np.prod(dims))).reshape(dims)
            index = np.moveaxis(grid, in_axes.index(axis), 0).reshape(dims[in_axes.index(axis)], -1)
            return [Expand((x.name, axis), (y.name, out_axis), index)]
        if tensor is y and axis == out_axis:
            if len(in_axes) == 1:
                return [Couple((x.name, in_axes[0]), (y.name, axis))]
            # A merged feature axis is tied to its channel axis from the input side, when the
            # analysis reaches that axis from a producer; from here we cannot tell which input
            # axis carries channels, so this side adds nothing.
            return []
    return [Freeze((tensor.name, axis), f"{node.op} splits axis {axis} ({node_label(node)})")]


def _reshape_groups(in_shape, out_shape):
    """Match input axes to output axes when every output axis is one input axis or a merge of
    consecutive input axes (size-1 axes attach to their neighbours). None when it splits axes."""
    if in_shape is None or out_shape is None:
        return None
    in_shape, out_shape = _match_one_dynamic_dim(in_shape, out_shape)
    groups, i = [], 0
    for o, dim in enumerate(out_shape):
        if dim == 1 and (i >= len(in_shape) or in_shape[i] != 1):
            groups.append(([], o))  # a new size-1 axis, e.g. an SE gate (N, C) → (N, C, 1, 1)
            continue
        while groups and i < len(in_shape) and in_shape[i] == 1 and dim != 1:
            groups[-1][0].append(i)  # a size-1 input axis that disappears
            i += 1
        if i >= len(in_shape):
            return None
        axes = [i]
        if not isinstance(dim, int) or not isinstance(in_shape[i], int):
            if dim is None or dim != in_shape[i]:
                return None
            i += 1
        else:
            prod = in_shape[i]
            i += 1
            while prod < dim and i < len(in_shape) and isinstance(in_shape[i], int):
                prod *= in_shape[i]
                axes.append(i)
                i += 1
            if prod != dim:
                return None
        groups.append((axes, o))
    while i < len(in_shape) and in_shape[i] == 1 and groups:
        groups[-1][0].append(i)
        i += 1
    return groups if i == len(in_shape) else None


def _match_one_dynamic_dim(in_shape, out_shape):
    """With exactly one unknown dim on each side and equal static products, the unknowns are equal."""
    unknown_in = [i for i, d in enumerate(in_shape) if not isinstance(d, int)]
    unknown_out = [i for i, d in enumerate(out_shape) if not isinstance(d, int)]
    if len(unknown_in) != 1 or len(unknown_out) != 1:
        return in_shape, out_shape
    static_in = np.prod([d for d in in_shape if isinstance(d, int)])
    static_out = np.prod([d for d in out_shape if isinstance(d, int)])
    if static_in != static_out:
        return in_shape, out_shape
    in_shape, out_shape = list(in_shape), list(out_shape)
    in_shape[unknown_in[0]] = out_shape[unknown_out[0]] = "?"
    return in_shape, out_shape


def _fix_reshape(node: gs.Node, new_width, new_index):
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


# --------------------------------------------------------------------------------------------
# group normalisation: pruned per group like a grouped conv (channel l of every group goes
# together, the group count stays); each group's statistics then cover its remaining channels,
# which changes them as pruning changes any activation


def _per_group(x: gs.Tensor, y: gs.Tensor, groups: int, width: int) -> list:
    per = width // groups
    local = (f"{y.name}#per-group", 0)
    return [Couple((x.name, 1), (y.name, 1)), Local(local, per),
            Expand(local, (x.name, 1), np.arange(width).reshape(groups, per).T)]


def group_normalization(node, tensor, axis, g: GraphView):
    """GroupNormalization: scale and bias are per group up to opset 20 (they stay), per channel
    from opset 21 (they follow the channels)."""
    x, y = _data_in(node), _out(node)
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


def _group_norm_pattern(node: gs.Node, g: GraphView) -> _GroupNormPattern | None:
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


def _group_norm_reshapes(p: _GroupNormPattern, tensor, axis) -> list:
    if tensor is not p.x and tensor is not p.y:
        return []
    if axis != 1:
        return [Freeze((tensor.name, axis), f"group normalisation over axis {axis} ({node_label(p.first)})")]
    width = int(p.x.shape[1])
    relations = _per_group(p.x, p.y, p.groups, width)
    relations.append(Fixup(node_label(p.first), "group-norm", _fix_group_flat(p.x.name, width)))
    if isinstance(p.second.inputs[1], gs.Constant):
        relations.append(Fixup(node_label(p.second), "reshape", _fix_reshape))
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


# --------------------------------------------------------------------------------------------
# weighted ops: they write (producer) and read (consumer) channel spaces


def conv(node, tensor, axis, g: GraphView):
    x, w, y = node.inputs[0], node.inputs[1], _out(node)
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
    out_axis, in_axis = (1, 0) if transposed else (0, 1)
    if groups == 1:
        bias = [Member((y.name, 1), b.name, 0, "shift", label)] if b is not None else []
        if tensor is y:
            return [Member((y.name, 1), w.name, out_axis, "producer", label, True)] + bias
        return [Member((x.name, 1), w.name, in_axis, "consumer", label, True)]
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


def fused_conv(node, tensor, axis, g: GraphView):
    """ONNX Runtime's com.microsoft FusedConv (in models it saves optimised): a Conv, plus an
    optional 4th input Z added before the elementwise activation, coupled like a residual Add."""
    z, y = g.input(node, 3), _out(node)
    if z is None:
        return conv(node, tensor, axis, g)
    if axis != 1:
        return [Freeze((tensor.name, axis), f"FusedConv axis {axis} is not a channel axis ({node_label(node)})")]
    coupled = Couple((z.name, 1), (y.name, 1))
    return [coupled] if tensor is z else conv(node, tensor, axis, g) + [coupled]


def gemm(node, tensor, axis, g: GraphView):
    a, w, y = node.inputs[0], node.inputs[1], _out(node)
    c = g.input(node, 2)
    label = node_label(node)
    if tensor is w or (tensor is c and isinstance(c, gs.Constant)):
        return []
    if not isinstance(w, gs.Constant):
        return [Freeze((tensor.name, axis), f"Gemm with computed weights ({label})")]
    trans_a, trans_b = int(node.attrs.get("transA", 0)), int(node.attrs.get("transB", 0))
    feature_axis = 0 if trans_a else 1
    if tensor is a:
        if axis != feature_axis:
            return [Freeze((a.name, axis), f"Gemm batch axis ({label})")]
        return [Member((a.name, axis), w.name, 1 if trans_b else 0, "consumer", label, True)]
    if tensor is y and axis != 1:
        return [Freeze((y.name, axis), f"Gemm batch axis ({label})")]
    relations = [Member((y.name, 1), w.name, 0 if trans_b else 1, "producer", label, True)]
    if c is not None:
        rank = g.rank(c)
        if g.dim(c, -1) not in (1, None) and rank is not None:
            if isinstance(c, gs.Constant):
                relations.append(Member((y.name, 1), c.name, rank - 1, "shift", label))
            else:
                relations.append(Couple((c.name, rank - 1), (y.name, 1)))
    return relations


def matmul(node, tensor, axis, g: GraphView):
    a, w, y = node.inputs[0], node.inputs[1], _out(node)
    label = node_label(node)
    if tensor is w:
        return []
    rank = g.rank(a)
    if not isinstance(w, gs.Constant) or w.values.ndim != 2 or rank is None or rank < 2:
        return [Freeze((tensor.name, axis), f"MatMul without a constant 2-D weight ({label})")]
    last = rank - 1
    if axis != last:
        return [Couple((a.name, axis), (y.name, axis))]  # batch / token axes pass through
    if tensor is a:
        return [Member((a.name, last), w.name, 0, "consumer", label, True)]
    return [Member((y.name, last), w.name, 1, "producer", label, True)]


# --------------------------------------------------------------------------------------------
# the table


def _table() -> dict[str, Callable]:
    table: dict[str, Callable] = {}
    for op in ("Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Tanh", "Dropout",
               "Identity", "Elu", "Selu", "Celu", "Softplus", "Softsign", "Gelu", "Erf", "Mish", "Neg",
               "Abs", "Sqrt", "Exp", "Log", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Cast",
               "ThresholdedRelu", "Swish", "Sin", "Cos"):
        table[op] = unary
    for op in ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool",
               "Resize", "Upsample"):
        table[op] = spatial_pool
    for op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2", "ReduceProd",
               "ReduceLogSumExp", "ReduceSumSquare"):
        table[op] = reduce
    for op in ("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Pow"):
        table[op] = broadcast
    for op in ("Softmax", "LogSoftmax"):
        table[op] = softmax
    table.update({
        "PRelu": prelu,
        "BatchNormalization": batchnorm,
        "InstanceNormalization": batchnorm,
        "GroupNormalization": group_normalization,
        "LayerNormalization": layernorm,
        "Transpose": transpose,
        "Squeeze": squeeze_like,
        "Unsqueeze": squeeze_like,
        "Pad": pad,
        "Shape": reads_shape_only,
        "Size": reads_shape_only,
        "Concat": concat,
        "Split": split,
        "Slice": slice_,
        "Flatten": flatten,
        "Reshape": reshape,
        "Conv": conv,
        "ConvTranspose": conv,
        "Gemm": gemm,
        "MatMul": matmul,
        # ONNX Runtime's fusions with an elementwise activation, saved with optimized_model_filepath
        "com.microsoft.FusedConv": fused_conv,
        "com.microsoft.FusedGemm": gemm,
    })
    return table


OP_RULES: dict[str, Callable] = _table()

# Ops whose weights write and read channel spaces: the analysis starts from their data tensors.
WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "com.microsoft.FusedConv", "com.microsoft.FusedGemm"}


def op_key(node: gs.Node) -> str:
    """The op table's key: the op type, prefixed with its domain outside the ONNX domain."""
    return node.op if is_onnx_domain(node) else f"{node.domain}.{node.op}"


def seed_spaces(node: gs.Node, g: GraphView) -> list[Space]:
    """The channel spaces a weighted op reads and writes, where the analysis starts."""
    op = op_key(node)
    if op not in WEIGHTED_OPS:
        return []
    x, y = node.inputs[0], node.outputs[0]
    if op in ("Conv", "ConvTranspose", "com.microsoft.FusedConv"):
        return [(x.name, 1), (y.name, 1)]
    if op in ("Gemm", "com.microsoft.FusedGemm"):
        return [(x.name, 0 if node.attrs.get("transA", 0) else 1), (y.name, 1)]
    rank_x, rank_y = g.rank(x), g.rank(y)
    if rank_x is None or rank_y is None:
        return []
    return [(x.name, rank_x - 1), (y.name, rank_y - 1)]


def relations_for(node: gs.Node, tensor: gs.Tensor, axis: int, g: GraphView) -> list[Relation]:
    rule = OP_RULES.get(op_key(node))
    if rule is None:
        return [Freeze((tensor.name, axis), f"unsupported op {op_key(node)} ({node_label(node)})")]
    return rule(node, tensor, axis, g)
