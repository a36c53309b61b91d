"""Aligning heads before they merge (Transformer Fusion with OT, Imfeld et al., ICLR 2024).

Two heads that compute the same thing may hold their D channels in different orders: Q·Kᵀ only sees
Q's and K's channels in pairs, and the output projection only reads V's channels through its own
columns. Before head i merges into head j its coordinates are permuted onto j's, one permutation per
system (analysis/within.py: the Q·Kᵀ side and the A·V side), found by a linear assignment on the
heads' weight rows at each coordinate. The cost between two heads is their distance after that
alignment (on unit-norm features, as for channels), so a head whose D channels are a permutation
of another's is its duplicate; and the map reads head i's columns through the permutation, so
merging such a duplicate is exact.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from ..analysis.channels import Group, member_rows
from ..analysis.relations import Space
from ..analysis.within import SYSTEM


class HeadAlignment:
    """Built for a group with coordinates (Group.coords); `build` returns None where the group's
    weights do not cover every coordinate of a system alike (then heads merge unaligned)."""

    def __init__(self, coords, systems, rest, producers, p: int):
        self.coords, self.systems, self.rest, self.producers, self.p = coords, systems, rest, producers, p
        self.ids = np.unique(np.concatenate(list(coords.values())))
        squares = sum((f ** 2).sum(axis=(1, 2)) for _, f in systems.values()) + (rest ** 2).sum(axis=1)
        self.scale = 1.0 / np.where(squares > 0, np.sqrt(squares), 1.0)
        self._pairs: dict[tuple[int, int], tuple[float, np.ndarray]] = {}

    @classmethod
    def build(cls, group: Group, tensors, p: int, roles=("producer", "consumer", "param")) -> HeadAlignment | None:
        n, systems, rest, producers = group.width, {}, [], []
        for member, rows in member_rows(group, tensors, min_ndim=2, roles=roles):
            if member.role == "producer":
                producers.append((member.space, rows))
            if member.space not in group.coords:
                rest.append(rows.reshape(n, -1))
                continue
            for system, ids, block in _by_system(group.coords[member.space], rows):
                systems.setdefault(system, []).append((ids, block))
        features = {}
        for system, parts in systems.items():
            if any(not np.array_equal(ids, parts[0][0]) for ids, _ in parts):
                return None
            features[system] = (parts[0][0], np.concatenate([block for _, block in parts], axis=2))
        if not features:
            return None
        return cls(group.coords, features, np.concatenate(rest, axis=1) if rest else np.zeros((n, 0)), producers, p)

    def cost(self, sources, targets, onto: HeadAlignment | None = None) -> np.ndarray:
        """(len(sources), len(targets)) distance of each source head aligned onto each target head
        (of `onto`, another model's same group, when given)."""
        return np.array([[self._pair(int(i), int(k), onto)[0] for k in targets] for i in sources]).reshape(
            len(sources), len(targets))

    def columns(self, kept: np.ndarray, plan: np.ndarray, onto: HeadAlignment | None = None) -> dict[Space, np.ndarray]:
        """Per space, (m, n, k): the column of source head i that new head j reads at each column
        (`onto`: the heads j are another model's, as in model merge; else this group's kept ones)."""
        m, n = plan.shape
        out = {}
        for space, coords in self.coords.items():
            index, occurrence = np.searchsorted(self.ids, coords), _occurrence(coords)
            lookup = np.full((len(self.ids), occurrence.max() + 1), -1)
            lookup[index, occurrence] = np.arange(len(coords))
            cols = np.broadcast_to(np.arange(len(coords)), (m, n, len(coords))).copy()
            for j, i in zip(*np.nonzero(plan)):
                if i != kept[j] or onto is not None:
                    cols[j, i] = lookup[self._pair(int(i), int(kept[j]), onto)[1][index], occurrence]
            out[space] = cols
        return out

    def merged_producers(self, kept: np.ndarray, weights: np.ndarray, columns: dict[Space, np.ndarray]) -> np.ndarray:
        """(m, f): Σ_i weights[j, i] · producer rows of head i aligned onto kept head j (`columns`:
        self.columns of a plan with the nonzeros of `weights`), the producer members side by side as
        intra_fusion.member_features puts them."""
        parts = []
        for space, rows in self.producers:
            cols = columns.get(space, np.broadcast_to(np.arange(rows.shape[1]), weights.shape + rows.shape[1:2]))
            aligned = rows[np.arange(rows.shape[0])[None, :, None], cols]  # (m, n, k, d)
            parts.append(np.einsum("ji,jikd->jkd", weights, aligned).reshape(len(kept), -1))
        return np.concatenate(parts, axis=1)

    def _pair(self, source: int, target: int, onto: HeadAlignment | None = None) -> tuple[float, np.ndarray]:
        """The distance of `source` aligned onto `target` (a head of `onto`, default this group),
        and the alignment: over indices into self.ids, the coordinate of `source` that lines up with
        each coordinate of `target`."""
        onto = onto or self
        key = (source, target, id(onto))
        if key not in self._pairs:
            perm, total = np.arange(len(self.ids)), 0.0
            metric = "cityblock" if self.p == 1 else "sqeuclidean"
            for system, (ids, features) in self.systems.items():
                target_features = onto.systems[system][1][target] * onto.scale[target]
                cost = cdist(target_features, features[source] * self.scale[source], metric)
                rows, cols = linear_sum_assignment(cost)
                total += cost[rows, cols].sum()
                index = np.searchsorted(self.ids, ids)
                perm[index[rows]] = index[cols]
            total += cdist(onto.rest[[target]] * onto.scale[target], self.rest[[source]] * self.scale[source],
                           metric)[0, 0]
            self._pairs[key] = (total if self.p == 1 else float(np.sqrt(total)), perm)
        return self._pairs[key]


def _by_system(coords: np.ndarray, rows: np.ndarray):
    """rows (n, k, d) of one member split by system: (system key, its coordinate ids, (n, D, r·d)),
    the r columns of each coordinate side by side."""
    order = np.lexsort((np.arange(len(coords)), coords))
    for system in np.unique(coords[order] // SYSTEM):
        picked = order[coords[order] // SYSTEM == system]
        ids, counts = np.unique(coords[picked], return_counts=True)
        if (counts != counts[0]).any():  # an uneven block: no alignment for this member
            continue
        block = rows[:, picked, :].reshape(rows.shape[0], len(ids), counts[0] * rows.shape[2])
        yield int(system), ids, block


def _occurrence(coords: np.ndarray) -> np.ndarray:
    """For each column, how many earlier columns hold the same coordinate."""
    order = np.argsort(coords, kind="stable")
    first = np.searchsorted(coords[order], coords[order], side="left")
    rank = np.empty(len(coords), dtype=np.int64)
    rank[order] = np.arange(len(coords)) - first
    return rank
