"""Channel importance per group, as a registry shared by every method.

Magnitude importance follows Torch-Pruning's `GroupMagnitudeImportance` (group_reduction="mean",
normalizer="mean", no biases): every scored member (weight rows of producers, weight columns of
consumers — a flattened head's columns summed into their channel —, BN scales, depthwise
kernels) contributes Σ|w|^p per channel; the contributions are averaged over members and the
result divided by its mean.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis.channels import Group, member_rows
from ..errors import OnnxfuseError
from ..registry import Registry

Scorer = Callable[..., np.ndarray]  # (group, tensors, seed=, activity=) -> (width,) scores


@dataclass(frozen=True)
class Importance:
    score: Scorer
    needs_activity: bool = False  # the capture pass measures mean |activation| per channel for it
    estimates_activity: bool = False  # without data, it takes the data-free estimate (calibration/estimate.py)
    choices: tuple[str, ...] = ()  # a choice among these importances, made per group by measurement


IMPORTANCES: Registry[Importance] = Registry("importance")


def register_importance(name: str, *, needs_activity: bool = False, estimates_activity: bool = False,
                        choices: tuple[str, ...] = (), replace: bool = False):
    """Decorator: `score(group, tensors, seed=0, activity=None, **_) -> (width,) array` as the
    importance `name`; higher means kept. `needs_activity`: the criterion reads calibration
    activations (`activity`, the group's mean |activation| per channel); `estimates_activity`:
    without calibration data it reads their data-free estimate instead; `choices`: the importance
    is chosen per group among these by held-out damage (passes/choose_importance.py), `score` is
    what the groups start with."""
    def wrap(score: Scorer) -> Scorer:
        IMPORTANCES.add(name, Importance(score, needs_activity, estimates_activity, choices), replace)
        return score
    return wrap


def score_group(name: str, group: Group, tensors: dict[str, gs.Tensor], seed: int = 0,
                activity: np.ndarray | None = None) -> np.ndarray:
    """`activity`: the group's mean |activation| per channel on calibration data, when captured."""
    return IMPORTANCES.get(name).score(group, tensors, seed=seed, activity=activity)


def magnitude(group: Group, tensors, p: int) -> np.ndarray:
    """Σ|w|^p of every scored member, averaged over members (no normaliser)."""
    per_member = []
    for _, rows in member_rows(group, tensors):
        np.abs(rows, out=rows)  # a fresh array: work in place
        if p != 1:
            rows **= p
        per_member.append(rows.sum(axis=(1, 2)))
        del rows
    return np.mean(per_member, axis=0) if per_member else np.ones(group.width)


@register_importance("l1")
def l1(group: Group, tensors, seed: int = 0, **_) -> np.ndarray:
    return _normalise(magnitude(group, tensors, 1))


@register_importance("l2")
def l2(group: Group, tensors, seed: int = 0, **_) -> np.ndarray:
    return _normalise(magnitude(group, tensors, 2))


@register_importance("random")
def random(group: Group, tensors, seed: int = 0, **_) -> np.ndarray:
    return np.random.default_rng([seed, group.id]).random(group.width) + 0.5


@register_importance("lamp")
def lamp(group: Group, tensors, seed: int = 0, **_) -> np.ndarray:
    """LAMP (Lee et al., ICLR 2021) as Torch-Pruning's LAMPImportance: squared magnitude, each
    score divided by the sum of all scores not smaller than it."""
    scores = magnitude(group, tensors, 2)
    order = np.argsort(scores, kind="stable")
    tail = np.cumsum(scores[order][::-1])[::-1]  # sum of the scores from this one upwards
    out = np.empty_like(scores)
    out[order] = scores[order] / np.maximum(tail, 1e-300)
    return out


@register_importance("bn_scale")
def bn_scale(group: Group, tensors, seed: int = 0, **_) -> np.ndarray:
    """|γ| of the group's BatchNormalization layers (Network Slimming)."""
    gammas = [np.abs(rows).sum(axis=(1, 2)) for member, rows in member_rows(group, tensors)
              if member.role == "param" and np.asarray(tensors[member.tensor].values).ndim == 1]
    if not gammas:
        raise OnnxfuseError("importance bn_scale needs BatchNormalization nodes; keep them with --keep-bn "
                            "(fold_bn=False)")
    return _normalise(np.mean(gammas, axis=0))


@register_importance("fpgm")
def fpgm(group: Group, tensors, seed: int = 0, **_) -> np.ndarray:
    """FPGM (He et al., CVPR 2019): a channel whose weights are close to all others (near the
    geometric median) is redundant; importance = summed L2 distance to the other channels."""
    per_member = []
    for _, rows in member_rows(group, tensors, min_ndim=2):
        flat = rows.reshape(group.width, -1)
        sq = (flat * flat).sum(1)
        dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * flat @ flat.T, 0))
        per_member.append(dist.sum(1))
    return _normalise(np.mean(per_member, axis=0)) if per_member else np.ones(group.width)


def _normalise(scores: np.ndarray) -> np.ndarray:
    mean = scores.mean()
    return scores / mean if mean > 0 else scores


@register_importance("act", needs_activity=True)
def act(group: Group, tensors, seed: int = 0, activity: np.ndarray | None = None, **_) -> np.ndarray:
    """Mean |activation| of each channel on the calibration data (where consumers read it)."""
    if activity is None:
        raise OnnxfuseError("importance act needs calibration data (--calib)")
    return _normalise(np.asarray(activity, dtype=np.float64))


@register_importance("signal", needs_activity=True, estimates_activity=True)
def signal(group: Group, tensors, seed: int = 0, activity: np.ndarray | None = None, **_) -> np.ndarray:
    """What a channel sends on: its mean |activation| times the L1 norm of the consumer columns
    that read it (the first-order change of the consumers' outputs when it is removed; Wanda's
    |w|·‖x‖ summed per channel). The activation is measured on the calibration data, or without
    data estimated from the weights (calibration/estimate.py); a group with neither is scored by L1."""
    if activity is None:
        return l1(group, tensors)
    columns = [np.abs(rows).sum(axis=(1, 2)) for _, rows in member_rows(group, tensors, roles=("consumer",))]
    reads = np.mean(columns, axis=0) if columns else np.ones(group.width)
    return _normalise(np.asarray(activity, dtype=np.float64) * reads)


def is_residual_stream(group: Group) -> bool:
    """Several producers write the group's channels: they meet in residual adds."""
    return len(group.nodes("producer")) > 1


@register_importance("stream", needs_activity=True, estimates_activity=True)
def stream(group: Group, tensors, seed: int = 0, activity: np.ndarray | None = None, **_) -> np.ndarray:
    """`signal` for residual streams, where a channel's weights say little about what the sum
    carries; L1 for every other group."""
    return signal(group, tensors, activity=activity) if is_residual_stream(group) else l1(group, tensors)


@register_importance("select", needs_activity=True, choices=("l1", "signal"))
def select(group: Group, tensors, seed: int = 0, **_) -> np.ndarray:
    """L1 or `signal` for each group, whichever does less damage on held-out calibration samples
    when the group alone is shrunk (the sensitivity probes; passes/choose_importance.py). L1 before
    the choice."""
    return l1(group, tensors)
