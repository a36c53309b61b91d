"""Intra-Fusion: choose each group's map with optimal transport instead of a selection.

For a group of width n keeping the m most important channels:
  features  every channel's producer rows and consumer columns (no biases) concatenated and
            scaled to unit L2 norm; or, with calibration data, the channel's activations on
            sampled inputs and positions (or both, each part unit-normalised);
  cost      pairwise L^p distance between all n channels and the m kept ones (n × m);
  kept      the m most important channels (`--fuse-keep top`), or m channels that cover the group
            (`cover`: importance-weighted k-medoids on the same cost, so two copies of a channel
            are not both kept while a distinct one is merged away);
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

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from scipy import sparse

from ..analysis.channels import Group, member_rows
from ..errors import OnnxfuseError
from ..fields import option
from .channelmap import GroupMap
from .head_alignment import HeadAlignment
from .ot import MARGINALS, SOLVERS, feature_cost, transport_plan, unit_rows
from .registry import register_method

NORMALIZATIONS = ("reference", "average", "rescale")
KEEPS = ("top", "cover")
SWAP_ROUNDS = 10
FEATURES = ("weights", "activations", "both")


@dataclass(frozen=True)
class FusionOptions:
    normalization: str = option("auto", "how fuse applies its transport map, see README (auto: reference with "
                                "--calib, else rescale)", choices=("auto",) + NORMALIZATIONS)
    p: int = option(1, "OT ground metric: L1 or L2", flag="--ot-p", choices=(1, 2))
    solver: str = option("emd", "", flag="--ot-solver", choices=SOLVERS)
    reg: float = option(0.01, "Sinkhorn regularisation", flag="--ot-reg")
    marginals: str = option("uniform", "", flag="--ot-marginals", choices=MARGINALS)
    features: str = option("auto", "OT cost from weights, calibration activations (needs --calib) or both "
                           "(auto: both with --calib, else weights)", flag="--ot-features",
                           choices=("auto",) + FEATURES)
    keep: str = option("top", "which channels survive a merge: the most important (top) or m that cover the "
                       "group (importance-weighted k-medoids on the OT cost)", flag="--fuse-keep", choices=KEEPS)

    def check(self) -> None:
        for value, allowed, what in ((self.normalization, NORMALIZATIONS, "normalization"),
                                     (self.features, FEATURES, "OT features"),
                                     (self.keep, KEEPS, "fuse-keep"),
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
        features = np.concatenate([unit_rows(weights), unit_rows(activations)], axis=1)
    alignment = HeadAlignment.build(group, tensors, options.p) if group.coords else None
    cost = _aligned_cost(alignment, activations, options) if alignment else None
    if options.keep == "cover":
        kept = covering_channels(features, len(kept), scores, options.p, cost)
    plan = transport_plan(features, kept, scores, options, cost)  # (n, m)
    t = plan.T / np.maximum(plan.T.sum(axis=0, keepdims=True), 1e-300)  # columns sum to 1
    average = t / np.maximum(t.sum(axis=1, keepdims=True), 1e-300)  # rows sum to 1
    columns = alignment.columns(kept, t) if alignment else None
    if options.normalization == "reference":
        return GroupMap(kept, producer=t, consumer=t, param=average, columns=columns)
    if options.normalization == "rescale":
        merged = alignment.merged_producers(kept, average, columns) if alignment else None
        producer = average * _norm_restoring_scale(average, producer_features, merged)[:, None]
        return GroupMap(kept, producer=producer, consumer=t, param=average, shift=average, columns=columns)
    return GroupMap(kept, producer=average, consumer=t, param=average, columns=columns)


def _aligned_cost(alignment, activations, options: FusionOptions):
    """Heads: the weight part of the cost after aligning each head's D channels (head_alignment.py),
    combined with the activation part as the two unit-norm halves of one feature row would be."""
    if options.features == "activations":
        return None
    if options.features == "weights":
        return alignment.cost
    acts = feature_cost(activations, options.p)
    if options.p == 1:
        return lambda rows, cols: (alignment.cost(rows, cols) + acts(rows, cols)) / np.sqrt(2)
    return lambda rows, cols: np.sqrt((alignment.cost(rows, cols) ** 2 + acts(rows, cols) ** 2) / 2)


def covering_channels(features: np.ndarray, count: int, scores: np.ndarray, p: int, cost=None) -> np.ndarray:
    """`count` channels that minimise Σ_i score_i · min_k cost(i, k) (weighted k-medoids on the OT
    cost between unit feature rows): a greedy build, each step adding the channel that lowers the
    sum most (ties to the more important), then rounds of moving each medoid to the member of its
    cluster that serves the cluster best, until nothing moves."""
    everything = np.arange(len(features))
    cost = (cost or feature_cost(features, p))(everything, everything)
    weights = np.maximum(np.asarray(scores, dtype=np.float64), 0) + 1e-12
    served = np.full(len(features), np.inf)
    chosen: list[int] = []
    for _ in range(count):
        gain = (weights[:, None] * np.maximum(np.minimum(served, cost.max() + 1)[:, None] - cost, 0)).sum(0)
        gain[chosen] = -1
        best = int(np.lexsort((-weights, -gain))[0])
        chosen.append(best)
        served = np.minimum(served, cost[:, best])
    kept = np.array(chosen)
    for _ in range(SWAP_ROUNDS):
        cluster = np.argmin(cost[:, kept], axis=1)
        moved = kept.copy()
        for k in range(len(kept)):
            members = np.flatnonzero(cluster == k)
            if not len(members):  # a copy of another medoid: nothing is nearer to it
                continue
            within = (weights[members, None] * cost[np.ix_(members, members)]).sum(0)
            moved[k] = members[np.lexsort((-weights[members], within))[0]]
        if np.array_equal(np.sort(moved), np.sort(kept)):
            break
        kept = moved
    return np.sort(kept)


def member_features(group: Group, tensors, roles: tuple[str, ...]) -> np.ndarray:
    """(n, d): every channel's weight rows/columns of the given roles, concatenated (BN scales
    and biases excluded)."""
    parts = [rows.reshape(group.width, -1) for _, rows in member_rows(group, tensors, min_ndim=2, roles=roles)]
    return np.concatenate(parts, axis=1) if parts else np.zeros((group.width, 0))


def _norm_restoring_scale(average: np.ndarray, producer_features: np.ndarray,
                          merged: np.ndarray | None = None) -> np.ndarray:
    """Per merged channel j: (Σ_i A[j,i] ‖w_i‖) / ‖Σ_i A[j,i] w_i‖ over its producer weights
    (`merged`: those sums, heads aligned)."""
    if producer_features.shape[1] == 0:
        return np.ones(average.shape[0])
    source_norms = np.linalg.norm(producer_features, axis=1)
    target = average @ source_norms
    if merged is None:
        merged = sparse.csr_matrix(average) @ producer_features  # an OT plan is sparse
    merged = np.linalg.norm(merged, axis=1)
    return np.where(merged > 1e-12, target / np.maximum(merged, 1e-12), 1.0)


def _needs_activations(options) -> bool:
    return options.fusion.features != "weights"


@register_method("fuse", needs_activations=_needs_activations, extra_passes=(("warm_up_l1", "load"),))
def intra_fusion_map(group, tensors, kept, scores, options, activations=None) -> GroupMap:
    return fusion_map(group, tensors, kept, scores, options.fusion, activations)
