"""Model fusion (OTFusion, Singh & Jaggi 2020): one model from several of one architecture.

Every model is normalised and analysed like `compress` does. The anchor's channel groups are the
frame; every other model's channels are matched to the anchor's group by group, with exact optimal
transport between equal uniform marginals (a permutation, found as the assignment problem it is):
  activations  the cost is the L2 distance between the channels' activations on the same
               calibration inputs and positions; a channel's activations do not depend on how the
               other groups are ordered, so every group is matched at once;
  weights      the cost is the L2 distance between producer rows and per-channel parameters, after
               the input side of those rows has been put in the anchor's order: groups are matched
               in graph order, each map applied before the next group is matched. Heads are
               matched after aligning each one's D channels onto the anchor head's (Imfeld et al.,
               ICLR 2024; methods/head_alignment.py), and read through that alignment.
The permutations go through the one apply path (m = n), which keeps every model's function; then
every float weight is averaged over the models. Groups that are frozen are not aligned (reported).
Averaging shrinks the spread of the merged channels (two aligned channels are never quite the same
feature), which compounds layer by layer; with calibration data every producer's output channels
are then given the weighted mean of the aligned models' channel mean and standard deviation (REPAIR,
Jordan et al., ICLR 2023: the stats repair of `compress`, repair/stats.py), in graph order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from scipy.optimize import linear_sum_assignment

from ..analysis.channels import Analysis, Group
from ..calibration.capture import ChannelStats, activation_space, channel_stats, sampled_activations
from ..calibration.data import Dataset
from ..errors import OnnxfuseError
from ..graph.convert import runnable
from ..repair.stats import correct_channels, producer_members
from .channelmap import GroupMap, apply_maps
from .head_alignment import HeadAlignment
from .intra_fusion import member_features
from .ot import pairwise_cost

ALIGNS = ("activations", "weights")
ANCHORS = ("first", "narrowest")
REPAIRS = ("auto", "stats", "none")


@dataclass
class Member:
    """One input model, normalised: its graph, analysis and the original proto it came from."""
    name: str
    graph: gs.Graph
    analysis: Analysis
    original: object


def check_same_architecture(anchor: Member, other: Member) -> None:
    """Same nodes (op types in order), same constant shapes, same channel groups and interface;
    else one error naming the first difference."""
    def fail(what: str):
        raise OnnxfuseError(f"{other.name} does not share the architecture of {anchor.name}: {what}")

    a_nodes, b_nodes = anchor.graph.nodes, other.graph.nodes
    if len(a_nodes) != len(b_nodes):
        fail(f"{len(b_nodes)} nodes against {len(a_nodes)}")
    for index, (a, b) in enumerate(zip(a_nodes, b_nodes)):
        if a.op != b.op or len(a.inputs) != len(b.inputs):
            fail(f"node {index} is {b.op} ({b.name}) against {a.op} ({a.name})")
        for ta, tb in zip(a.inputs, b.inputs):
            if isinstance(ta, gs.Constant) != isinstance(tb, gs.Constant) or (
                    isinstance(ta, gs.Constant) and ta.values.shape != tb.values.shape):
                fail(f"node {index} ({b.name}) input {tb.name} differs in kind or shape")
    for kind in ("inputs", "outputs"):
        a_io = [(t.name, t.dtype, t.shape) for t in getattr(anchor.graph, kind)]
        b_io = [(t.name, t.dtype, t.shape) for t in getattr(other.graph, kind)]
        if a_io != b_io:
            fail(f"graph {kind} {b_io} against {a_io}")
    a_groups = [(g.width, g.prunable) for g in anchor.analysis.groups]
    b_groups = [(g.width, g.prunable) for g in other.analysis.groups]
    if a_groups != b_groups:
        fail(f"channel groups (width, prunable) {b_groups} against {a_groups}")


def _order(member: Member) -> list[Group]:
    """Prunable groups in graph order (of their first producer), so inputs are aligned first."""
    index = {n.name: i for i, n in enumerate(member.graph.nodes)}
    def first(group: Group) -> int:
        return min((index.get(m.node, len(index)) for m in group.members if m.role == "producer"), default=len(index))
    return sorted(member.analysis.prunable, key=first)


def permutation(cost: np.ndarray) -> np.ndarray:
    """(n, n) P with P[j, i] = 1 when the other model's channel i goes to the anchor's channel j."""
    rows, cols = linear_sum_assignment(cost)
    out = np.zeros_like(cost)
    out[rows, cols] = 1.0
    return out


def align(anchor: Member, other: Member, how: str, calib: Dataset | None, seed: int = 0) -> dict[int, float]:
    """Rewrite `other` in place so that its channels sit in the anchor's order; returns, per group,
    the share of channels left where they were (trace(P) / n: 1 when the models were aligned)."""
    if how == "activations":
        if calib is None:
            raise OnnxfuseError("--align activations needs calibration data (--calib); or use --align weights")
        costs = _activation_costs(anchor, other, calib, seed)
        maps = {gid: permutation(cost) for gid, cost in costs.items()}
        apply_maps(other.graph, other.analysis, {gid: _map(p) for gid, p in maps.items()})
        return {gid: float(np.trace(p)) / len(p) for gid, p in maps.items()}
    stayed = {}
    anchor_groups = {g.id: g for g in anchor.analysis.groups}
    for group in _order(other):
        heads = _head_alignments(anchor_groups[group.id], anchor, group, other)
        if heads:  # each other head aligned onto the anchor head it is matched with (head_alignment.py)
            theirs, mine = heads
            p = permutation(theirs.cost(range(group.width), range(group.width), onto=mine).T)
            gmap = GroupMap(np.arange(len(p)), p, p, p, columns=theirs.columns(np.arange(len(p)), p, onto=mine))
        else:
            target = member_features(anchor_groups[group.id], anchor.graph.tensors(), roles=("producer", "param"))
            source = member_features(group, other.graph.tensors(), roles=("producer", "param"))
            p = permutation(pairwise_cost(target, source, 2))
            gmap = _map(p)
        apply_maps(other.graph, other.analysis, {group.id: gmap})
        stayed[group.id] = float(np.trace(p)) / len(p)
    return stayed


def _head_alignments(anchor_group: Group, anchor: Member, group: Group, other: Member):
    """(other's, anchor's) head alignments of a head group, None for other groups."""
    if not (group.coords and anchor_group.coords):
        return None
    pair = (HeadAlignment.build(group, other.graph.tensors(), 2, roles=("producer", "param")),
            HeadAlignment.build(anchor_group, anchor.graph.tensors(), 2, roles=("producer", "param")))
    return pair if None not in pair else None


def _map(p: np.ndarray) -> GroupMap:
    return GroupMap(np.arange(len(p)), p, p, p)


def _activation_costs(anchor: Member, other: Member, calib: Dataset, seed: int) -> dict[int, np.ndarray]:
    variables = {n for n, t in anchor.graph.tensors().items() if isinstance(t, gs.Variable)}
    spaces = {g.id: activation_space(g, variables) for g in anchor.analysis.prunable}
    tensors = dict(spaces.values())
    acts = [sampled_activations(runnable(m.graph, m.original), calib, tensors, seed=seed) for m in (anchor, other)]
    groups = {g.id: g for g in other.analysis.prunable}
    costs = {}
    for gid, space in spaces.items():
        positions = groups[gid].positions[space]
        a, b = (x[space[0]][positions].reshape(len(positions), -1).astype(np.float64) for x in acts)
        costs[gid] = pairwise_cost(a, b, 2)
    return costs


def average_into(anchor: Member, others: list[Member], weights: list[float]) -> int:
    """Anchor constants := the weighted mean of every model's constant at the same place (float
    constants only: shapes, indices and other integers must agree). Returns how many were averaged."""
    done: set[str] = set()
    for index, node in enumerate(anchor.graph.nodes):
        for slot, tensor in enumerate(node.inputs):
            if not isinstance(tensor, gs.Constant) or tensor.name in done:
                continue
            done.add(tensor.name)
            values = [np.asarray(t.values) for t in [tensor] + [o.graph.nodes[index].inputs[slot] for o in others]]
            if not np.issubdtype(values[0].dtype, np.floating):
                if any(not np.array_equal(values[0], v) for v in values[1:]):
                    raise OnnxfuseError(f"constant {tensor.name} of node {node.name} differs between the models "
                                        "and is not a float weight")
                continue
            tensor.values = sum(w * v.astype(np.float64) for w, v in zip(weights, values)).astype(values[0].dtype)
    return len(done)


def producer_targets(anchor: Member, others: list[Member], weights: list[float],
                     calib: Dataset) -> dict[tuple[str, int], ChannelStats]:
    """Per producer output of a prunable group (the anchor's tensor), the weighted mean of the aligned
    models' channel means and standard deviations: measure before averaging."""
    index = {n.name: i for i, n in enumerate(anchor.graph.nodes)}
    spaces = sorted({(index[m.node], m.space) for g in anchor.analysis.prunable for m in producer_members(g)})
    measured = []
    for model in [anchor, *others]:
        names = {space: _same_output(anchor, model, i, space[0]) for i, space in spaces}
        stats = channel_stats(runnable(model.graph, model.original), calib,
                              {name: space[1] for space, name in names.items()}, label=None)
        measured.append({space: stats[name] for space, name in names.items()})
    targets = {}
    for _, space in spaces:
        mean = sum(w * m[space].mean for w, m in zip(weights, measured))
        std = sum(w * m[space].std for w, m in zip(weights, measured))
        targets[space] = ChannelStats(measured[0][space].count, mean, std ** 2, measured[0][space].abs_mean)
    return targets


def renormalise(anchor: Member, targets: dict[tuple[str, int], ChannelStats], calib: Dataset) -> list[dict]:
    """Every target producer of the (averaged) anchor corrected to its target statistics, in graph
    order, each measured after those before it were corrected."""
    report = []
    for space, target in targets.items():
        now = channel_stats(runnable(anchor.graph, anchor.original), calib, {space[0]: space[1]}, label=None)[space[0]]
        rows = np.arange(len(target.mean))
        report.append(correct_channels(anchor.graph, anchor.analysis, space, rows, target.mean, target.std, now))
    return report


def _same_output(anchor: Member, model: Member, index: int, name: str) -> str:
    """`model`'s name for the anchor's tensor `name`, an output of the anchor's node `index`."""
    slot = [t.name for t in anchor.graph.nodes[index].outputs].index(name)
    return model.graph.nodes[index].outputs[slot].name


def model_weights(given: list[float] | None, count: int) -> list[float]:
    if given is None:
        return [1.0 / count] * count
    if len(given) != count or any(not np.isfinite(w) or w < 0 for w in given) or sum(given) <= 0:
        raise OnnxfuseError(f"--weights needs {count} non-negative numbers, one per model, got {given}")
    total = float(sum(given))
    return [w / total for w in given]
