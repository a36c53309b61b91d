"""TPP, Trainability Preserving Pruning (Wang & Fu, ICLR 2023), as training hooks (`Hooks`).

The channels each group drops are fixed by the plan before training. During the update phase the
loss gains TPP's decorrelation term, a weight times MSE(WWᵀ, stopgrad(WWᵀ) with the dropped rows
and columns zeroed) over the rows of every producer weight, and the gradients of the dropped entries
gain a multiple of θ (the growing L2 penalty) on producer rows, biases and every trained per-channel
parameter of the group (BN γ/β when BN is kept); reg grows linearly to 1 over the update phase and
stays there. The authors weight the two terms by 1000·reg(t) and reg(t) over a 10⁵-step update
phase; to fit budgets of hundreds of steps the L2 penalty is reg(t) times a ceiling (≥ 1) that lets
it finish its decay within the update phase, and the decorrelation term is weighted by 1000 times
the authors' reg at the same progress of that decay (`penalty`, `gram_weight`). In the stabilise
phase the groups are zeroed one by one in graph order over its first half and kept at zero after
every step. Update and stabilise use SGD at the constant peak learning rate (the authors' 1e-3 is a
tenth of their fine-tuning rate; over a short budget the kept channels cannot adapt at it: VGG11-BN
at 0.25 of the MACs, 500 steps, 80.6 % against 86 %). What is then dropped is exactly zero, so
removing it (the prune method's selection map) changes nothing; `drop_norm_ratio` checks it. ../shared/SEEDS.md, §1.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

from ..analysis.channels import Analysis
from . import register_training_method
from .distill import SGD_MOMENTUM, Hooks, optimizer_for
from .view import TorchView

GRAM_WEIGHT = 1000.0  # the authors' lw_opp
RESIDUAL = 1e-4  # the share of a dropped weight the L2 penalty alone would leave at the end of the update phase
AUTHORS_DECAY = 1e-3 / (1 - SGD_MOMENTUM) * 1e5 / 2  # ∫ lr·reg/(1 − m) over the authors' CIFAR update phase


@dataclasses.dataclass(frozen=True)
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
        self.view, self.update, self.stabilise, self.lr = view, update, stabilise, peak_lr
        # the L2 penalty's ceiling: large enough that the penalty alone would shrink a dropped weight to
        # RESIDUAL of itself within the update phase (SGD's steady-state step is lr/(1 − m) per unit)
        self.ceiling = max(1.0, 2 * math.log(1 / RESIDUAL) * (1 - SGD_MOMENTUM) / (peak_lr * update))
        trained = view.trained_names()
        self.groups = [[(view.parameter(d.tensor), d) for d in drops if d.tensor in trained] for drops in groups]
        self.producers = _gram_masks(view, [d for drops in groups for d in drops if d.producer and d.tensor in trained])
        half = max(1, stabilise // 2)
        last = update + stabilise - 1
        # group k is zeroed from this step on; the last group halfway through stabilise, all by the last step
        self.zero_from = [min(last, update + (k + 1) * half // max(1, len(groups))) for k in range(len(groups))]

    def reg(self, step: int) -> float:
        """The authors' schedule: linear to 1 over the update phase, then 1."""
        return min(1.0, (step + 1) / self.update)

    def penalty(self, step: int) -> float:
        """The L2 penalty's strength: reg(t) times the ceiling. The authors' phase is 10⁴·τ steps, where
        reg ≤ 1 suffices; on a budget of hundreds of steps it leaves about a third of the dropped rows'
        norm, and zeroing that is pruning without repair."""
        return self.ceiling * self.reg(step)

    def gram_weight(self, step: int) -> float:
        """1000 times the authors' reg at the same progress of the L2 decay ∫ lr·penalty/(1 − m). In their
        schedule the dropped rows have mostly decayed by the time the decorrelation term weighs much;
        weighting it by our compressed reg(t) instead pulls the kept rows while the dropped ones are
        still large (VGG11-BN at 0.25 of the MACs, 500 steps: 86.0 % against 89.9 % without the term)."""
        ramp = min(step + 1, self.update)
        steps = ramp * (ramp + 1) / (2 * self.update) + max(0, step + 1 - self.update)  # Σ reg(s), s ≤ step
        decay = self.lr / (1 - SGD_MOMENTUM) * self.ceiling * steps
        return GRAM_WEIGHT * min(1.0, math.sqrt(decay / AUTHORS_DECAY))

    def loss(self, step: int) -> torch.Tensor | None:
        if not self.producers:
            return None
        total = 0.0
        for param, axis, mask in self.producers:
            rows = param.movedim(axis, 0).reshape(param.shape[axis], -1).float()
            gram = rows @ rows.T
            total = total + F.mse_loss(gram, gram.detach() * mask)
        return self.gram_weight(step) * total

    def before_step(self, step: int) -> None:
        penalty = self.penalty(step)
        for drops in self.groups:
            for param, d in drops:
                if param.grad is None:
                    continue
                index = _index(param, d)
                param.grad[index] += penalty * param.detach()[index]

    def after_step(self, step: int) -> None:
        for drops, start in zip(self.groups, self.zero_from):
            if step >= start:
                for param, d in drops:
                    param[_index(param, d)] = 0

    def learning_rate(self, step: int) -> float:
        return self.lr

    def make_optimizer(self, view: TorchView, options) -> torch.optim.Optimizer:
        return optimizer_for(view, dataclasses.replace(options, optimizer="sgd"))


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

