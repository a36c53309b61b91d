"""Run a pass list over a Context: options resolved (the recipe's defaults, the device's channel
multiple) and checked once before the first pass, each pass's contract checked, its time recorded,
and an internal error reported with the pass it came from (a user's OnnxfuseError passes through
unchanged)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from ..errors import OnnxfuseError
from ..planning.probes import Probes
from .build import passes as build_passes
from .context import Context
from .contract import Pass, PassContractError, PassFailed
from .defaults import reported_defaults


def run(ctx: Context, stop_after: str | None = None, passes: Sequence[Pass] | None = None) -> Context:
    ctx.report["defaults"] = reported_defaults(ctx.options)
    ctx.options = ctx.options.resolved()
    pass_list = list(passes) if passes is not None else build_passes(ctx.options)
    names = [p.name for p in pass_list]
    if stop_after is not None and stop_after not in names:
        raise ValueError(f"unknown pass {stop_after!r}; the passes are {', '.join(names)}")
    ctx.probes = Probes(ctx, lambda probe, wanted: run_passes(probe, [p for p in pass_list if p.name in wanted]))
    end = names.index(stop_after) + 1 if stop_after is not None else len(pass_list)
    return run_passes(ctx, pass_list[:end])


def run_passes(ctx: Context, pass_list: Sequence[Pass]) -> Context:
    timings = ctx.report.setdefault("seconds", {})
    done: list[str] = []
    for p in pass_list:
        _check(ctx, p, p.requires, "requires", done)
        start = time.perf_counter()
        try:
            p.run(ctx)
        except (OnnxfuseError, KeyboardInterrupt):
            raise
        except Exception as exc:
            after = f" (after {', '.join(done)})" if done else ""
            raise PassFailed(f"internal error in pass {p.name}{after}: {type(exc).__name__}: {exc}") from exc
        timings[p.name] = round(time.perf_counter() - start, 4)
        _check(ctx, p, p.provides, "provides", done)
        done.append(p.name)
    return ctx


def _check(ctx: Context, p: Pass, paths: tuple[str, ...], what: str, done: list[str]) -> None:
    missing = [path for path in paths if ctx.field_value(path) is None]
    if missing:
        verb = "requires" if what == "requires" else "did not provide"
        raise PassContractError(f"pass {p.name} {verb} {', '.join(missing)} (passes run: {', '.join(done) or 'none'})")
