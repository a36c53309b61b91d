"""Probes: the one way planning re-runs part of the pipeline.

A probe forks the live Context at the plan pass (the graph after normalize, analyze, capture and
score, copied; the analysis, captures and scores shared, read-only), changes some options, and runs
the back half of the pass list on the fork: plan → fuse → repair to measure the damage of a plan on
held-out calibration data, or score → plan → fuse → emit (plain pruning, no data) to get a model with
given widths for latency timing. Load, normalize and analyze never run again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import onnx

from ..calibration.data import Dataset
from ..graph.convert import export_model, runnable
from ..runtime.sessions import run, session
from ..scaleout import run_tasks

PROBE_SAMPLES = 128  # at most, held out from the probe's repair
HELD_OUT_DIVISOR = 4  # a quarter of the calibration samples judge the probes: a repair fitted and judged
# on the same samples looks better the more it overfits, which would favour plans that leave many small refits
DAMAGE_PASSES = ("plan", "fuse", "repair")
PRUNED_PASSES = ("score", "plan", "fuse", "emit")
COMPRESSED_PASSES = ("plan", "fuse", "repair", "emit")
PROBE_REPAIR = {"select": "lsq"}  # a damage probe compares plans; the repair's own held-out choice would
# cost three refits per probe and judge on a quarter of the probe's quarter


class Probes:
    def __init__(self, ctx, run_passes: Callable, remote_damage: Callable | None = None):
        """`run_passes(ctx, names)` runs the passes of the current list with these names on `ctx`;
        `remote_damage(snapshot, changes)` is `damage(**changes)` on a worker, from `snapshot()`."""
        self._ctx = ctx
        self._run = run_passes
        self._remote_damage = remote_damage

    def damage(self, only_groups: tuple[int, ...] | None = None, fixed_counts: dict[int, int] | None = None,
               scores: dict[int, np.ndarray] | None = None, **changes) -> float:
        """Output damage of the configured method and repair with some options changed (and other
        importance scores for some groups), the repair fitted on part of the calibration data and
        judged on the held-out rest."""
        ctx = self._ctx
        fit, held_out = ctx.calibration.calib.split(HELD_OUT_DIVISOR, PROBE_SAMPLES)
        options = dataclasses.replace(ctx.options, target_macs=None, target_latency=None, allocate="uniform",
                                      min_agreement=None, max_accuracy_drop=None, validate=False,
                                      repair=PROBE_REPAIR.get(ctx.options.repair, ctx.options.repair), **changes)
        probe = self._fork(options, dataclasses.replace(ctx.calibration, calib=fit), only_groups, fixed_counts, scores)
        probe = self._run(probe, DAMAGE_PASSES)
        return output_damage(ctx.model.model_source, runnable(probe.model.graph, ctx.model.original), held_out)

    def damages(self, changes: list[dict], desc: str | None = None) -> list[float]:
        """[damage(**c) for c in changes]: with --ray, as Ray tasks, each on a copy of the context."""
        ray = self._ctx.options.ray
        if not ray or self._remote_damage is None:
            return run_tasks(lambda c: self.damage(**c), [(c,) for c in changes], None, desc=desc)
        return run_tasks(self._remote_damage, [(c,) for c in changes], ray, shared=self.snapshot(), desc=desc)

    def snapshot(self) -> tuple:
        """The context as a worker needs it: without its Probes, its graph as ONNX bytes beside it
        (graphsurgeon graphs do not pickle), the original as a proto unless its weights are external
        data (then its file, which the workers must see at the same path)."""
        ctx = self._ctx
        model = dataclasses.replace(ctx.model, graph=None)
        if not model.weights_dir:
            model.source = model.original
        return (dataclasses.replace(ctx, probes=None, model=model),
                export_model(ctx.model.graph, ctx.model.original).SerializeToString())

    def compressed(self, fixed_counts: dict[int, int]) -> onnx.ModelProto:
        """The model the configured recipe gives at these widths, the repair fitted on all the
        calibration data (what the quality search judges on the validation data)."""
        ctx = self._ctx
        options = dataclasses.replace(ctx.options, target_macs=None, min_agreement=None, max_accuracy_drop=None,
                                      allocate="uniform", validate=False)
        probe = self._fork(options, ctx.calibration, None, fixed_counts)
        return self._run(probe, COMPRESSED_PASSES).model.result

    def pruned(self, fixed_counts: dict[int, int] | None = None, only_groups: tuple[int, ...] | None = None,
               **changes) -> onnx.ModelProto:
        """The model pruned to the given widths, no data (prune and fuse give the same shapes, so the same time)."""
        ctx = self._ctx
        options = dataclasses.replace(ctx.options, method="prune", importance="l1", repair="none", calib=None,
                                      data=None, target_latency=None, target_macs=None, allocate="uniform",
                                      min_agreement=None, max_accuracy_drop=None, validate=False, **changes)
        calibration = type(ctx.calibration)()
        return self._run(self._fork(options, calibration, only_groups, fixed_counts), PRUNED_PASSES).model.result

    def _fork(self, options, calibration, only_groups, fixed_counts, scores=None):
        ctx = self._ctx
        model = dataclasses.replace(ctx.model, graph=ctx.model.graph.copy(), before_fuse=None, result=None)
        if scores:
            scores = {**ctx.decisions.scores, **scores}
        decisions = type(ctx.decisions)(scores=scores or ctx.decisions.scores, only_groups=only_groups,
                                        fixed_counts=fixed_counts)
        return dataclasses.replace(ctx, options=options, model=model, calibration=calibration, decisions=decisions,
                                   report={}, probes=None)


def output_damage(original, compressed, data: Dataset) -> float:
    """Mean squared error of the first output relative to its variance (0 = unchanged)."""
    return relative_damage(first_output(original, data), first_output(compressed, data))


def first_output(model, data: Dataset) -> np.ndarray:
    return run(session(model, "cpu"), data, 64)[0].astype(np.float64)


def relative_damage(reference: np.ndarray, output: np.ndarray) -> float:
    return float(((output - reference) ** 2).mean() / max(reference.var(), 1e-12))
