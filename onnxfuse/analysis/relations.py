"""Channel relations: what an op rule (analysis/rules/) says about the channel spaces of a node.

A channel space is one axis of one tensor, written `(tensor_name, axis)`. The analysis visits a
space and asks every node that produces or consumes its tensor, through the op-rule registry, how
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
- `Inner(space, reason)`: the space runs inside blocks of another axis (a head's D channels after
  a split (…, H·D) → (…, H, D)): frozen, and so is every space coupled with it, none of which
  expands into a merged axis (the block axis does: merging H and D back must not tie the heads).
- `Within(space, index, coords, key)`: positions `index[u, c]` of `space` hold coordinate `coords[c]`
  of unit u in the coordinate system `key` (a head's D channels after a head split, named by the
  split's inner space; or a fused op's Q·Kᵀ and A·V sides). Coordinates of one system may be
  permuted inside every unit alike without changing what the model computes, when nothing but
  transposes and the attention products touch them; head fusion aligns heads by it.
- `Normalised(space, node)`: a normalisation's statistics run over the space's channels (LayerNorm
  and its written-out and fused forms): shrinking the space rescales every channel it keeps.
- `Fixup(node, key, apply)`: an attribute or shape constant recomputed from the new widths.

An op missing from the table freezes every space that reaches it: unknown means frozen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

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


@dataclass(frozen=True)
class Inner:
    space: Space
    reason: str


@dataclass(frozen=True, eq=False)
class Within:
    space: Space
    index: np.ndarray  # (units, columns) positions in `space`
    coords: np.ndarray  # (columns,) coordinate of each column in the system `key`
    key: Space

    def dedupe_key(self):
        return ("within", self.space, self.key, self.index.tobytes())


@dataclass(frozen=True)
class Normalised:
    space: Space
    node: str


@dataclass(frozen=True, eq=False)
class Fixup:
    node: str
    key: str
    apply: Callable = field(compare=False)  # apply(node, new_width: Callable[[Space], int], new_index)

    def dedupe_key(self):
        return ("fixup", self.node, self.key)


Relation = Couple | Offset | Expand | Member | Local | Freeze | Inner | Within | Fixup


def spaces_of(rel) -> list[Space]:
    """The channel spaces a relation names (a Within's positions are named by the rule's others)."""
    if isinstance(rel, Couple):
        return [rel.a, rel.b]
    if isinstance(rel, Offset):
        return [rel.whole, rel.part]
    if isinstance(rel, Expand):
        return [rel.channel, rel.flat]
    if isinstance(rel, (Member, Freeze, Inner, Local, Normalised)):
        return [rel.space]
    return []


def position_offsets(widths: dict[Space, int | None]) -> tuple[list[Space], dict[Space, int], int]:
    """Every channel of every space of known width gets a global position: (spaces, the first
    position of each, the total)."""
    spaces = [s for s, w in widths.items() if w is not None]
    offsets, total = {}, 0
    for s in spaces:
        offsets[s] = total
        total += widths[s]
    return spaces, offsets, total


def tied_components(relations, widths, offsets: dict[Space, int], total: int, expand: bool = True) -> np.ndarray:
    """Connected components of the channel ties (Couple, Offset, and with `expand` Expand):
    label[position] = component id."""
    src, dst = [], []
    for rel in relations:
        if not all(s in offsets for s in spaces_of(rel)):
            continue
        if isinstance(rel, Couple) and widths[rel.a] == widths[rel.b]:
            n = widths[rel.a]
            src.append(offsets[rel.a] + np.arange(n))
            dst.append(offsets[rel.b] + np.arange(n))
        elif isinstance(rel, Offset):
            n = min(widths[rel.part], widths[rel.whole] - rel.start)
            src.append(offsets[rel.whole] + rel.start + np.arange(n))
            dst.append(offsets[rel.part] + np.arange(n))
        elif isinstance(rel, Expand) and expand:
            index = rel.index[: widths[rel.channel]]
            index = np.where(index < widths[rel.flat], index, -1)
            rows = np.repeat(np.arange(index.shape[0]), index.shape[1])
            valid = index.ravel() >= 0
            src.append(offsets[rel.channel] + rows[valid])
            dst.append(offsets[rel.flat] + index.ravel()[valid])
    if src:
        src, dst = np.concatenate(src), np.concatenate(dst)
    else:
        src = dst = np.zeros(0, dtype=np.int64)
    adjacency = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(total, total))
    return connected_components(adjacency, directed=False)[1]
