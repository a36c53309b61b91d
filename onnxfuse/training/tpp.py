"""TPP, Trainability Preserving Pruning (Wang & Fu, ICLR 2023), as training hooks (`Hooks`).

The channels each group drops are fixed by the plan before training. During the update phase the
loss gains TPP's decorrelation term, 1000·reg(t)·MSE(WWᵀ, stopgrad(WWᵀ) with the dropped rows and
columns zeroed) over the rows of every producer weight, and the gradients of the dropped entries
gain reg(t)·θ (the growing L2 penalty) on producer rows, biases and every trained per-channel
parameter of the group (BN γ/β when BN is kept); reg grows linearly to 1 over the update phase and
stays there. In the stabilise phase the groups are zeroed one by one in graph order over its first
half and kept at zero after every step. The learning rate is constant, a tenth of the peak (1e-3
with SGD's default, the authors' value). What is then dropped is exactly zero, so removing it (the
prune method's selection map) changes nothing; `drop_norm_ratio` checks it. ../shared/SEEDS.md, §1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..analysis.channels import Analysis
from . import register_training_method
from .distill import Hooks
from .view import TorchView

GRAM_WEIGHT = 1000.0  # the authors' lw_opp
LR_SHARE = 0.1  # update and stabilise at a tenth of the peak learning rate


@dataclass(frozen=True)
class Drop:
    """The entries of one tensor that one group drops: indices along `axis`."""
    tensor: str
    axis: int
    rows: np.ndarray
    producer: bool  # a weight whose rows are filters (the Gram term); else a bias or per-channel parameter


def drops_of(analysis: Analysis, keep: dict[int, np.ndarray], order: dict[str, int]) -> list[list[Drop]]:
    """Per group with dropped channels, in graph order of its first producer: what it drops."""
    groups = []
    for group in analysis.prunable:
        if group.id not in keep:
            continue
        dropped = np.setdiff1d(np.arange(group.width), keep[group.id])
        if not len(dropped):
            continue
        members = [m for m in group.members if m.role in ("producer", "shift", "param")]
        drops = [Drop(m.tensor, m.axis, group.positions[m.space][dropped].ravel(), m.role == "producer")
                 for m in members]
        first = min((order.get(m.node, 1 << 30) for m in members), default=1 << 30)
        groups.append((first, drops))
    return [drops for _, drops in sorted(groups, key=lambda item: item[0])]


@register_training_method("tpp")
class TPPHooks(Hooks):
    keep_best = False  # the schedule must finish: zeroed channels are the point

    def __init__(self, view: TorchView, groups: list[list[Drop]], update: int, stabilise: int, peak_lr: float):
        self.view, self.update, self.stabilise, self.lr = view, update, stabilise, LR_SHARE * peak_lr
        trained = view.trained_names()
        self.groups = [[(view.parameter(d.tensor), d) for d in drops if d.tensor in trained] for drops in groups]
        self.producers = _gram_masks(view, [d for drops in groups for d in drops if d.producer and d.tensor in trained])
        half = max(1, stabilise // 2)
        last = update + stabilise - 1
        # group k is zeroed from this step on; the last group halfway through stabilise, all by the last step
        self.zero_from = [min(last, update + (k + 1) * half // max(1, len(groups))) for k in range(len(groups))]

    def reg(self, step: int) -> float:
        return min(1.0, (step + 1) / self.update)

    def loss(self, step: int) -> torch.Tensor | None:
        if not self.producers:
            return None
        total = 0.0
        for param, axis, mask in self.producers:
            rows = param.movedim(axis, 0).reshape(param.shape[axis], -1).float()
            gram = rows @ rows.T
            total = total + F.mse_loss(gram, gram.detach() * mask)
        return GRAM_WEIGHT * self.reg(step) * total

    def before_step(self, step: int) -> None:
        reg = self.reg(step)
        for drops in self.groups:
            for param, d in drops:
                if param.grad is None:
                    continue
                index = _index(param, d)
                param.grad[index] += reg * param.detach()[index]

    def after_step(self, step: int) -> None:
        for drops, start in zip(self.groups, self.zero_from):
            if step >= start:
                for param, d in drops:
                    param[_index(param, d)] = 0

    def learning_rate(self, step: int) -> float:
        return self.lr


def _index(param: torch.Tensor, drop: Drop) -> tuple:
    index = [slice(None)] * param.ndim
    index[drop.axis] = torch.as_tensor(drop.rows, device=param.device)
    return tuple(index)


def _gram_masks(view: TorchView, drops: list[Drop]) -> list[tuple[torch.Tensor, int, torch.Tensor]]:
    """(weight, its row axis, mask of the Gram entries between two kept rows) per producer weight;
    the rows several groups drop are merged."""
    merged: dict[tuple[str, int], set[int]] = {}
    for d in drops:
        merged.setdefault((d.tensor, d.axis), set()).update(d.rows.tolist())
    masks = []
    for (name, axis), rows in merged.items():
        param = view.parameter(name)
        keep = torch.ones(param.shape[axis], device=param.device)
        keep[list(rows)] = 0
        masks.append((param, axis, keep[:, None] * keep[None, :]))
    return masks


def drop_norm_ratio(view: TorchView, groups: list[list[Drop]]) -> float:
    """The largest ratio, over producer weights, of the dropped rows' norm to the kept rows' norm."""
    worst = 0.0
    for drops in groups:
        for d in drops:
            if not d.producer:
                continue
            rows = view.parameter(d.tensor).detach().movedim(d.axis, 0)
            kept = np.setdiff1d(np.arange(rows.shape[0]), d.rows)
            dropped_norm, kept_norm = float(rows[d.rows].norm()), float(rows[kept].norm()) if len(kept) else 0.0
            worst = max(worst, dropped_norm / kept_norm if kept_norm else float(dropped_norm > 0))
    return worst

