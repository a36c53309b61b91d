"""`--iterative K`: K rounds, each a whole compress (plan, shrink, repair, distil from the original)
of the previous round's result to the next step of the schedule, kept fraction 1 − s·k/K of the
channels (--sparsity s) or of the MACs (--target-macs T: 1 − (1 − T)·k/K). Each round trains for an
equal share of --train-steps plus what earlier rounds left unused (--stop icp ends a round early).
Validation, the report's counts and the teacher are the original's throughout."""

from __future__ import annotations

import dataclasses

from .context import Context
from .options import Options
from .runner import run


def run_rounds(options: Options, source) -> Context:
    options.check()  # each round checks itself as a single round: what only iterative needs is checked here
    rounds, carried, first, ctx = [], 0, None, None
    share, extra = divmod(options.train.train_steps, options.iterative)
    kept_before = 1.0  # of the channels, or with a MAC target of the original's MACs (as measured)
    for k in range(1, options.iterative + 1):
        kept = _kept(options, k)
        steps = share + (extra if k == options.iterative else 0) + carried
        round_options = dataclasses.replace(
            options, iterative=1, validate=options.validate and k == options.iterative,
            train=dataclasses.replace(options.train, train_steps=steps), **_target(options, kept / kept_before))
        ctx = Context.for_model(round_options, source if ctx is None else ctx.model.result)
        if first is not None:
            ctx.model.reference = first.model.teacher
        ctx.round = k
        ctx = run(ctx)
        first = first or ctx
        used = ctx.trained_steps + ctx.report.get("train", {}).get("steps", steps - ctx.trained_steps)
        carried = steps - used
        rounds.append({"round": k, "kept": round(kept, 4), "steps": used, "budget": steps,
                       "macs_after": ctx.report["macs_after"]})
        kept_before = (ctx.report["macs_after"] / first.report["macs_before"] if options.target_macs is not None
                       else kept)
    for key in ("params_before", "macs_before"):
        ctx.report[key] = first.report[key]
    ctx.report["iterative"] = rounds
    return ctx


def _kept(options: Options, k: int) -> float:
    final = options.target_macs if options.target_macs is not None else 1 - options.sparsity
    return 1 - (1 - final) * k / options.iterative


def _target(options: Options, fraction: float) -> dict:
    """This round's target relative to its input model."""
    if options.target_macs is not None:
        return {"target_macs": min(1.0, fraction)}
    return {"sparsity": max(0.0, 1 - fraction)}
