"""`run_passes(ctx, passes)`: each pass's contract checked, its time recorded, an internal error
reported with the pass it came from (a user's OnnxfuseError passes through unchanged). Apart from
runner.py so that passes which run part of the pipeline again (split_train's merge) can use it
without importing the pass list."""

from __future__ import annotations

import time
from collections.abc import Sequence

from ..errors import OnnxfuseError
from .context import Context
from .contract import Pass, PassContractError, PassFailed


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
