"""Channel importance per group, as a registry shared by every method.

Magnitude importance follows Torch-Pruning's `GroupMagnitudeImportance` (group_reduction="mean",
normalizer="mean", no biases): every scored member (weight rows of producers, weight columns of
consumers — a flattened head's columns summed into their channel —, BN scales, depthwise
kernels) contributes Σ|w|^p per channel; the contributions are averaged over members and the
result divided by its mean.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from .channels import Group
from .errors import OnnxfuseError

Scorer = Callable[[Group, dict[str, gs.Tensor]], np.ndarray]
IMPORTANCE: dict[str, Scorer] = {}


def register(name: str):
    def wrap(fn: Scorer) -> Scorer:
        IMPORTANCE[name] = fn
        return fn
    return wrap


def score_group(name: str, group: Group, tensors: dict[str, gs.Tensor]) -> np.ndarray:
    if name not in IMPORTANCE:
        raise OnnxfuseError(f"unknown importance {name!r}; choose from {', '.join(sorted(IMPORTANCE))}")
    return IMPORTANCE[name](group, tensors)


def magnitude(group: Group, tensors: dict[str, gs.Tensor], p: int) -> np.ndarray:
    per_member = []
    for member in group.members:
        if not member.scored:
            continue
        values = np.abs(np.asarray(tensors[member.tensor].values, dtype=np.float64)) ** p
        per_position = np.moveaxis(values, member.axis, 0).reshape(values.shape[member.axis], -1).sum(1)
        per_member.append(per_position[group.positions[member.space]].sum(axis=1))
    if not per_member:
        return np.ones(group.width)
    reduced = np.mean(per_member, axis=0)
    mean = reduced.mean()
    return reduced / mean if mean > 0 else reduced


@register("l1")
def l1(group: Group, tensors) -> np.ndarray:
    return magnitude(group, tensors, 1)


@register("l2")
def l2(group: Group, tensors) -> np.ndarray:
    return magnitude(group, tensors, 2)
