"""Intra-Fusion: choose each group's map with optimal transport instead of a selection.

For a group of width n keeping the m most important channels:
  features  every channel's producer rows and consumer columns (no biases) concatenated and
            scaled to unit L2 norm; or, with calibration data, the channel's activations on
            sampled inputs and positions (or both, each part unit-normalised);
  cost      pairwise L^p distance between all n channels and the m kept ones (n × m);
  plan      G = OT(a, b, cost), exact EMD by default (Sinkhorn optional), uniform or
            importance-weighted marginals;
  map       T = Gᵀ with every column normalised to 1 (each channel hands on all of its mass).

How T is applied is the *normalisation*:
  reference  T on producers and consumers, as the paper's official code (a merged producer row
             is a sum: it carries about n/m times the weight);
  average    producers use T with rows normalised (a merged row is the T-weighted average of its
             sources), consumers the column-normalised T; exact when merged channels are
             duplicates;
  rescale    average, then every merged producer row is scaled back to the T-weighted average
             norm of its sources, a data-free correction of the variance collapse that averaging
             different channels causes; biases stay averaged, so only the part of the channel
             that varies with the input is scaled and its mean is kept.
Per-channel parameters (unfolded BN, PRelu slopes, depthwise kernels) use the row-normalised T.
"""

from __future__ import annotations

import functools
import math
import threading
import warnings
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
import ot
from scipy import sparse
from scipy.spatial.distance import cdist

from .channelmap import GroupMap
from .channels import Group, member_rows
from .errors import OnnxfuseError

NORMALIZATIONS = ("reference", "average", "rescale")
FEATURES = ("weights", "activations", "both")
SOLVERS = ("emd", "sinkhorn")
MARGINALS = ("uniform", "importance")
SMALL_L1 = 3 * 10**7  # pairwise L1 problems below this many operations run in SciPy
WARM_UP_PARAMS = 10**6
_KERNEL_LOCK = threading.Lock()


@dataclass
class FusionOptions:
    normalization: str = "rescale"
    p: int = 1
    solver: str = "emd"
    reg: float = 0.01
    marginals: str = "uniform"
    features: str = "weights"  # the OT cost from weights, calibration activations, or both

    def check(self) -> None:
        for value, allowed, what in ((self.normalization, NORMALIZATIONS, "normalization"),
                                     (self.features, FEATURES, "OT features"),
                                     (self.solver, SOLVERS, "OT solver"),
                                     (self.marginals, MARGINALS, "marginals"),
                                     (self.p, (1, 2), "OT ground metric p")):
            if value not in allowed:
                raise OnnxfuseError(f"unknown {what} {value!r}; choose from {', '.join(map(str, allowed))}")
        if self.solver == "sinkhorn" and not self.reg > 0:
            raise OnnxfuseError(f"the Sinkhorn regularisation must be > 0, got {self.reg}")


def fusion_map(group: Group, tensors: dict[str, gs.Tensor], kept: np.ndarray, scores: np.ndarray,
               options: FusionOptions, activations: np.ndarray | None = None) -> GroupMap:
    """`activations`: (width, samples) calibration activations of the group's channels."""
    kept = np.sort(np.asarray(kept))
    if len(kept) == group.width:
        return GroupMap.selection(group.width, kept)
    producer_features = member_features(group, tensors, roles=("producer",))
    weights = np.concatenate([producer_features, member_features(group, tensors, roles=("consumer", "param"))],
                             axis=1)
    if options.features == "weights":
        features = weights
    elif activations is None:
        raise OnnxfuseError(f"OT features {options.features!r} need calibration data (--calib)")
    elif options.features == "activations":
        features = activations
    else:
        features = np.concatenate([_unit_rows(weights), _unit_rows(activations)], axis=1)
    plan = transport_plan(features, kept, scores, options)  # (n, m)
    t = plan.T / np.maximum(plan.T.sum(axis=0, keepdims=True), 1e-300)  # columns sum to 1
    average = t / np.maximum(t.sum(axis=1, keepdims=True), 1e-300)  # rows sum to 1
    if options.normalization == "reference":
        return GroupMap(kept, producer=t, consumer=t, param=average)
    if options.normalization == "rescale":
        producer = average * _norm_restoring_scale(average, producer_features)[:, None]
        return GroupMap(kept, producer=producer, consumer=t, param=average, shift=average)
    return GroupMap(kept, producer=average, consumer=t, param=average)


def member_features(group: Group, tensors, roles: tuple[str, ...]) -> np.ndarray:
    """(n, d): every channel's weight rows/columns of the given roles, concatenated (BN scales
    and biases excluded)."""
    parts = [rows.reshape(group.width, -1) for _, rows in member_rows(group, tensors, min_ndim=2, roles=roles)]
    return np.concatenate(parts, axis=1) if parts else np.zeros((group.width, 0))


def _unit_rows(features: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.einsum("ij,ij->i", features, features))[:, None]
    return features / np.where(norms > 0, norms, 1.0)


def transport_plan(features: np.ndarray, kept: np.ndarray, scores: np.ndarray,
                   options: FusionOptions) -> np.ndarray:
    unit = _unit_rows(np.asarray(features, dtype=np.float32))
    n, m = len(unit), len(kept)
    if options.marginals == "importance":
        weights = np.maximum(np.asarray(scores, dtype=np.float64), 0) + 1e-12
        a, b = weights / weights.sum(), weights[kept] / weights[kept].sum()
    else:
        a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    if options.solver == "sinkhorn":
        cost = pairwise_cost(unit, unit[kept], options.p)
        scale = cost.max() if cost.max() > 0 else 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ot.sinkhorn(a, b, cost / scale, options.reg, numItermax=10_000)
    return _exact_plan(unit, kept, a, b, options.p)


def _exact_plan(unit: np.ndarray, kept: np.ndarray, a: np.ndarray, b: np.ndarray, p: int) -> np.ndarray:
    """Exact OT from all n channels to the m kept ones, solved on the dropped channels only.

    The targets are a subset of the sources, the cost is a metric and every target can take at
    least its own source's mass (b_j ≥ a_kept[j] for both marginals), so some optimal plan sends
    each kept channel wholly to itself: if it sent ε elsewhere (to j) while another channel i
    filled its place, swapping the two moves changes the cost by c(i,j) − c(i,k) − c(k,j) ≤ 0.
    What remains is the dropped channels against the kept ones' spare capacity, an (n−m) × m
    problem: at sparsity 0.5 half the cost matrix and a quarter of the EMD."""
    n, m = len(unit), len(kept)
    dropped = np.setdiff1d(np.arange(n), kept)
    plan = np.zeros((n, m))
    plan[kept, np.arange(m)] = a[kept]
    if len(dropped):
        spare = np.maximum(b - a[kept], 0)
        spare *= a[dropped].sum() / spare.sum()
        cost = pairwise_cost(unit[dropped], unit[kept], p)
        rest, log = ot.emd(a[dropped], spare, cost, numItermax=max(200_000, 100 * len(dropped) * m), log=True)
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


def warm_up_l1_kernel(model, options: FusionOptions) -> None:
    """Start numba (its import and the loading of the cached kernel take ~0.6 s) on a thread of
    its own, so that it overlaps the passes before fuse, when the model is large enough for its
    widest groups to need the kernel (from ~1 M parameters in the model zoo)."""
    params = sum(math.prod(t.dims) for t in model.graph.initializer)
    if options.p == 1 and params >= WARM_UP_PARAMS:
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


def _norm_restoring_scale(average: np.ndarray, producer_features: np.ndarray) -> np.ndarray:
    """Per merged channel j: (Σ_i A[j,i] ‖w_i‖) / ‖Σ_i A[j,i] w_i‖ over its producer weights."""
    if producer_features.shape[1] == 0:
        return np.ones(average.shape[0])
    source_norms = np.linalg.norm(producer_features, axis=1)
    target = average @ source_norms
    merged = np.linalg.norm(sparse.csr_matrix(average) @ producer_features, axis=1)  # an OT plan is sparse
    return np.where(merged > 1e-12, target / np.maximum(merged, 1e-12), 1.0)
