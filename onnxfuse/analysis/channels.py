"""Channel analysis: from the op table's relations to groups of coupled channels.

Every channel of every visited space gets a global position. Couple/Offset/Expand relations tie
positions together, and connected components of those ties are *atoms*: one coupled channel seen
in every tensor it runs through. Atoms that appear in exactly the same spaces (same signature) form
a *group*: they can be mixed with each other by one map, since every member holds all of them.
Concat inputs therefore form separate groups, and a flatten head's features join the channel
they come from.
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict, deque
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from ..graph.metrics import PRODUCTS, is_fused_attention
from ..graph.view import GraphView, node_label
from .relations import (
    Couple,
    Expand,
    Fixup,
    Freeze,
    Inner,
    Local,
    Member,
    Normalised,
    Offset,
    Space,
    Within,
    position_offsets,
    spaces_of,
    tied_components,
)
from .rules import relations_for, seed_spaces
from .rules.attention import head_space
from .within import coordinates, couple_roots, group_coordinates


@dataclass
class Group:
    id: int
    width: int
    positions: dict[Space, np.ndarray]  # space -> (width, k) positions of each channel in that space
    frozen: str | None = None
    members: list[Member] = field(default_factory=list)
    macs: int = 0
    coords: dict[Space, np.ndarray] | None = None  # heads: coordinate of each column inside a head (within.py)
    normalised: tuple[str, ...] = ()  # the normalisations whose statistics run over these channels

    @property
    def prunable(self) -> bool:
        return self.frozen is None

    def nodes(self, role: str) -> list[str]:
        return sorted({m.node for m in self.members if m.role == role and m.scored})


@dataclass
class Analysis:
    widths: dict[Space, int]
    groups: list[Group]
    members: dict[Space, list[Member]]
    fixups: list[Fixup]
    frozen_spaces: dict[Space, str]
    node_macs: dict[str, int]
    product_spaces: dict[str, list[Space]] = field(default_factory=dict)  # activation products, fused attention

    @property
    def prunable(self) -> list[Group]:
        return [grp for grp in self.groups if grp.prunable]

    def prunable_mac_share(self) -> float:
        """Share of the model's MACs in nodes whose weights some prunable group shrinks."""
        total = sum(self.node_macs.values())
        nodes = {m.node for grp in self.prunable for m in grp.members if m.scored}
        return sum(self.node_macs.get(n, 0) for n in nodes) / total if total else 0.0


def member_rows(group: Group, tensors: dict[str, gs.Tensor], min_ndim: int = 1,
                roles=("producer", "consumer", "param")):
    """(member, rows) for every scored member of `roles`: rows is (n, k, d), each channel's slice
    of the weight at each of its k positions (k > 1 for flatten heads and channel multipliers), a
    new float64 array (the weight's own dtype until then: no float64 copy of the whole weight)."""
    for member in group.members:
        if not member.scored or member.role not in roles:
            continue
        values = np.asarray(tensors[member.tensor].values)
        if values.ndim < min_ndim:
            continue
        moved = np.moveaxis(values, member.axis, 0).reshape(values.shape[member.axis], -1)
        yield member, moved[group.positions[member.space]].astype(np.float64)


def analyze(graph: gs.Graph, ignore: tuple[str, ...] = (), node_macs: dict[str, int] | None = None) -> Analysis:
    g = GraphView(graph)
    relations, widths = _collect_relations(g, ignore)
    labels = coordinates(relations, widths)
    relations = _inner_spaces_resolved(relations)
    frozen = _frozen_spaces(relations, widths)
    members, fixups = _members_and_fixups(relations, widths)
    groups = _build_groups(relations, widths, frozen, members)
    node_macs = node_macs or {}
    normalisers = defaultdict(set)
    for rel in relations:
        if isinstance(rel, Normalised):
            normalisers[rel.space].add(rel.node)
    for group in groups:
        group.macs = sum(node_macs.get(n, 0) for n in {m.node for m in group.members if m.scored})
        group.normalised = tuple(sorted(set().union(*(normalisers.get(s, ()) for s in group.positions))))
        if group.prunable and labels:
            group.coords = group_coordinates(group.positions, labels)
    return Analysis(widths, groups, members, fixups, frozen, node_macs, _product_spaces(g))


def _product_spaces(g: GraphView) -> dict[str, list[Space]]:
    """Per MatMul of two activations (attention's Q·Kᵀ and A·V), the spaces its MACs run over: every
    output axis and the summed one, so that the MAC estimate sees them shrink with the heads; for a
    fused attention op (graph/metrics.py counts its products apart), its heads."""
    spaces = {}
    for node in g.graph.nodes:
        if is_fused_attention(node):  # its own heads, or ai.onnx's 4-D head axis
            four_d = node.domain != "com.microsoft" and g.rank(node.inputs[0]) == 4
            spaces[node_label(node) + PRODUCTS] = [(node.inputs[0].name, 1) if four_d else head_space(node)]
            continue
        if node.op != "MatMul" or any(isinstance(t, gs.Constant) for t in node.inputs[:2]):
            continue
        a, y = node.inputs[0], node.outputs[0]
        ra, ry = g.rank(a), g.rank(y)
        if ra is not None and ry is not None and ra >= 2:
            spaces[node_label(node)] = [(y.name, axis) for axis in range(ry)] + [(a.name, ra - 1)]
    return spaces


def _collect_relations(g: GraphView, ignore: tuple[str, ...]):
    """Breadth-first over channel spaces, starting from the spaces weighted ops read and write."""
    queue: deque[Space] = deque()
    for node in g.graph.nodes:
        queue.extend(seed_spaces(node, g))
    seen: set[Space] = set()
    widths: dict[Space, int | None] = {}
    relations, keys = [], set()

    def add(rel):
        key = rel.key() if isinstance(rel, Expand) else rel.dedupe_key() if isinstance(rel, (Fixup, Within)) else rel
        if key not in keys:
            keys.add(key)
            relations.append(rel)

    while queue:
        space = queue.popleft()
        if space in seen:
            continue
        seen.add(space)
        tensor = g.tensors.get(space[0])
        width = g.dim(tensor, space[1]) if tensor is not None else None
        widths[space] = width if isinstance(width, int) else None
        for rel in _space_relations(g, tensor, space, ignore):
            add(rel)
            if isinstance(rel, Local):  # a node's own space: nothing beyond it to explore
                seen.add(rel.space)
                widths[rel.space] = rel.width
            for other in spaces_of(rel):
                if other not in seen:
                    queue.append(other)
    for rel in relations:  # spaces that only appear as members still need a width
        for space in spaces_of(rel):
            if space not in widths:
                dim = g.dim(g.tensors[space[0]], space[1])
                widths[space] = dim if isinstance(dim, int) else None
    return relations, widths


def _space_relations(g: GraphView, tensor, space: Space, ignore):
    if tensor is None:
        return [Freeze(space, "tensor not found")]
    if isinstance(tensor, gs.Constant):
        return [Freeze(space, "constant tensor used as an activation")]
    out = []
    if tensor.name in g.input_names:
        out.append(Freeze(space, "graph input"))
    if tensor.name in g.output_names:
        out.append(Freeze(space, "graph output"))
    if not isinstance(g.dim(tensor, space[1]), int):
        out.append(Freeze(space, "unknown channel count"))
    for node in list(tensor.inputs) + list(tensor.outputs):
        label = node_label(node)
        if tensor in node.outputs and any(fnmatch.fnmatchcase(label, pat) for pat in ignore):
            out.append(Freeze(space, f"ignored ({label})"))
        out.extend(relations_for(node, tensor, space[1], g))
    return out


def _inner_spaces_resolved(relations) -> list:
    """Every space coupled (through Couple chains) with an Inner one frozen for the same reason,
    and the expansions of those spaces into merged axes dropped."""
    root = couple_roots(relations)
    reasons = {root(rel.space): rel.reason for rel in relations if isinstance(rel, Inner)}
    if not reasons:
        return relations
    coupled = [s for rel in relations if isinstance(rel, Couple) for s in (rel.a, rel.b)]
    inner = [s for s in coupled + [rel.space for rel in relations if isinstance(rel, Inner)] if root(s) in reasons]
    kept = [rel for rel in relations if not isinstance(rel, Inner)
            and not (isinstance(rel, Expand) and root(rel.channel) in reasons)]
    return kept + [Freeze(s, reasons[root(s)]) for s in dict.fromkeys(inner)]


def _frozen_spaces(relations, widths) -> dict[Space, str]:
    frozen: dict[Space, str] = {}

    def freeze(spaces, reason):
        for s in spaces:
            frozen.setdefault(s, reason)

    for rel in relations:
        spaces = spaces_of(rel)
        if isinstance(rel, Freeze):
            freeze(spaces, rel.reason)
        elif any(widths.get(s) is None for s in spaces):
            freeze(spaces, "unknown channel count")
        elif isinstance(rel, Couple) and widths[rel.a] != widths[rel.b]:
            freeze(spaces, f"width mismatch between {rel.a[0]} and {rel.b[0]}")
        elif isinstance(rel, Offset) and rel.start + widths[rel.part] > widths[rel.whole]:
            freeze(spaces, f"slice of {rel.whole[0]} out of range")
        elif isinstance(rel, Expand) and (rel.index.shape[0] != widths[rel.channel]
                                          or rel.index.max(initial=0) >= widths[rel.flat]):
            freeze(spaces, f"expansion of {rel.channel[0]} does not fit {rel.flat[0]}")
    return frozen


def _members_and_fixups(relations, widths):
    members: dict[Space, list[Member]] = defaultdict(list)
    fixups = []
    for rel in relations:
        if isinstance(rel, Member) and widths.get(rel.space) is not None:
            members[rel.space].append(rel)
        elif isinstance(rel, Fixup):
            fixups.append(rel)
    return dict(members), fixups


def _build_groups(relations, widths, frozen, members) -> list[Group]:
    spaces, offsets, total = position_offsets(widths)
    space_of = np.empty(total, dtype=np.int64)
    local_of = np.empty(total, dtype=np.int64)
    for i, s in enumerate(spaces):
        space_of[offsets[s]: offsets[s] + widths[s]] = i
        local_of[offsets[s]: offsets[s] + widths[s]] = np.arange(widths[s])

    if total == 0:
        return []
    labels = tied_components(relations, widths, offsets, total)  # atoms
    frozen_reason = {}
    for s, reason in frozen.items():
        if s in offsets:
            for atom in np.unique(labels[offsets[s]: offsets[s] + widths[s]]):
                frozen_reason.setdefault(int(atom), f"{reason} [{s[0]}]")

    order = np.lexsort((local_of, space_of, labels))
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    by_signature: dict[tuple, list[np.ndarray]] = defaultdict(list)
    for chunk in np.split(order, bounds):
        by_signature[tuple(space_of[chunk].tolist())].append(chunk)

    groups = []
    for signature, atoms in by_signature.items():
        atoms.sort(key=lambda chunk: local_of[chunk[0]])
        stacked = np.stack(atoms)  # (n, len(signature)) global positions
        positions = {}
        for space_id in dict.fromkeys(signature):
            cols = [j for j, s in enumerate(signature) if s == space_id]
            positions[spaces[space_id]] = local_of[stacked[:, cols]]
        group_members = [m for s in positions for m in members.get(s, [])]
        reason = frozen_reason.get(int(labels[atoms[0][0]]))
        if reason is None and not any(m.role == "producer" and m.scored for m in group_members):
            reason = "no weighted producer writes these channels"
        groups.append(Group(len(groups), len(atoms), positions, reason, group_members))
    groups.sort(key=lambda grp: (grp.frozen is not None, _first_seen(grp, spaces)))
    for i, grp in enumerate(groups):
        grp.id = i
    return groups


def _first_seen(group: Group, spaces: list[Space]) -> int:
    return min(spaces.index(s) for s in group.positions)
