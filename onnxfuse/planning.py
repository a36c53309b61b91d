"""How many channels each group keeps, and which."""

from __future__ import annotations

import numpy as np


def keep_count(width: int, sparsity: float, round_to: int = 1) -> int:
    """Channels kept at `sparsity`, as Torch-Pruning counts them: int(width · (1 − sparsity)),
    rounded down to a multiple of `round_to`, at least one multiple (or the whole group)."""
    keep = int(width * (1 - sparsity))
    if round_to > 1:
        keep -= keep % round_to
        keep = max(keep, min(round_to, width))
    return min(max(keep, 1), width)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, in channel order (ties keep the earlier channel)."""
    order = np.argsort(-scores, kind="stable")
    return np.sort(order[:k])
