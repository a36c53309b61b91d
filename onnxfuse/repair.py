"""Repair with calibration data: give every new channel the statistics its sources had.

`stats` (REPAIR, Jordan et al., ICLR 2023): for each channel a producer writes, the original
model's per-channel mean and standard deviation are combined with the group's averaging map
(target_j = Σ_i A[j, i] · stat_i); the new model's channel is measured on the same data and
corrected by an affine map folded into the producer's weight rows and bias. Producers are repaired
one at a time in graph order, each measured after everything upstream of it was repaired.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .capture import ChannelStats, channel_stats
from .channelmap import SpaceMaps
from .channels import Analysis, Group
from .data import Dataset
from .normalize import runnable
from .ops import Member

MIN_STD = 1e-6


def producer_members(group: Group) -> list[Member]:
    return [m for m in group.members if m.role == "producer" and m.scored]


def repair_stats(graph: gs.Graph, like: onnx.ModelProto, original: onnx.ModelProto, analysis: Analysis,
                 space_maps: SpaceMaps, data: Dataset, log=lambda msg: None) -> list[dict]:
    order = {node.name: i for i, node in enumerate(graph.nodes)}
    units = sorted(((order.get(m.node, 0), m.space, analysis.groups[gid]) for gid in space_maps.maps
                    for m in producer_members(analysis.groups[gid])), key=lambda u: u[0])
    before = channel_stats(original, data, {space[0]: space[1] for _, space, _ in units},
                           label="original statistics")
    report = []
    for i, (_, space, group) in enumerate(units):
        current = channel_stats(runnable(graph, like), data, {space[0]: space[1]},
                                label=f"repair {i + 1}/{len(units)}")[space[0]]
        try:
            report.append(_correct(graph, analysis, space_maps, group, space, before[space[0]], current))
        except NotImplementedError as exc:
            log(f"repair skipped for {space[0]}: {exc}")
    return report


def _correct(graph, analysis, space_maps, group, space, before: ChannelStats, now: ChannelStats) -> dict:
    gmap = space_maps.maps[group.id]
    old_pos = group.positions[space][:, 0]
    new_pos = space_maps.slot_positions(group, space)[:, 0]
    target_mean = gmap.param @ before.mean[old_pos]
    target_std = gmap.param @ before.std[old_pos]
    mean, std = now.mean[new_pos], now.std[new_pos]
    scale = np.where(std > MIN_STD, target_std / np.maximum(std, MIN_STD), 1.0)
    shift = target_mean - mean * scale
    tensors = graph.tensors()
    bias = _bias_of(graph, space)
    for member in analysis.members[space]:
        if member.role == "producer" and member.scored:
            _scale_rows(tensors[member.tensor], member.axis, new_pos, scale)
    _add_rows(bias, new_pos, shift, scale)
    return {"group": group.id, "tensor": space[0],
            "std_error_before": float(np.mean(np.abs(std / np.maximum(target_std, MIN_STD) - 1))),
            "mean_error_before": float(np.mean(np.abs(mean - target_mean)))}


def _scale_rows(constant: gs.Constant, axis: int, rows: np.ndarray, scale: np.ndarray) -> None:
    values = np.array(constant.values)
    moved = np.moveaxis(values, axis, 0)
    moved[rows] = (moved[rows].astype(np.float64) * scale.reshape((-1,) + (1,) * (moved.ndim - 1))).astype(
        values.dtype)
    constant.values = values


def _add_rows(bias: gs.Constant, rows: np.ndarray, shift: np.ndarray, scale: np.ndarray) -> None:
    values = np.array(bias.values, dtype=np.float64)
    values[rows] = values[rows] * scale + shift
    bias.values = values.astype(np.asarray(bias.values).dtype)


def _bias_of(graph: gs.Graph, space) -> gs.Constant:
    """The 1-D bias of the Conv/ConvTranspose/Gemm that writes `space` (zeros added if it has none)."""
    producer = graph.tensors()[space[0]].inputs[0]
    if producer.op not in ("Conv", "ConvTranspose", "Gemm"):
        raise NotImplementedError(f"stats repair of a {producer.op} producer")
    weight = np.asarray(producer.inputs[1].values)
    out_axis = {"Conv": 0, "ConvTranspose": 1}.get(producer.op, 0 if producer.attrs.get("transB", 0) else 1)
    width = weight.shape[out_axis] * (int(producer.attrs.get("group", 1)) if producer.op == "ConvTranspose" else 1)
    values = np.zeros(width)
    if len(producer.inputs) > 2 and not producer.inputs[2].is_empty():
        if not isinstance(producer.inputs[2], gs.Constant):
            raise NotImplementedError(f"stats repair with a computed bias at {producer.name}")
        old = np.asarray(producer.inputs[2].values, dtype=np.float64)
        values = np.broadcast_to(old.reshape(-1) if old.size == width else old, (width,)).copy()
        if producer.op == "Gemm":
            values *= float(producer.attrs.get("beta", 1.0))
            producer.attrs["beta"] = 1.0
    bias = gs.Constant(f"{producer.name}_bias", values.astype(weight.dtype))
    if len(producer.inputs) > 2:
        producer.inputs[2] = bias
    else:
        producer.inputs.append(bias)
    return bias
