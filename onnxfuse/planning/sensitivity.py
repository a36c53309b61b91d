"""Sensitivity-aware allocation: how much of each group to remove under a MAC budget.

Every prunable group is shrunk alone at a few sparsities with the configured method (fusion,
repair and all, the repair fitted on part of the calibration data) and the damage is measured on
the held-out rest as the output error relative to the output's variance. Then, starting from the
dense model, the group step with the least extra damage per MAC saved is taken until the
estimated MACs meet the budget. Narrow, sensitive groups (a stem, say) are left wider because the
measurement says so, not because of a rule.
"""

from __future__ import annotations

import numpy as np

from ..errors import OnnxfuseError
from .counts import estimated_mac_ratio, keep_count, unit_multiple

LEVELS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)


def measure_sensitivity(analysis, probes, levels=LEVELS) -> dict[int, dict[float, float]]:
    """Damage of every prunable group shrunk alone at each level (`probes`: planning/probes.py)."""
    return measure_choices(analysis, probes, {None: None}, levels)[None]


def measure_choices(analysis, probes, choices: dict, levels=LEVELS, same_damage=None) -> dict:
    """measure_sensitivity for each importance in `choices` (name -> scores per group; None: the
    run's own). `same_damage(gid, level, scores)`: true when a choice must damage exactly as the
    first does there (the same channels kept, a method that reads nothing else), so it is not probed."""
    first = next(iter(choices))
    tables = {name: {g.id: {0.0: 0.0} for g in analysis.prunable} for name in choices}
    steps, copied = [], []
    for name, scores in choices.items():
        for gid, level in ((g.id, level) for g in analysis.prunable for level in levels):
            shared = name != first and same_damage is not None and same_damage(gid, level, scores)
            (copied if shared else steps).append((name, gid, level))
    changes = [{"sparsity": level, "only_groups": (gid,)} | ({} if choices[name] is None else
                                                              {"scores": {gid: choices[name][gid]}})
               for name, gid, level in steps]
    for (name, gid, level), value in zip(steps, probes.damages(changes, "sensitivity")):
        tables[name][gid][level] = value
    for name, gid, level in copied:
        tables[name][gid][level] = tables[first][gid][level]
    return tables


def least_damage(tables: dict) -> dict[int, str]:
    """Per group, the choice whose damage averaged over the measured levels is least (ties: the first)."""
    names = list(tables)
    gids = tables[names[0]]
    return {gid: min(names, key=lambda n: (np.mean(list(tables[n][gid].values())), names.index(n)))
            for gid in gids}


def best_plan(probes, candidates: dict[str, dict[int, int]]) -> tuple[str, dict[int, int], dict[str, float]]:
    """The candidate allocation whose whole-network damage on the calibration data is smallest:
    per-group measurements ignore how groups interact, so the greedy plan must beat uniform."""
    damage = dict(zip(candidates, probes.damages([{"fixed_counts": counts} for counts in candidates.values()])))
    name = min(damage, key=damage.get)
    return name, candidates[name], damage


def allocate(analysis, damage: dict[int, dict[float, float]], target: float, round_to: int = 1,
             ratio_of=None, what: str = "MACs") -> dict[int, int]:
    """Greedy: raise the sparsity of the group whose next level costs the least damage per unit of
    `ratio_of(counts)` saved (default: the estimated MAC ratio), then take back steps that the
    budget does not need."""
    groups = {g.id: g for g in analysis.prunable}
    multiple = {gid: unit_multiple(g, round_to) for gid, g in groups.items()}
    level = {gid: 0.0 for gid in groups}
    ratio_of = ratio_of or (lambda counts: estimated_mac_ratio(analysis, counts))

    def counts(levels):
        return {gid: keep_count(groups[gid].width, s, multiple[gid]) for gid, s in levels.items()}

    def next_step(gid, current):
        """The lowest measured level above `current` that keeps fewer channels: with --round-to,
        neighbouring levels can round to the same count, and such a step saves nothing."""
        now = keep_count(groups[gid].width, current, multiple[gid])
        return next((s for s in sorted(damage[gid]) if s > current
                     and keep_count(groups[gid].width, s, multiple[gid]) < now), None)

    ratio = ratio_of(counts(level))
    while ratio > target:
        best, best_cost = None, np.inf
        for gid, current in level.items():
            step = next_step(gid, current)
            if step is None:
                continue
            saved = ratio - ratio_of(counts({**level, gid: step}))
            if saved <= 0:
                continue
            cost = (damage[gid][step] - damage[gid][current]) / saved
            if cost < best_cost:
                best, best_cost = (gid, step), cost
        if best is None:
            raise OnnxfuseError(f"cannot reach {target:.3f} of the {what} with the measured sparsity levels "
                                f"(reached {ratio:.3f})")
        level[best[0]] = best[1]
        ratio = ratio_of(counts(level))
    return counts(_taken_back(level, damage, target, lambda levels: ratio_of(counts(levels)), counts))


def _taken_back(level: dict, damage: dict, target: float, ratio_of, counts) -> dict:
    """The greedy's last steps can overshoot the budget (coarse steps under --round-to): step back
    the group whose lower level saves the most damage while the budget still holds, until none can."""
    while True:
        best, best_gain = None, 0.0
        for gid, current in level.items():
            kept = counts({gid: current})[gid]
            lower = max((s for s in damage[gid] if s < current and counts({gid: s})[gid] > kept), default=None)
            if lower is None or ratio_of({**level, gid: lower}) > target:
                continue
            gain = damage[gid][current] - damage[gid][lower]
            if gain > best_gain:
                best, best_gain = (gid, lower), gain
        if best is None:
            return level
        level = {**level, best[0]: best[1]}


NEIGHBOURS = 2  # plans one trade away from the greedy and uniform ones that the whole-network damage also judges


def neighbour_plans(analysis, damage: dict[int, dict[float, float]], starts: list[dict[int, int]], target: float,
                    round_to: int = 1) -> list[dict[int, int]]:
    """Plans one trade away from each start: one group keeps one step more, the others pay for it
    with the steps that cost the least damage per MAC saved, and what the budget then leaves is
    given back; the NEIGHBOURS with the least summed damage that are not starts. Under coarse steps
    (--round-to 8 on narrow groups) the greedy's one-step-at-a-time choice misses such trades."""
    groups = {g.id: g for g in analysis.prunable}
    counts, costs = {}, {}  # per group, ascending: the counts it can keep; the damage of the lowest level keeping each
    for gid, g in groups.items():
        multiple = unit_multiple(g, round_to)
        first = {}
        for level in sorted(damage[gid]):
            first.setdefault(keep_count(g.width, level, multiple), damage[gid][level])
        counts[gid] = np.array(sorted(first))
        costs[gid] = np.array([first[c] for c in counts[gid]])

    def cost(gid, count):  # a start's count between two measured ones (uniform's) is interpolated
        return float(np.interp(count, counts[gid], costs[gid]))

    def ratio(plan):
        return estimated_mac_ratio(analysis, plan)

    def step(plan, gid, up):
        known = counts[gid]
        i = np.searchsorted(known, plan[gid], side="right" if up else "left") - (0 if up else 1)
        return int(known[i]) if 0 <= i < len(known) else None

    def paid_for(plan, raised):
        while (now := ratio(plan)) > target:
            moves = [(gid, c) for gid in groups if gid != raised and (c := step(plan, gid, False)) is not None]
            priced = [((cost(gid, c) - cost(gid, plan[gid])) / saved, gid, c) for gid, c in moves
                      if (saved := now - ratio({**plan, gid: c})) > 0]
            if not priced:
                return None
            _, gid, c = min(priced)
            plan = {**plan, gid: c}
        while True:  # give back
            moves = [(cost(gid, plan[gid]) - cost(gid, c), gid, c) for gid in groups
                     if (c := step(plan, gid, True)) is not None and ratio({**plan, gid: c}) <= target]
            if not moves:
                return plan
            _, gid, c = max(moves)
            plan = {**plan, gid: c}

    seen = list(starts)
    found = []
    for start in starts:
        for gid in groups:
            up = step(start, gid, True)
            plan = None if up is None else paid_for({**start, gid: up}, gid)
            if plan is not None and plan not in seen:
                seen.append(plan)
                found.append((sum(cost(g, c) for g, c in plan.items()), len(found), plan))
    return [plan for _, _, plan in sorted(found)[:NEIGHBOURS]]


def importance_damage(groups, scores: dict[int, np.ndarray], levels=LEVELS, round_to: int = 1) -> dict:
    """Damage without data: the share of a group's importance that each sparsity level removes."""
    damage = {}
    for g in groups:
        ranked, total = np.sort(scores[g.id]), max(float(scores[g.id].sum()), 1e-12)
        kept = {s: keep_count(g.width, s, unit_multiple(g, round_to)) for s in levels}
        damage[g.id] = {0.0: 0.0, **{s: float(ranked[:g.width - kept[s]].sum()) / total
                                     for s in levels}}
    return damage
