"""Accuracy-aware compression: the smallest MAC ratio whose quality on the validation data meets
the user's target (`--min-agreement A` or `--max-accuracy-drop D`).

Bisection over the MAC ratio in (0, 1): at each point the planner's widths for that ratio (the
sensitivity table is measured once and shared by every point) are compressed with the whole recipe
(repair included) and judged on `--data`, which the repair never sees. Quality falls as the
ratio falls, so a point that meets the target moves the upper bound down and one that misses
moves the lower bound up; every point tried is reported.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import OnnxfuseError

STEPS = 6  # points tried: the ratio is found to within 1/64


def quality_of(validation: dict, min_agreement: float | None, max_accuracy_drop: float | None) -> dict:
    """The point's quality and whether it meets the target."""
    if min_agreement is not None:
        value = validation["top1_agreement"]
        return {"top1_agreement": round(value, 4), "meets": value >= min_agreement}
    drop = validation["accuracy_original"] - validation["accuracy_compressed"]
    return {"accuracy": round(validation["accuracy_compressed"], 4), "accuracy_drop": round(drop, 4),
            "meets": drop <= max_accuracy_drop}


def smallest_ratio(evaluate: Callable[[float], dict | None], what: str) -> tuple[float, list]:
    """`evaluate(ratio)` → the point's quality (with "meets"), None when the ratio cannot be
    planned. Returns the smallest ratio found that meets the target and every point tried."""
    low, high, points = 0.0, 1.0, []
    for _ in range(STEPS):
        ratio = round((low + high) / 2, 4)
        point = evaluate(ratio)
        points.append({"mac_ratio": ratio, **(point or {"meets": False, "unreachable": True})})
        if point is not None and point["meets"]:
            high = ratio
        else:
            low = ratio
    met = [p for p in points if p["meets"]]
    if not met:
        reachable = [p for p in points if not p.get("unreachable")]
        best = max(reachable, key=lambda p: p["mac_ratio"]) if reachable else None
        tried = ", ".join(f"{p['mac_ratio']:.3f}" for p in points)
        raise OnnxfuseError(f"cannot meet {what}: the best point tried is "
                            f"{_describe(best) if best else 'none (no ratio could be planned)'} "
                            f"(MAC ratios tried: {tried})")
    return min(p["mac_ratio"] for p in met), points


def _describe(point: dict) -> str:
    quality = (f"top-1 agreement {100 * point['top1_agreement']:.1f}%" if "top1_agreement" in point else
               f"accuracy drop {100 * point['accuracy_drop']:.1f} points")
    return f"{quality} at {point['mac_ratio']:.3f} of the MACs"
