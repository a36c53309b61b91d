"""How many channels each group keeps, and which.

Uniform: every group keeps int(n · (1 − sparsity)) channels (Torch-Pruning's count). Global: the
mean-normalised importances of all prunable groups are ranked together and the least important
channels go, each group losing at most `max_sparsity` of its channels. Either way the count is
rounded down to a multiple of `round_to` channels (of units that span several channels, a head
of D, as many as keep the channel count a multiple: `unit_multiple`), and `target_macs` searches
the sparsity whose estimated MACs meet the budget (then, with a multiple above 1, gives back what
the budget still allows: `_given_back`).
"""

from __future__ import annotations

import math

import numpy as np

from ..analysis.channels import Analysis, Group
from ..errors import OnnxfuseError


def unit_multiple(group: Group, round_to: int) -> int:
    """The multiple of the group's units to keep so that every weighted tensor it runs through keeps
    a multiple of `round_to` channels: a unit spanning k channels there (a head of D features, a
    flattened channel) needs round_to / gcd(round_to, k) of them; a plain channel needs round_to."""
    if round_to <= 1:
        return 1
    spans = {group.positions[m.space].shape[1] for m in group.members if m.space in group.positions} or {1}
    return math.lcm(*(round_to // math.gcd(round_to, k) for k in spans))


def keep_count(width: int, sparsity: float, round_to: int = 1) -> int:
    """Channels kept at `sparsity`: int(width · (1 − sparsity)), rounded down to a multiple of
    `round_to`, at least one multiple (or the whole group)."""
    return _round(int(width * (1 - sparsity)), width, round_to)


def _round(keep: int, width: int, round_to: int) -> int:
    if round_to > 1:
        keep -= keep % round_to
        keep = max(keep, min(round_to, width))
    return min(max(keep, 1), width)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, in channel order (ties keep the earlier channel)."""
    order = np.argsort(-scores, kind="stable")
    return np.sort(order[:k])


def keep_counts(groups: list[Group], scores: dict[int, np.ndarray], sparsity: float, round_to: int = 1,
                global_ranking: bool = False, max_sparsity: float = 1.0) -> dict[int, int]:
    if not global_ranking:
        return {g.id: _round(max(int(g.width * (1 - sparsity)), _floor_keep(g.width, max_sparsity)),
                             g.width, unit_multiple(g, round_to)) for g in groups}
    all_scores = np.concatenate([scores[g.id] for g in groups]) if groups else np.zeros(0)
    n_pruned = len(all_scores) - int(len(all_scores) * (1 - sparsity))
    if n_pruned <= 0:
        return {g.id: g.width for g in groups}
    threshold = np.partition(all_scores, n_pruned - 1)[n_pruned - 1]
    counts = {}
    for g in groups:
        keep = int((scores[g.id] > threshold).sum())
        counts[g.id] = _round(max(keep, _floor_keep(g.width, max_sparsity)), g.width, unit_multiple(g, round_to))
    return counts


def _floor_keep(width: int, max_sparsity: float) -> int:
    """The fewest channels a group may keep when at most `max_sparsity` of them may go."""
    return width - int(width * max_sparsity)


def estimated_mac_ratio(analysis: Analysis, counts: dict[int, int]) -> float:
    """MACs after / before, from the new widths: each weighted node's MACs scale with the ratio
    of new to old width of every channel space its weights run over."""
    total = sum(analysis.node_macs.values())
    if not total:
        return 1.0
    factors = node_factors(analysis, counts)
    return sum(macs * factors.get(node, 1.0) for node, macs in analysis.node_macs.items()) / total


def node_factors(analysis: Analysis, counts: dict[int, int]) -> dict[str, float]:
    """Per node with MACs, the fraction of them left with the new widths."""
    dropped: dict = {}
    for group in analysis.groups:
        if group.id not in counts:
            continue
        for space, pos in group.positions.items():
            dropped[space] = dropped.get(space, 0) + (group.width - counts[group.id]) * pos.shape[1]
    return {node: float(np.prod([1 - dropped[s] / analysis.widths[s] for s in spaces if s in dropped]))
            for node, spaces in node_spaces(analysis).items()}


def node_spaces(analysis: Analysis) -> dict[str, set]:
    """The channel spaces each node's MACs run over: its weights' (scored members), and for a
    product of two activations its output and summed axes."""
    spaces: dict[str, set] = {node: set(s) for node, s in analysis.product_spaces.items()}
    for space, members in analysis.members.items():
        for m in members:
            if m.scored:
                spaces.setdefault(m.node, set()).add(space)
    return spaces


def solve_sparsity_for_macs(analysis: Analysis, scores: dict[int, np.ndarray], target: float, round_to: int = 1,
                            global_ranking: bool = False, max_sparsity: float = 1.0) -> tuple[float, dict[int, int]]:
    """The smallest sparsity whose estimated MACs ratio is at most `target` (bisection)."""
    if not 0 < target <= 1:
        raise OnnxfuseError(f"target-macs must be in (0, 1], got {target}")
    groups = analysis.prunable

    def counts_at(s):
        return keep_counts(groups, scores, s, round_to, global_ranking, max_sparsity)

    lo, hi = 0.0, 0.999
    if estimated_mac_ratio(analysis, counts_at(hi)) > target:
        best = estimated_mac_ratio(analysis, counts_at(hi))
        raise OnnxfuseError(f"cannot reach {target:.3f} of the MACs: the prunable groups allow {best:.3f} at most")
    for _ in range(40):
        mid = (lo + hi) / 2
        if estimated_mac_ratio(analysis, counts_at(mid)) <= target:
            hi = mid
        else:
            lo = mid
    counts = counts_at(hi)
    if round_to > 1 and not global_ranking:
        counts = _given_back(analysis, counts, target, round_to)
    return hi, counts


def _given_back(analysis: Analysis, counts: dict[int, int], target: float, round_to: int) -> dict[int, int]:
    """With a multiple above 1, the groups of one width cross a multiple together, so the bisection
    can stop well below the budget. Multiples are then given back one at a time, each to the group
    that keeps the smallest fraction of its channels among those it still fits, while the estimate
    stays within the target (a group that does not fit now never will: the estimate only grows)."""
    groups = {g.id: g for g in analysis.prunable}
    counts = dict(counts)
    open_ids = set(counts)
    while open_ids:
        gid = min(open_ids, key=lambda i: (counts[i] / groups[i].width, i))
        trial = {**counts, gid: counts[gid] + unit_multiple(groups[gid], round_to)}
        if trial[gid] <= groups[gid].width and estimated_mac_ratio(analysis, trial) <= target:
            counts = trial
        else:
            open_ids.discard(gid)
    return counts
