"""Coordinates inside a head: which of a head group's columns may be permuted together.

A head holds D channels in every tensor it runs through (Q, K and V, the output projection's input,
a packed weight's columns). Permuting the D channels of one head the same way in Q and K leaves
Q·Kᵀ unchanged, and the same for V and the columns of the output projection that read it; Intra-Fusion
for heads (Imfeld et al., ICLR 2024) uses that to align a head with the one it merges into before
averaging them. The op rules say where coordinates sit (`Within`): a head-split or merge Reshape
names the inner axis it splits off, a fused attention op its own Q·Kᵀ and A·V sides. A system of
coordinates counts only when nothing but Couples (transposes, the attention products) touches the
inner spaces it is named by: a rotary embedding slicing D, a per-head norm or a constant on D and
the system is left out, and with it alignment for every head group that holds it.

Coordinates then spread to every channel coupled one-to-one (Couple, Offset) with a labelled one.
"""

from __future__ import annotations

import numpy as np

from .relations import Couple, Expand, Inner, Space, Within, position_offsets, spaces_of, tied_components

UNLABELLED, CONFLICT = -1, -2
SYSTEM = 1 << 20  # coordinate id = system number · SYSTEM + coordinate


def couple_roots(relations):
    """Union-find over Couple relations: root(space)."""
    parent: dict[Space, Space] = {}

    def root(space: Space) -> Space:
        while parent.setdefault(space, space) != space:
            parent[space] = parent[parent[space]]
            space = parent[space]
        return space

    for rel in relations:
        if isinstance(rel, Couple):
            parent[root(rel.a)] = root(rel.b)
    return root


def coordinates(relations, widths: dict[Space, int | None]) -> dict[Space, np.ndarray]:
    """Per space with labelled channels: (width,) coordinate id of each channel (see SYSTEM; -1 where
    none)."""
    within = [rel for rel in relations if isinstance(rel, Within) and widths.get(rel.space) is not None]
    if not within:
        return {}
    root = couple_roots(relations)
    systems = _permutable_systems(relations, {root(rel.key) for rel in within}, root)
    bases = {}
    for rel in within:
        system = root(rel.key)
        if system in systems and system not in bases:
            bases[system] = len(bases) * SYSTEM
    spaces, offsets, total = position_offsets(widths)
    label = np.full(total, UNLABELLED, dtype=np.int64)
    for rel in within:
        system = root(rel.key)
        if system in bases:
            positions = offsets[rel.space] + rel.index
            ids = np.broadcast_to(bases[system] + rel.coords, positions.shape)
            clash = (label[positions] != UNLABELLED) & (label[positions] != ids)
            label[positions] = np.where(clash, CONFLICT, ids)
    component = tied_components(relations, widths, offsets, total, expand=False)
    per_component = np.full(component.max() + 1, UNLABELLED, dtype=np.int64)
    for comp, value in zip(component[label != UNLABELLED], label[label != UNLABELLED]):
        now = per_component[comp]
        per_component[comp] = value if now == UNLABELLED else now if now == value else CONFLICT
    spread = per_component[component]
    return {s: spread[offsets[s]: offsets[s] + widths[s]] for s in spaces
            if (spread[offsets[s]: offsets[s] + widths[s]] != UNLABELLED).any()}


def _permutable_systems(relations, keys: set[Space], root) -> set[Space]:
    """Systems (by root) that are a split's inner axis (Inner) which nothing but Couples, Inner and
    the dropped expansions of merges back touch; and keys no other relation names (a fused op's
    own system, permutable by the rule's word)."""
    inner = {root(rel.space) for rel in relations if isinstance(rel, Inner)}
    named, touched = set(), set()
    for rel in relations:
        if isinstance(rel, Within):
            continue
        spaces = spaces_of(rel)
        named.update(root(s) for s in spaces)
        if isinstance(rel, (Couple, Inner)):
            continue
        if isinstance(rel, Expand) and root(rel.channel) in inner:
            spaces = [rel.flat]
        touched.update(root(s) for s in spaces)
    return {key for key in keys if (key in inner and key not in touched) or key not in named}


def group_coordinates(positions: dict[Space, np.ndarray],
                      labels: dict[Space, np.ndarray]) -> dict[Space, np.ndarray] | None:
    """(k,) coordinate id of each column for every space of a head group whose units span k > 1
    columns, when every such column is labelled and alike in every unit; else None (no alignment)."""
    out = {}
    for space, pos in positions.items():
        if pos.shape[1] == 1:
            continue
        if space not in labels:
            return None
        ids = labels[space][pos]
        if (ids < 0).any() or not (ids == ids[:1]).all():
            return None
        out[space] = ids[0]
    return out or None
