"""Per-unit rescale repair: one scale per kept channel, head or neuron where a consumer reads it.

The mask tuning of Kwon et al. (NeurIPS 2022), on our groups: for each consumer (Conv with group
1, Gemm, MatMul) that reads a mapped group, in graph order, every kept unit u (a channel, or a
head's block of D features, or a flatten head's features) gets a factor m_u on the consumer's
weights that read it, fitted so that the consumer's output on the calibration data matches the
original's: min Σ‖Σ_u m_u·X_u W_u + rest − Y‖² + λ·‖m − 1‖², damped toward 1 (the unrepaired
model). A handful of numbers per consumer instead of lsq's whole weight matrix: cheaper, and hard
to overfit on a thin calibration set. It shares lsq's normal equations (XᵀX, XᵀY over the new
model's inputs and the original's outputs), its folds (λ chosen on held-out folds, written only
when it beats the present weights on every fold) and its row sampling.
"""

from __future__ import annotations

import numpy as np

from ..calibration.capture import outputs_only
from ..graph.convert import runnable
from ..graph.layouts import layout_of
from ..runtime.sessions import session
from . import lsq
from .registry import RepairJob, register_repair


@register_repair("rescale")
def repair_rescale(job: RepairJob) -> list[dict]:
    folds, original_columns = job.data.folds(lsq.FOLDS), lsq._original_columns(job.original)
    report = []
    for node in lsq.fittable_consumers(job, "rescale repair"):
        units = _units(job, node)
        if units is not None:
            report.append(_rescale(job, node, units, folds, original_columns))
    return report


def _units(job: RepairJob, node) -> tuple[np.ndarray, int] | None:
    """((columns,) unit index of each column of the consumer's problem, U): kept units 0…U−1 of the
    groups that reach its input, U for every other column (held at scale 1); None if none reach it."""
    layout = layout_of(node)
    x = node.inputs[0]
    space = (x.name, layout.input_axis(len(x.shape or [])))
    groups = job.space_maps.touching.get(space, [])
    if not groups:
        return None
    kernel = int(np.prod(np.asarray(node.inputs[1].values).shape[2:])) if node.op == "Conv" else 1
    width = job.space_maps.new_width(space)
    per_channel = np.full(width, -1)
    count = 0
    for group in groups:
        for slots in job.space_maps.slot_positions(group, space):  # (k,) positions of one kept unit
            per_channel[slots] = count
            count += 1
    per_channel[per_channel < 0] = count
    return np.repeat(per_channel, kernel), count  # a Conv's columns: channel c's kernel taps c·K … c·K + K − 1


def _rescale(job, node, units: tuple[np.ndarray, int], folds, original_columns) -> dict:
    layout = layout_of(node)
    with_bias = layout.bias is not None
    sess_new = session(outputs_only(runnable(job.graph, job.like), [node.inputs[0].name]), "cpu", fuse_nodes=False)
    out_map = lsq._output_map(job.space_maps, node, layout)
    units, count = units
    columns = len(units)
    samples = sum(len(f) for f in folds)
    per_sample = lsq._positions_per_sample(node, original_columns.get(node.name, columns) + with_bias, samples)
    parts = [lsq._equations(job, node, sess_new, fold, per_sample, out_map, with_bias) for fold in folds]
    total = sum(parts[1:], parts[0])
    current = lsq._current_solution(node, layout)  # (columns [+ bias], outputs)
    membership = np.append(units, count) if with_bias else units  # the bias is held fixed too
    row = {"node": node.name, "units": count, "rows": total.rows}
    if len(parts) == 1:
        damping, rescaled = lsq.RIDGES[1], True
    else:
        held_out = {d: [] for d in lsq.RIDGES}
        for part in parts:
            rest = lsq.NormalEquations(total.xtx - part.xtx, total.xty - part.xty, total.yty - part.yty)
            for d, solution in _solutions(rest, current, membership, count).items():
                held_out[d].append(part.squared_error(solution))
        damping = min(held_out, key=lambda d: sum(held_out[d]))
        before = [part.squared_error(current) for part in parts]
        rescaled = all(new < old for new, old in zip(held_out[damping], before))
    solution = _solutions(total, current, membership, count, (damping,))[damping] if rescaled else current
    row.update(damping=damping, rescaled=rescaled, output_error_before=total.error(current),
               output_error_after=total.error(solution))
    if rescaled:
        weights, bias = (solution[:-1].T, solution[-1]) if with_bias else (solution.T, None)
        rows = membership < count  # the scaled columns (the fixed ones stay at 1)
        scales = np.linalg.norm(solution[rows], axis=1) / np.maximum(np.linalg.norm(current[rows], axis=1), 1e-300)
        row["scale_range"] = [round(float(scales.min()), 4), round(float(scales.max()), 4)]
        lsq._write(node, layout, weights, bias)
    return row


def _solutions(equations, current: np.ndarray, membership: np.ndarray, count: int,
               dampings=lsq.RIDGES) -> dict[float, np.ndarray]:
    """The current weights with the rows of unit u scaled by m_u, m solving the damped normal
    equations of the U scales (the last unit, the fixed columns, at 1), for each damping."""
    indicator = np.zeros((len(membership), count + 1))
    indicator[np.arange(len(membership)), membership] = 1.0
    gram = indicator.T @ (equations.xtx * (current @ current.T)) @ indicator  # (U+1, U+1)
    target = indicator.T @ np.sum(equations.xty * current, axis=1)
    free, fixed = gram[:count, :count], gram[:count, count]
    scale = max(float(np.mean(np.diag(free))), 1e-300)
    out = {}
    for d in dampings:
        m = np.linalg.solve(free + d * scale * np.eye(count), target[:count] - fixed + d * scale)
        out[d] = current * (indicator @ np.append(m, 1.0))[:, None]
    return out
