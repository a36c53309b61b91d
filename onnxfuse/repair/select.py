"""`select`: the repair chosen by error on calibration samples held out from the fit.

The last quarter of the calibration samples (at most 128, as for the sensitivity probes) judges,
the rest fits. Three
candidates, each from the unrepaired graph: `none`; `lsq` (whose refits already keep a consumer's
weights when the refit is not better on every held-out fold); `stats+lsq`: the statistics
correction producer by producer in graph order, each kept only when it lowers the held-out output
damage, then `lsq`. The candidate with the least held-out damage is run again on all the samples
(`stats+lsq` with the producers it kept). So a repair never leaves the model worse on held-out
samples than no repair: `none` is one of the candidates.
"""

from __future__ import annotations

import dataclasses

from ..graph.convert import runnable
from ..planning.probes import HELD_OUT_DIVISOR, PROBE_SAMPLES, first_output, relative_damage
from .lsq import repair_lsq
from .registry import RepairJob, register_repair
from .stats import correct_unit, stats_units

CANDIDATES = ("none", "lsq", "stats+lsq")


@register_repair("select")
def repair_select(job: RepairJob) -> list[dict]:
    fit, held_out = job.data.split(HELD_OUT_DIVISOR, PROBE_SAMPLES)
    if len(held_out) == len(job.data):  # a single sample: nothing to judge on
        return [{"choice": "lsq", "reason": "one calibration sample"}, *repair_lsq(job)]
    reference = first_output(job.original, held_out)

    def damage(graph) -> float:
        return relative_damage(reference, first_output(runnable(graph, job.like), held_out))

    trial = dataclasses.replace(job, data=fit)
    scores = {"none": damage(job.graph)}
    lsq_graph = job.graph.copy()
    repair_lsq(dataclasses.replace(trial, graph=lsq_graph))
    scores["lsq"] = damage(lsq_graph)
    stats_graph, kept = _helpful_stats(trial, damage, scores["none"])
    repair_lsq(dataclasses.replace(trial, graph=stats_graph))
    scores["stats+lsq"] = damage(stats_graph)
    choice = min(CANDIDATES, key=lambda name: (scores[name], CANDIDATES.index(name)))
    row = {"choice": choice, "held_out_samples": len(held_out), "stats_kept": sorted(kept),
           "held_out_damage": {name: round(value, 6) for name, value in scores.items()}}
    rows = [row]
    if choice == "stats+lsq":
        rows += [correct_unit(job, unit) for unit in stats_units(job) if unit.space[0] in kept]
    if choice != "none":
        rows += repair_lsq(job)
    return rows


def _helpful_stats(job: RepairJob, damage, start: float):
    """(graph, producers kept): the statistics correction producer by producer (by output tensor),
    each kept only when it lowers the held-out damage."""
    graph, kept, best = job.graph.copy(), set(), start
    for unit in stats_units(job):
        candidate = graph.copy()
        try:
            correct_unit(dataclasses.replace(job, graph=candidate), unit)
        except NotImplementedError:
            continue
        now = damage(candidate)
        if now < best:
            graph, best = candidate, now
            kept.add(unit.space[0])
    return graph, kept
