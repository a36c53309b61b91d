"""Repair with calibration data: give every new channel the statistics its sources had.

`stats` (REPAIR, Jordan et al., ICLR 2023): for each channel a producer writes, the original
model's per-channel mean and standard deviation are combined with the group's averaging map
(target_j = Σ_i A[j, i] · stat_i); the new model's channel is measured on the same data and
corrected by an affine map folded into the producer's weight rows and bias. Producers are repaired
one at a time in graph order, each measured after everything upstream of it was repaired.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis.channels import Group
from ..analysis.relations import Member
from ..calibration.capture import ChannelStats, channel_stats
from ..graph.convert import runnable
from ..graph.layouts import bias_values, layout_of, output_channels, write_bias
from ..log import progress, warning
from .registry import RepairJob, register_repair

MIN_STD = 1e-6


def producer_members(group: Group) -> list[Member]:
    return [m for m in group.members if m.role == "producer" and m.scored]


@dataclass(frozen=True)
class Unit:
    """One producer output to correct, with its channels' statistics in the original model."""
    space: tuple[str, int]
    group: Group
    target: ChannelStats


@register_repair("stats")
def repair_stats(job: RepairJob) -> list[dict]:
    report = []
    for unit in progress(stats_units(job), desc="stats repair"):
        try:
            report.append(correct_unit(job, unit))
        except NotImplementedError as exc:
            warning(f"repair skipped for {unit.space[0]}: {exc}")
    return report


def stats_units(job: RepairJob) -> list[Unit]:
    """Every scored producer of a mapped group, in graph order, its targets measured on job.data."""
    graph, analysis, space_maps = job.graph, job.analysis, job.space_maps
    order = {node.name: i for i, node in enumerate(graph.nodes)}
    units = sorted(((order.get(m.node, 0), m.space, analysis.groups[gid]) for gid in space_maps.maps
                    for m in producer_members(analysis.groups[gid])), key=lambda u: u[0])
    before = channel_stats(job.original, job.data, {space[0]: space[1] for _, space, _ in units},
                           label="original statistics")
    return [Unit(space, group, before[space[0]]) for _, space, group in units]


def correct_unit(job: RepairJob, unit: Unit) -> dict:
    """Measure the unit's channels in the present graph on job.data and correct them (in place)."""
    space = unit.space
    current = channel_stats(runnable(job.graph, job.like), job.data, {space[0]: space[1]}, label=None)[space[0]]
    return _correct(job.graph, job.analysis, job.space_maps, unit.group, space, unit.target, current)


def _correct(graph, analysis, space_maps, group, space, before: ChannelStats, now: ChannelStats) -> dict:
    gmap = space_maps.maps[group.id]
    old_pos = group.positions[space][:, 0]
    new_pos = space_maps.slot_positions(group, space)[:, 0]
    return {"group": group.id, **correct_channels(graph, analysis, space, new_pos, gmap.param @ before.mean[old_pos],
                                                  gmap.param @ before.std[old_pos], now)}


def correct_channels(graph, analysis, space, rows: np.ndarray, target_mean: np.ndarray, target_std: np.ndarray,
                     now: ChannelStats) -> dict:
    """The affine map that gives channels `rows` of `space` (measured: `now`) the target mean and
    standard deviation, folded into its producers' weight rows and bias."""
    mean, std = now.mean[rows], now.std[rows]
    scale = np.where(std > MIN_STD, target_std / np.maximum(std, MIN_STD), 1.0)
    shift = target_mean - mean * scale
    tensors = graph.tensors()
    bias = _bias_of(graph, space)
    for member in analysis.members[space]:
        if member.role == "producer" and member.scored:
            _scale_rows(tensors[member.tensor], member.axis, rows, scale)
    _add_rows(bias, rows, shift, scale)
    return {"tensor": space[0], "std_error_before": float(np.mean(np.abs(std / np.maximum(target_std, MIN_STD) - 1))),
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
    layout = layout_of(producer)
    if layout is None or layout.bias is None or producer.domain == "com.microsoft":  # fused: after its activation
        raise NotImplementedError(f"stats repair of a {producer.op} producer")
    values = bias_values(producer, layout, output_channels(producer, layout))
    if values is None:
        raise NotImplementedError(f"stats repair with a computed bias at {producer.name}")
    return write_bias(producer, layout, values, np.asarray(producer.inputs[1].values).dtype)
