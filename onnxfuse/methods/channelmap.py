"""The one code path that shrinks a model: apply a linear map per group to every member.

A group of width n keeping m channels gets a map with m×n matrices:
  producer  weight rows: new channel j = Σ_i T[j, i] · old channel i;
  shift     biases and added constants (the producer matrix unless a method says otherwise);
  consumer  input columns: V'[:, j] = Σ_i T[j, i] · V[:, i];
  param     per-channel factors such as BN scales or depthwise kernels.
Plain pruning is the same map with a row selector in all of them. Merged heads may read each source
head's columns in another order (`columns`: its D channels aligned onto the kept head's). New channel j sits where the
group's `kept[j]` channel was, so every space keeps its surviving channels in their original order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from scipy.sparse import csr_matrix

from ..analysis.channels import Analysis, Group
from ..analysis.relations import Space
from ..graph.view import node_label


@dataclass
class GroupMap:
    kept: np.ndarray  # (m,) sorted channel indices of the group that hold the new channels
    producer: np.ndarray  # (m, n)
    consumer: np.ndarray  # (m, n)
    param: np.ndarray  # (m, n)
    shift: np.ndarray | None = None  # (m, n) for biases and added constants; default: producer
    columns: dict[Space, np.ndarray] | None = None  # heads: (m, n, k) column of source i new j reads

    @classmethod
    def selection(cls, width: int, kept) -> GroupMap:
        kept = np.sort(np.asarray(kept, dtype=np.int64))
        select = np.zeros((len(kept), width))
        select[np.arange(len(kept)), kept] = 1.0
        return cls(kept, select, select, select)

    def matrix(self, role: str) -> np.ndarray:
        if role == "shift":
            return self.producer if self.shift is None else self.shift
        return {"producer": self.producer, "consumer": self.consumer, "param": self.param}[role]


class SpaceMaps:
    """Per-space view of the group maps: new widths, old→new positions, role matrices."""

    def __init__(self, analysis: Analysis, maps: dict[int, GroupMap]):
        self.analysis = analysis
        self.maps = maps
        self.touching: dict[Space, list[Group]] = {}
        for group in analysis.groups:
            if group.id in maps:
                for space in group.positions:
                    self.touching.setdefault(space, []).append(group)
        self._keep: dict[Space, np.ndarray] = {}

    def keep_mask(self, space: Space) -> np.ndarray:
        if space not in self._keep:
            mask = np.ones(self.analysis.widths[space], dtype=bool)
            for group in self.touching.get(space, []):
                dropped = np.setdiff1d(np.arange(group.width), self.maps[group.id].kept)
                mask[group.positions[space][dropped].ravel()] = False
            self._keep[space] = mask
        return self._keep[space]

    def new_width(self, space: Space) -> int | None:
        if self.analysis.widths.get(space) is None:
            return None
        return int(self.keep_mask(space).sum())

    def new_index(self, space: Space, old_position: int) -> int:
        """Number of surviving channels before `old_position` (where a slice now starts)."""
        return int(self.keep_mask(space)[:old_position].sum())

    def slot_positions(self, group: Group, space: Space) -> np.ndarray:
        """(m, k): where the group's new channels sit in the shrunk tensor of `space`."""
        new_pos = np.cumsum(self.keep_mask(space)) - 1
        return new_pos[group.positions[space][self.maps[group.id].kept]]

    def matrix(self, space: Space, role: str) -> csr_matrix:
        width = self.analysis.widths[space]
        mask = self.keep_mask(space)
        new_pos = np.cumsum(mask) - 1
        untouched = np.ones(width, dtype=bool)
        rows, cols, vals = [], [], []
        for group in self.touching.get(space, []):
            pos = group.positions[space]  # (n, k)
            untouched[pos.ravel()] = False
            gmap = self.maps[group.id]
            t = gmap.matrix(role)  # (m, n)
            r = np.broadcast_to(new_pos[pos[gmap.kept]][:, None, :], (t.shape[0],) + pos.shape)
            if gmap.columns and space in gmap.columns:  # each head read through its alignment
                c = pos[np.arange(pos.shape[0])[None, :, None], gmap.columns[space]]
            else:
                c = np.broadcast_to(pos[None, :, :], r.shape)
            v = np.broadcast_to(t[:, :, None], r.shape)
            nz = v != 0
            rows.append(r[nz])
            cols.append(c[nz])
            vals.append(v[nz])
        same = np.flatnonzero(untouched)
        rows.append(new_pos[same])
        cols.append(same)
        vals.append(np.ones(len(same)))
        return csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(int(mask.sum()), width))


def apply_maps(graph: gs.Graph, analysis: Analysis, maps: dict[int, GroupMap]) -> SpaceMaps:
    """Rewrite every member constant, attribute and shape constant of the mapped groups."""
    maps = {gid: m for gid, m in maps.items() if not _is_identity(m, analysis.groups[gid].width)}
    space_maps = SpaceMaps(analysis, maps)
    tensors = graph.tensors()
    done: dict[tuple[str, int], Space] = {}
    for space in space_maps.touching:
        for member in analysis.members.get(space, []):
            key = (member.tensor, member.axis)
            if key in done:
                if done[key] != space:
                    raise RuntimeError(f"{member.tensor} axis {member.axis} belongs to two channel spaces")
                continue
            done[key] = space
            constant = tensors[member.tensor]
            constant.values = _apply_along(np.asarray(constant.values), member.axis,
                                           space_maps.matrix(space, member.role))
    changed = {s[0] for s in space_maps.touching if space_maps.new_width(s) != analysis.widths[s]}
    nodes = {node_label(n): n for n in graph.nodes}
    for fixup in analysis.fixups:
        node = nodes[fixup.node]
        if any(t.name in changed for t in list(node.inputs) + list(node.outputs)):
            fixup.apply(node, space_maps.new_width, space_maps.new_index)
    return space_maps


CHUNK = 1 << 22  # elements of float64 work array at a time


def _apply_along(values: np.ndarray, axis: int, matrix: csr_matrix) -> np.ndarray:
    """`matrix` applied along `axis` in float64, a chunk of columns at a time (every output
    element is its own sum, so chunks change nothing but the size of the work arrays)."""
    moved = np.moveaxis(values, axis, 0)
    flat = moved.reshape(moved.shape[0], -1)
    out = np.empty((matrix.shape[0], flat.shape[1]), dtype=values.dtype)
    step = max(1, CHUNK // max(1, flat.shape[0]))
    for start in range(0, flat.shape[1], step):
        out[:, start:start + step] = matrix @ flat[:, start:start + step].astype(np.float64)
    out = out.reshape((matrix.shape[0],) + moved.shape[1:])
    return np.ascontiguousarray(np.moveaxis(out, 0, axis))


def _is_identity(gmap: GroupMap, width: int) -> bool:
    return len(gmap.kept) == width and all(
        np.array_equal(gmap.matrix(r), np.eye(width)) for r in ("producer", "shift", "consumer", "param"))
