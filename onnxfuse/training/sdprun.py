"""Structured directional pruning: gRDA (Chao et al., NeurIPS 2020) with a group soft threshold per
channel, as training hooks with their own optimizer. ../shared/SEEDS.md, §3.

Every trained parameter keeps an accumulator, started at the trained weights: a ← a − γ∇L. A
parameter outside the channel groups is then the accumulator (plain SGD, no momentum). Each channel
of a prunable group (its producer rows, bias and per-channel parameters, across tensors) is the group
lasso's proximal map of its accumulator, w_G = a_G · max(0, 1 − g·√|G| / ‖a_G‖), with the gRDA
threshold g(n) = c·γ^½·(nγ)^μ; whole channels therefore reach exactly zero. The group form is our
extrapolation (sDprun's own text gives no algorithm), and so is deriving c from the plan, one c per
group: the group's threshold at the last step equals its k-th smallest ‖w_G‖/√|G| in the trained
weights, k the number of channels the plan drops there, so that about those can reach zero within
the budget. (One c for all groups, from the k-th smallest over the network, zeroed whole layers
whose weights are small and killed the network on TinyRes.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..analysis.channels import Analysis
from . import register_training_method
from .distill import Hooks
from .view import TorchView

MU = 0.51  # the authors' preferred range starts just above 0.5


@dataclass(frozen=True)
class Slice:
    """One tensor's share of a group's channels: positions (width, k) along `axis`."""
    tensor: str
    axis: int
    positions: np.ndarray


def channel_groups(analysis: Analysis) -> list[list[Slice]]:
    """Per prunable group, the slices that make up its channels (producers, biases, per-channel parameters)."""
    return [[Slice(m.tensor, m.axis, group.positions[m.space]) for m in group.members
             if m.role in ("producer", "shift", "param")] for group in analysis.prunable]


class GroupRDA(torch.optim.Optimizer):
    def __init__(self, view: TorchView, groups: list[list[Slice]], lr: float, c: list[float], mu: float = MU):
        params = view.trained_parameters()
        super().__init__(params, {"lr": lr, "steps": 0})  # steps in the group: checkpoints keep it
        self.c, self.mu = c, mu
        trained = view.trained_names()
        self.groups = [([(view.parameter(s.tensor), s) for s in slices if s.tensor in trained], c_g)
                       for slices, c_g in zip(groups, c)]
        self.groups = [(g, c_g) for g, c_g in self.groups if g]
        for p in params:
            self.state[p]["accumulator"] = p.detach().clone()

    def threshold(self, c: float, lr: float, steps: int) -> float:
        return c * math.sqrt(lr) * (steps * lr) ** self.mu

    @torch.no_grad()
    def step(self, closure=None):
        self.param_groups[0]["steps"] += 1
        lr = self.param_groups[0]["lr"]
        for p in self.param_groups[0]["params"]:
            a = self.state[p]["accumulator"]
            if p.grad is not None:
                a.sub_(lr * p.grad)
            p.copy_(a)
        for slices, c in self.groups:
            g = self.threshold(c, lr, self.param_groups[0]["steps"])
            norms, size = _channel_norms(slices, lambda p: self.state[p]["accumulator"])
            factor = torch.clamp(1 - g * math.sqrt(size) / norms.clamp_min(1e-30), min=0)
            for p, s in slices:
                moved = p.movedim(s.axis, 0)
                shape = (-1,) + (1,) * (moved.ndim - 1)
                for j in range(s.positions.shape[1]):
                    rows = torch.as_tensor(s.positions[:, j], device=p.device)
                    moved[rows] = self.state[p]["accumulator"].movedim(s.axis, 0)[rows] * factor.view(shape)
        return None


def _channel_norms(slices, value=torch.Tensor.detach) -> tuple[torch.Tensor, int]:
    """‖value(p)_G‖ per channel over every (parameter, slice), and the number of entries |G| of one
    channel; `value` gives what to measure of a parameter (its accumulator in the optimizer)."""
    total, size = None, 0
    for p, s in slices:
        moved = value(p).movedim(s.axis, 0)
        rows = moved[torch.as_tensor(s.positions.ravel(), device=p.device)].reshape(len(s.positions), -1)
        squares = rows.float().pow(2).sum(1)
        total = squares if total is None else total + squares
        size += rows.shape[1]
    return total.sqrt(), size


def threshold_constants(view: TorchView, groups: list[list[Slice]], dropped: list[int], lr: float, steps: int,
                        mu: float = MU) -> list[float]:
    """Per group, c such that the last step's threshold g·√|G| reaches its `dropped`-th smallest channel norm."""
    constants = []
    for slices, count in zip(groups, dropped):
        present = _present(view, slices)
        if not present or count < 1:
            constants.append(0.0)
            continue
        norms, size = _channel_norms(present)
        ratios = np.sort((norms / math.sqrt(size)).cpu().numpy())
        constants.append(float(ratios[min(count, len(ratios)) - 1]) / (math.sqrt(lr) * (steps * lr) ** mu))
    return constants


def zeroed_channels(view: TorchView, slices: list[Slice]) -> np.ndarray:
    """The channels of one group whose every slice is exactly zero."""
    norms, _ = _channel_norms(_present(view, slices))
    return np.flatnonzero(norms.cpu().numpy() == 0)


def _present(view: TorchView, slices: list[Slice]) -> list[tuple[torch.Tensor, Slice]]:
    return [(view.parameter(s.tensor), s) for s in slices if s.tensor in view.param_keys]


@register_training_method("sdprun")
class SDPrunHooks(Hooks):
    """gRDA as the optimizer, at a constant learning rate; `c` None: one constant per group from the
    plan (`dropped` channels of each group reachable in `steps`)."""

    keep_best = False

    def __init__(self, view: TorchView, groups: list[list[Slice]], lr: float, c: float | None, mu: float,
                 dropped: list[int], steps: int):
        self.view, self.groups, self.lr, self.mu = view, groups, lr, mu
        self.c = [c] * len(groups) if c is not None else threshold_constants(view, groups, dropped, lr, steps, mu)

    def make_optimizer(self, view: TorchView, options) -> torch.optim.Optimizer:
        return GroupRDA(view, self.groups, self.lr, self.c, self.mu)

    def learning_rate(self, step: int) -> float:
        return self.lr
