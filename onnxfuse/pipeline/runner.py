"""Run a pass list over a Context: options resolved (the recipe's defaults, the device's channel
multiple) and checked once before the first pass, then the passes (steps.py)."""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from ..graph.convert import import_graph
from ..planning.probes import Probes
from .build import passes as build_passes
from .context import Context
from .contract import Pass
from .defaults import reported_defaults
from .steps import run_passes


def run(ctx: Context, stop_after: str | None = None, passes: Sequence[Pass] | None = None) -> Context:
    ctx.report["defaults"] = reported_defaults(ctx.options)
    ctx.options = ctx.options.resolved()
    pass_list = list(passes) if passes is not None else build_passes(ctx.options)
    names = [p.name for p in pass_list]
    if stop_after is not None and stop_after not in names:
        raise ValueError(f"unknown pass {stop_after!r}; the passes are {', '.join(names)}")
    ctx.probes = _probes(ctx, pass_list)
    end = names.index(stop_after) + 1 if stop_after is not None else len(pass_list)
    return run_passes(ctx, pass_list[:end])


def _probes(ctx: Context, pass_list: list[Pass]) -> Probes:
    return Probes(ctx, lambda probe, wanted: run_passes(probe, [p for p in pass_list if p.name in wanted]),
                  remote_damage=damage_task)


def damage_task(snapshot: tuple, changes: dict) -> float:
    """One damage probe on a Ray worker (Probes.damages with --ray), from Probes.snapshot()."""
    ctx, graph = snapshot
    ctx.model.graph = import_graph(onnx.load_from_string(graph), ctx.model.weights_dir)
    return _probes(ctx, build_passes(ctx.options)).damage(**changes)
