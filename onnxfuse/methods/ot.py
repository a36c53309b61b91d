"""Optimal transport for Intra-Fusion: the channel features' cost and the plan (exact EMD or Sinkhorn).

The pairwise L1 cost of wide groups runs in a numba kernel, started on a thread after load
(`warm_up_l1_kernel`) so that its start-up overlaps the passes before fuse.
"""

from __future__ import annotations

import functools
import math
import threading
import warnings

import numpy as np
import ot
from scipy.spatial.distance import cdist

SOLVERS = ("emd", "sinkhorn")
MARGINALS = ("uniform", "importance")


SMALL_L1 = 3 * 10**7  # pairwise L1 problems below this many operations run in SciPy


WARM_UP_PARAMS = 10**6


_KERNEL_LOCK = threading.Lock()


def unit_rows(features: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.einsum("ij,ij->i", features, features))[:, None]
    return features / np.where(norms > 0, norms, 1.0)


def feature_cost(features: np.ndarray, p: int):
    """cost(rows, cols): the L^p distances between the unit-norm feature rows of two index sets."""
    unit = unit_rows(np.asarray(features, dtype=np.float32))
    return lambda rows, cols: pairwise_cost(unit[rows], unit[cols], p)


def transport_plan(features: np.ndarray, kept: np.ndarray, scores: np.ndarray,
                   options, cost=None) -> np.ndarray:
    """(n, m) plan from all channels to the kept ones; `options`: the fusion options (p, solver, reg,
    marginals); `cost(rows, cols)` instead of the distance between the features' unit rows."""
    cost = cost or feature_cost(features, options.p)
    n, m = len(features), len(kept)
    if options.marginals == "importance":
        weights = np.maximum(np.asarray(scores, dtype=np.float64), 0) + 1e-12
        a, b = weights / weights.sum(), weights[kept] / weights[kept].sum()
    else:
        a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    if options.solver == "sinkhorn":
        matrix = cost(np.arange(n), kept)
        scale = matrix.max() if matrix.max() > 0 else 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ot.sinkhorn(a, b, matrix / scale, options.reg, numItermax=10_000)
    return _exact_plan(n, kept, a, b, cost)


def _exact_plan(n: int, kept: np.ndarray, a: np.ndarray, b: np.ndarray, cost) -> np.ndarray:
    """Exact OT from all n channels to the m kept ones, solved on the dropped channels only.

    The targets are a subset of the sources, the cost is a metric and every target can take at
    least its own source's mass (b_j ≥ a_kept[j] for both marginals), so some optimal plan sends
    each kept channel wholly to itself: if it sent ε elsewhere (to j) while another channel i
    filled its place, swapping the two moves changes the cost by c(i,j) − c(i,k) − c(k,j) ≤ 0.
    What remains is the dropped channels against the kept ones' spare capacity, an (n−m) × m
    problem: at sparsity 0.5 half the cost matrix and a quarter of the EMD."""
    m = len(kept)
    dropped = np.setdiff1d(np.arange(n), kept)
    plan = np.zeros((n, m))
    plan[kept, np.arange(m)] = a[kept]
    if len(dropped):
        spare = np.maximum(b - a[kept], 0)
        spare *= a[dropped].sum() / spare.sum()
        rest, log = ot.emd(a[dropped], spare, cost(dropped, kept), numItermax=max(200_000, 100 * len(dropped) * m),
                           log=True)
        if log.get("warning"):
            raise RuntimeError(f"exact OT did not converge on a group of width {n}: {log['warning']}")
        plan[dropped] = rest
    return plan


def pairwise_cost(x: np.ndarray, y: np.ndarray, p: int) -> np.ndarray:
    """L1 (p=1) or Euclidean (p=2) distances between the rows of x and y."""
    if p == 2:
        sq = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
        return np.sqrt(np.maximum(sq, 0))
    if x.shape[0] * y.shape[0] * x.shape[1] < SMALL_L1:  # not worth numba's start-up (~0.5 s)
        return cdist(x, y, metric="cityblock")
    as32 = (np.ascontiguousarray(a, dtype=np.float32) for a in (x, y))
    return _l1_kernel()(*as32).astype(np.float64)


def warm_up_l1_kernel(model, p: int) -> None:
    """Start numba (its import and the loading of the cached kernel take ~0.6 s) on a thread of
    its own, so that it overlaps the passes before fuse, when the model is large enough for its
    widest groups to need the kernel (from ~1 M parameters in the model zoo)."""
    params = sum(math.prod(t.dims) for t in model.graph.initializer)
    if p == 1 and params >= WARM_UP_PARAMS:
        threading.Thread(target=_l1_kernel, name="onnxfuse-numba-warm-up").start()


def _l1_kernel():
    with _KERNEL_LOCK:
        return _compiled_l1_kernel()


@functools.cache
def _compiled_l1_kernel():
    """Pairwise L1 distances compiled with numba (parallel over rows, SIMD over features): the
    cost of a 2048-channel group is ~10^10 operations, which no NumPy/SciPy/torch routine does
    in well under a second on two cores. Compiled on first use, cached on disk."""
    import numba

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def l1(x, y):
        out = np.empty((x.shape[0], y.shape[0]), dtype=np.float32)
        for i in numba.prange(x.shape[0]):
            for j in range(y.shape[0]):
                total = np.float32(0)
                for k in range(x.shape[1]):
                    total += abs(x[i, k] - y[j, k])
                out[i, j] = total
        return out

    tiny = np.zeros((1, 1), dtype=np.float32)
    l1(tiny, tiny)  # loads (or compiles) the machine code now, under the lock
    return l1
