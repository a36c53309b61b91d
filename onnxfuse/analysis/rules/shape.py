"""Ops that move channels between axes and tensors: Transpose, Squeeze/Unsqueeze, Pad, Concat, Split,
Slice on the channel axis, Gather (token selection, embedding tables), Flatten/Reshape of C×H×W into
one feature axis and Reshape of H·D into heads (H, D) and back."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...graph.view import GraphView, node_label
from ..relations import Couple, Expand, Fixup, Freeze, Inner, Member, Offset, Space, Within
from .common import first_input, first_output, fix_reshape, norm_axis, replace_at
from .norm import group_norm_pattern, group_norm_reshapes
from .registry import register_op_rule


@register_op_rule("Transpose")
def transpose(node, tensor, axis, g: GraphView):
    x, y = first_input(node), first_output(node)
    rank = g.rank(x)
    perm = node.attrs.get("perm") or list(reversed(range(rank or 0)))
    if tensor is x:
        return [Couple((x.name, axis), (y.name, list(perm).index(axis)))]
    return [Couple((x.name, perm[axis]), (y.name, axis))]


@register_op_rule("Squeeze", "Unsqueeze")
def squeeze_like(node, tensor, axis, g: GraphView):
    """Squeeze / Unsqueeze: axes are renumbered; the squeezed size-1 axes never carry channels."""
    x, y = first_input(node), first_output(node)
    if tensor is not x and tensor is not y:
        return []
    in_rank, out_rank = g.rank(x), g.rank(y)
    axes = g.int_list(node, "axes", 1)
    if in_rank is None or out_rank is None or axes is None:
        return [Freeze((tensor.name, axis), f"{node.op} with unknown axes ({node_label(node)})")]
    if node.op == "Squeeze":
        gone = {norm_axis(a, in_rank) for a in axes}
        in_axes = [a for a in range(in_rank) if a not in gone]
        out_axes = list(range(out_rank))
    else:
        added = {norm_axis(a, out_rank) for a in axes}
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


@register_op_rule("Pad")
def pad(node, tensor, axis, g: GraphView):
    x, y = first_input(node), first_output(node)
    if tensor is not x and tensor is not y:
        return []
    pads = g.int_list(node, "pads", 1)
    rank = g.rank(x)
    axes = g.int_list(node, "axes", 3) if len(node.inputs) > 3 else None
    if pads is None or rank is None:
        return [Freeze((tensor.name, axis), f"Pad with computed pads ({node_label(node)})")]
    axes = [norm_axis(a, rank) for a in axes] if axes else list(range(rank))
    n = len(axes)
    padded = {a: (pads[i], pads[i + n]) for i, a in enumerate(axes)}
    if padded.get(axis, (0, 0)) != (0, 0):
        return [Freeze((tensor.name, axis), f"Pad pads the channel axis ({node_label(node)})")]
    return [Couple((x.name, axis), (y.name, axis))]


@register_op_rule("Concat")
def concat(node, tensor, axis, g: GraphView):
    y = first_output(node)
    rank = g.rank(y)
    cat_axis = norm_axis(int(node.attrs["axis"]), rank)
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


@register_op_rule("Split")
def split(node, tensor, axis, g: GraphView):
    x = first_input(node)
    rank = g.rank(x)
    split_axis = norm_axis(int(node.attrs.get("axis", 0)), rank)
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


@register_op_rule("Slice")
def slice_(node, tensor, axis, g: GraphView):
    x, y = first_input(node), first_output(node)
    if tensor is not x and tensor is not y:
        return []
    rank = g.rank(x)
    starts = g.int_list(node, "starts", 1)
    ends = g.int_list(node, "ends", 2)
    axes = g.int_list(node, "axes", 3) if ("axes" in node.attrs or len(node.inputs) > 3) else None
    steps = g.int_list(node, "steps", 4) if len(node.inputs) > 4 else None
    if starts is None or ends is None or rank is None:
        return [Freeze((tensor.name, axis), f"Slice with computed bounds ({node_label(node)})")]
    axes = [norm_axis(a, rank) for a in axes] if axes else list(range(len(starts)))
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
            node.attrs["starts"] = replace_at(node.attrs["starts"], i, new_start)
            node.attrs["ends"] = replace_at(node.attrs["ends"], i, new_end)
        else:
            for k, value in ((1, new_start), (2, new_end)):
                old = np.asarray(node.inputs[k].values)
                node.inputs[k] = gs.Constant(f"{node.name}_{'starts' if k == 1 else 'ends'}",
                                             np.asarray(replace_at(old, i, value), dtype=old.dtype))
    return apply


@register_op_rule("Gather")
def gather(node, tensor, axis, g: GraphView):
    """Gather along one axis: the other axes of the data pass through (renumbered by the indices'
    rank), e.g. the cls token x[:, 0]; rows of a constant table (token embeddings) are written
    channel by channel, so the table is the producer of the output's last axis."""
    data, indices, y = node.inputs[0], node.inputs[1], first_output(node)
    rank, index_rank = g.rank(data), g.rank(indices)
    label = node_label(node)
    if tensor is indices or rank is None or index_rank is None:
        return [] if tensor is indices else [Freeze((tensor.name, axis), f"Gather with unknown ranks ({label})")]
    along = norm_axis(int(node.attrs.get("axis", 0)), rank)
    if isinstance(data, gs.Constant):
        if rank == 2 and along == 0 and tensor is y and axis == index_rank:
            return [Member((y.name, axis), data.name, 1, "producer", label, True)]
        return [Freeze((tensor.name, axis), f"Gather from a constant other than an embedding table ({label})")]
    if tensor is data:
        if axis == along:
            return [Freeze((data.name, axis), f"Gather selects along this axis ({label})")]
        return [Couple((data.name, axis), (y.name, axis if axis < along else axis + index_rank - 1))]
    if along <= axis < along + index_rank:
        return [Freeze((y.name, axis), f"Gather's index axis ({label})")]
    return [Couple((data.name, axis if axis < along else axis - index_rank + 1), (y.name, axis))]


@register_op_rule("Expand")
def expand(node, tensor, axis, g: GraphView):
    """Expand (broadcast to a shape): axes of equal size pass through, broadcast size-1 axes tie
    nothing; a constant expanded along the channel axis (a cls token) is rewritten with it."""
    x, y = first_input(node), first_output(node)
    if tensor is not x and tensor is not y:
        return []
    rank_x, rank_y = g.rank(x), g.rank(y)
    if rank_x is None or rank_y is None:
        return [Freeze((tensor.name, axis), f"Expand with unknown ranks ({node_label(node)})")]
    x_axis = axis if tensor is x else axis - (rank_y - rank_x)
    y_axis = x_axis + rank_y - rank_x
    if x_axis < 0 or g.dim(x, x_axis) == 1 and g.dim(y, y_axis) != 1:
        return []  # broadcast: the output's channels along this axis are copies of one value
    if g.dim(x, x_axis) != g.dim(y, y_axis):
        return [Freeze((tensor.name, axis), f"Expand to a size not known to match ({node_label(node)})")]
    if isinstance(x, gs.Constant):
        return [Member((y.name, y_axis), x.name, x_axis, "shift", node_label(node))]
    return [Couple((x.name, x_axis), (y.name, y_axis))]


@register_op_rule("Flatten")
def flatten(node, tensor, axis, g: GraphView):
    x, y = first_input(node), first_output(node)
    shape = g.shape(x)
    if shape is None:
        return [Freeze((tensor.name, axis), f"Flatten with unknown input shape ({node_label(node)})")]
    k = norm_axis(int(node.attrs.get("axis", 1)), len(shape))
    groups = [(list(range(k)), 0), (list(range(k, len(shape))), 1)]
    return _merge_relations(node, tensor, axis, x, y, shape, groups)


@register_op_rule("Reshape")
def reshape(node, tensor, axis, g: GraphView):
    pattern = group_norm_pattern(node, g)
    if pattern is not None:
        return group_norm_reshapes(pattern, tensor, axis)
    x, y = first_input(node), first_output(node)
    if tensor is not x and tensor is not y:
        return []
    in_shape, out_shape = g.shape(x), g.shape(y)
    groups = _reshape_groups(in_shape, out_shape)
    if groups is not None:
        relations = _merge_relations(node, tensor, axis, x, y, in_shape, groups)
        out_axes = [axis] if tensor is y else [o for a, o in groups if axis in a]
    else:
        splits = _reshape_groups(out_shape, in_shape)  # output axes that merge into an input axis: a split
        if splits is not None:
            relations = _split_relations(node, tensor, axis, x, y, out_shape, splits)
            out_axes = [axis] if tensor is y else next((o for o, a in splits if a == axis), [])
        elif _same_last_axis(tensor, axis, x, in_shape, out_shape):
            # (B, S, C) → (B·S, C) and back, with dynamic leading sizes: whatever the leading axes
            # become, element (…, c) stays in column c of a last axis of the same size (row-major).
            relations, out_axes = [Couple((x.name, len(in_shape) - 1), (y.name, len(out_shape) - 1))], \
                [len(out_shape) - 1]
        else:
            return [Freeze((tensor.name, axis), f"Reshape that cannot be matched axis by axis ({node_label(node)})")]
    if isinstance(node.inputs[1], gs.Constant):
        relations.append(Fixup(node_label(node), "reshape", fix_reshape))
        return relations
    # A shape computed at run time: entries read from the running tensors follow by themselves, -1
    # and 0 too; literal entries built into it (a head count, a width) are rewritten by the fixup.
    entries = _concat_entries(node.inputs[1], g)
    if entries is None or any(o >= len(entries) for o in out_axes) or len(node.inputs[1].outputs) > 1:
        return [Freeze((tensor.name, axis), f"Reshape to a shape computed in a way not followed ({node_label(node)})")]
    if any(entries[o] not in (None, -1, 0) for o in out_axes):
        relations.append(Fixup(node_label(node), "reshape", fix_concat_shape))
    return relations


def _split_relations(node, tensor, axis, x, y, out_shape, splits):
    """splits: (output axes, input axis) where one input axis splits into consecutive output axes
    (…, H·D) → (…, H, D). The outer output axis indexes blocks of the input axis (head h ↔
    channels h·D … (h+1)·D − 1): whole blocks are kept or removed; the inner axes stay whole."""
    for out_axes, in_axis in splits:
        if not ((tensor is x and axis == in_axis) or (tensor is y and axis in out_axes)):
            continue
        if len(out_axes) == 1:
            return [Couple((x.name, in_axis), (y.name, out_axes[0]))]
        dims = [out_shape[a] for a in out_axes]
        if tensor is y and axis != out_axes[0]:
            inner = [Inner((y.name, axis), f"{node.op} splits an axis into blocks and this axis runs inside each "
                                           f"block; blocks are kept or removed whole ({node_label(node)})")]
            return inner + _block_coordinates((x.name, in_axis), dims, (y.name, axis), out_axes.index(axis))
        if not all(isinstance(d, int) for d in dims):
            return [Freeze((tensor.name, axis), f"{node.op} splits an axis into blocks of unknown size "
                                                f"({node_label(node)})")]
        index = np.arange(int(np.prod(dims))).reshape(dims[0], -1)
        return [Expand((y.name, out_axes[0]), (x.name, in_axis), index)]
    return [Freeze((tensor.name, axis), f"{node.op} merges axis {axis} with others ({node_label(node)})")]


def _same_last_axis(tensor, axis, x, in_shape, out_shape) -> bool:
    """Asked about the last axis, whose size is known and the same before and after."""
    if not in_shape or not out_shape or not isinstance(in_shape[-1], int) or in_shape[-1] != out_shape[-1]:
        return False
    return axis == (len(in_shape) if tensor is x else len(out_shape)) - 1


def _block_coordinates(flat: Space, dims: list, inner: Space, position: int) -> list:
    """Where a flat axis splits into (blocks, D) or merges back from them: flat channel b·D + d is
    coordinate d of `inner` in block b (analysis/within.py decides whether the coordinates may be
    permuted)."""
    if len(dims) != 2 or position != 1:
        return []
    blocks, per = dims
    return [Within(flat, np.arange(blocks * per).reshape(blocks, per), np.arange(per), inner)]


def fix_concat_shape(node: gs.Node, new_width, new_index):
    """The literal entries of a shape built by Concat (used by this Reshape alone) set to the new
    widths of the output's axes; each constant part is replaced, not changed (others may share it)."""
    concat, y, position = node.inputs[1].inputs[0], node.outputs[0], 0
    for k, part in enumerate(list(concat.inputs)):
        if not isinstance(part, gs.Constant):
            position += int(part.shape[0])
            continue
        values = np.array(np.atleast_1d(part.values))
        for j, value in enumerate(values.tolist()):
            width = new_width((y.name, position + j)) if value > 0 else None
            if width is not None:
                values[j] = width
        concat.inputs[k] = gs.Constant(f"{node.name}_shape_part{k}", values.reshape(np.shape(part.values)))
        position += values.size


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
            return [Expand((x.name, axis), (y.name, out_axis), index)] + \
                _block_coordinates((y.name, out_axis), dims, (x.name, axis), in_axes.index(axis))
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
        axes, target, prod = [i], _factors(dim), _factors(in_shape[i])
        if target is None or prod is None:
            return None
        i += 1
        while prod != target and _divides(prod, target) and i < len(in_shape) and _factors(in_shape[i]):
            prod = _times(prod, _factors(in_shape[i]))
            axes.append(i)
            i += 1
        if prod != target:
            return None
        groups.append((axes, o))
    while i < len(in_shape) and in_shape[i] == 1 and groups:
        groups[-1][0].append(i)
        i += 1
    return groups if i == len(in_shape) else None


def _factors(dim) -> tuple[int, tuple[str, ...]] | None:
    """A dimension as (number, symbols) of a product: 128 → (128, ()), "50*batch" → (50, ("batch",));
    None when unknown."""
    if isinstance(dim, int):
        return (dim, ())
    if not isinstance(dim, str) or not dim:
        return None
    number, symbols = 1, []
    for token in dim.replace(" ", "").split("*"):
        if token.isdigit():
            number *= int(token)
        else:
            symbols.append(token)
    return number, tuple(sorted(symbols))


def _times(a, b):
    return a[0] * b[0], tuple(sorted(a[1] + b[1]))


def _divides(a, b) -> bool:
    rest = list(b[1])
    for symbol in a[1]:
        if symbol not in rest:
            return False
        rest.remove(symbol)
    return a[0] != 0 and b[0] % a[0] == 0


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
