"""Least-squares repair: refit every consumer of a shrunk group on calibration data.

For each consumer (Conv with group 1, Gemm, MatMul, and the QKV projection inside ONNX Runtime's
packed com.microsoft Attention) that reads a mapped group, in graph order:
its input in the new model (after the upstream refits) is unfolded into patches (im2col), its
output in the original model is mapped into the new output channels, and a ridge regression fits
new weights and bias. Only the normal equations XᵀX and XᵀY are kept, accumulated in chunks, so
memory does not grow with the number of samples or positions.

A refit must not memorise the calibration set: the samples are split into FOLDS folds, each
fitted on the others and judged on itself; the ridge strength is the one with the least error on
held-out folds; a refit that does not beat the consumer's present (pruned or fused) weights on
every held-out fold is not written (a win on average can be one lucky fold of a thin set); the
written refit is solved on all samples. Rows: every output position, unless that gives more than
ROWS_PER_COLUMN rows per fitted column, then that many rows spread over the samples (at least
MIN_POSITIONS positions per sample).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..calibration.capture import outputs_only
from ..calibration.data import Dataset
from ..graph.convert import runnable
from ..graph.layouts import (
    WeightLayout,
    bias_values,
    is_packed_attention,
    projection_layout,
    set_weight_rows,
    weight_rows,
    write_bias,
)
from ..log import progress
from ..methods.channelmap import SpaceMaps
from ..runtime.sessions import session
from .registry import RepairJob, register_repair

FOLDS = 4  # cross-validation folds of the calibration samples
ROWS_PER_COLUMN = 16
MIN_POSITIONS = 16
RIDGES = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # relative to the mean diagonal of XᵀX
CHUNK_VALUES = 1 << 22  # patch values per streamed chunk (16 MB in float32)
BATCH = 64


@register_repair("lsq")
def repair_lsq(job: RepairJob) -> list[dict]:
    folds, original_columns = job.data.folds(FOLDS), _original_columns(job.original)
    return [_refit(job, node, folds, original_columns)
            for node in fittable_consumers(job, "least-squares repair", packed_attention=True)]


def fittable_consumers(job: RepairJob, desc: str, packed_attention: bool = False):
    """The consumers of the mapped groups that a repair can refit, in graph order, with progress:
    not grouped convs, nor ONNX Runtime's fused ops (their outputs are after their activation),
    except, with `packed_attention`, com.microsoft Attention, whose QKV projection is refitted
    against the original's x · W + bias."""
    order = {node.name: i for i, node in enumerate(job.graph.nodes)}
    nodes = {node.name: node for node in job.graph.nodes}
    consumers = sorted({m.node for gid in job.space_maps.maps for m in job.analysis.groups[gid].members
                        if m.role == "consumer" and m.scored}, key=lambda n: order.get(n, 0))
    for name in progress(consumers, desc=desc):
        node = nodes[name]
        grouped_conv = node.op == "Conv" and int(node.attrs.get("group", 1)) != 1
        if packed_attention and is_packed_attention(node) or not (grouped_conv or node.domain == "com.microsoft"):
            yield node


@dataclass
class NormalEquations:
    xtx: np.ndarray | float = 0.0
    xty: np.ndarray | float = 0.0
    yty: float = 0.0
    rows: int = 0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """One chunk of rows, in float64: the errors come from differences of these sums."""
        x, y = x.astype(np.float64), y.astype(np.float64)
        self.xtx = self.xtx + x.T @ x
        self.xty = self.xty + x.T @ y
        self.yty += float(np.sum(y * y))
        self.rows += len(x)

    def __add__(self, other: NormalEquations) -> NormalEquations:
        return NormalEquations(self.xtx + other.xtx, self.xty + other.xty, self.yty + other.yty,
                               self.rows + other.rows)

    def squared_error(self, solution: np.ndarray) -> float:
        """‖Y − X·S‖² over the rows, from the normal equations alone."""
        return float(self.yty - 2 * np.sum(solution * self.xty) + np.sum(solution * (self.xtx @ solution)))

    def error(self, solution: np.ndarray) -> float:
        """‖Y − X·S‖ / ‖Y‖."""
        return _relative(self.squared_error(solution), self)

    def solve(self, ridge: float) -> np.ndarray:
        return self.solutions((ridge,))[ridge]

    def solutions(self, ridges) -> dict[float, np.ndarray]:
        """The ridge solution for each strength (relative to the mean diagonal), from one eigendecomposition."""
        values, vectors = np.linalg.eigh(self.xtx)
        scale = max(float(np.mean(np.diag(self.xtx))), 1e-12)
        projected = vectors.T @ self.xty
        return {r: vectors @ (projected / (np.maximum(values, 0.0) + r * scale)[:, None]) for r in ridges}


def _refit(job: RepairJob, node: gs.Node, folds: list[Dataset], original_columns: dict) -> dict:
    layout = projection_layout(node)
    with_bias = layout.bias is not None  # a MatMul has no bias input: fit the weights alone
    sess_new = session(outputs_only(runnable(job.graph, job.like), [node.inputs[0].name]), "cpu", fuse_nodes=False)
    out_map = _output_map(job.space_maps, node, layout)
    columns = _columns(layout.op, np.asarray(node.inputs[1].values).shape, node.attrs.get("transB", 0)) + with_bias
    samples = sum(len(f) for f in folds)
    per_sample = _positions_per_sample(node, original_columns.get(node.name, columns - with_bias) + with_bias,
                                       samples)
    parts = [_equations(job, node, sess_new, fold, per_sample, out_map, with_bias) for fold in folds]
    total = sum(parts[1:], parts[0])
    current = _current_solution(node, layout)
    row = {"node": node.name, "rows": total.rows, "columns": columns}
    if len(parts) == 1:  # one sample: nothing to hold out, nothing to choose by
        ridge, refit = RIDGES[1], True
    else:
        per_fold = _cross_validated(parts, total)
        ridge = min(per_fold, key=lambda r: sum(per_fold[r]))
        kept = [part.squared_error(current) for part in parts]
        refit = all(new < old for new, old in zip(per_fold[ridge], kept))  # a win on every fold, not on average
        row.update(held_out_error_before=_relative(sum(kept), total), held_out_error_refit=_relative(
            sum(per_fold[ridge]), total))
    solution = total.solve(ridge) if refit else current
    row.update(ridge=ridge, refit=refit, output_error_before=total.error(current),
               output_error_after=total.error(solution), relative_weight_change=0.0)
    if refit:
        weights, bias = (solution[:-1].T, solution[-1]) if with_bias else (solution.T, None)
        row["relative_weight_change"] = _write(node, layout, weights, bias)
    return row


def _cross_validated(parts: list[NormalEquations], total: NormalEquations) -> dict[float, list[float]]:
    """Squared error of each ridge strength on every fold, fitted on the other folds (the normal
    equations are additive)."""
    squared: dict[float, list[float]] = {r: [] for r in RIDGES}
    for part in parts:
        rest = NormalEquations(total.xtx - part.xtx, total.xty - part.xty, total.yty - part.yty)
        for ridge, solution in rest.solutions(RIDGES).items():
            squared[ridge].append(part.squared_error(solution))
    return squared


def _relative(squared: float, total: NormalEquations) -> float:
    return float(np.sqrt(max(squared, 0.0) / max(total.yty, 1e-300)))


def _equations(job, node, sess_new, data: Dataset, per_sample, out_map, with_bias) -> NormalEquations:
    """XᵀX, XᵀY of the consumer over `data`; the original's targets come from the job's cache."""
    equations = NormalEquations()
    x_name, y_name = node.inputs[0].name, node.outputs[0].name
    packed = _original_projection(job.original, node) if is_packed_attention(node) else None
    cut = x_name if packed else y_name
    fingerprint = data.fingerprint()
    original = []  # the original cut at the consumer's output, a session made on the first cache miss
    for index, feeds in enumerate(data.batches(BATCH)):
        x = sess_new.run([x_name], feeds)[0]

        def targets(feeds=feeds, index=index):
            if not original:
                original.append(session(outputs_only(job.original, [cut]), "cpu", fuse_nodes=False))
            y = original[0].run([cut], feeds)[0]
            if packed:  # the projection inside the op, from the original's input and weights
                y = y @ packed[0] + packed[1]
            return _sampled_targets(node, y, per_sample, np.random.default_rng((job.seed, index, _crc(node.name))))

        picked, y_rows = job.cache.get(("lsq", cut, y_name, fingerprint, index, per_sample, job.seed), targets)
        for rows, patches in _patch_chunks(node, x, picked):
            target = y_rows[rows]
            if out_map is not None:
                target = np.asarray(out_map @ target.T).T
            if with_bias:
                patches = np.concatenate([patches, np.ones((len(patches), 1), np.float32)], axis=1)
            equations.add(patches, target)
    return equations


def _original_projection(original: onnx.ModelProto, node: gs.Node) -> tuple[np.ndarray, np.ndarray]:
    """The original's packed QKV weight and bias of this attention node (by their names)."""
    from onnx import numpy_helper

    weight = node.inputs[1].name
    bias = node.inputs[2].name if len(node.inputs) > 2 and not node.inputs[2].is_empty() else None
    found = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in original.graph.initializer
             if t.name in (weight, bias)}
    return found[weight], found[bias] if bias else np.zeros(found[weight].shape[1], np.float32)


def _crc(text: str) -> int:
    return zlib.crc32(text.encode())


def _columns(op: str, weight_shape, trans_b: int = 0) -> int:
    """Input columns of a consumer's least-squares problem (bias not counted)."""
    if op == "Conv":
        return int(np.prod(weight_shape[1:]))
    return int(weight_shape[1] if op == "Gemm" and trans_b else weight_shape[0])


def _original_columns(original: onnx.ModelProto) -> dict[str, int]:
    """Columns of every node of the original: the rows sampled per consumer depend on it alone, so
    the original's targets can be cached across probes that shrink the consumer's input differently."""
    shapes = {t.name: list(t.dims) for t in original.graph.initializer}
    columns = {}
    for node in original.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in shapes:
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            columns[node.name] = _columns(node.op_type, shapes[node.input[1]], trans_b)
    return columns


def _positions_per_sample(node: gs.Node, columns: int, samples: int) -> int | None:
    """Output positions per sample for a Conv (None: all of them)."""
    if node.op != "Conv":
        return None
    return max(MIN_POSITIONS, -(-ROWS_PER_COLUMN * columns // max(samples, 1)))


def _sampled_targets(node, y: np.ndarray, per_sample: int | None, rng) -> tuple[np.ndarray, np.ndarray]:
    """(which positions, float32 original outputs there as rows): Gemm/MatMul rows are samples
    (and leading axes); a Conv's are (sample, output position) pairs, all or `per_sample` each."""
    if node.op != "Conv":
        return np.zeros(0, np.int64), y.reshape(-1, y.shape[-1]).astype(np.float32)
    flat = np.moveaxis(y.reshape(y.shape[0], y.shape[1], -1), 1, 2)  # (n, P, C_out)
    n, positions = flat.shape[:2]
    if per_sample is None or per_sample >= positions:
        picked = np.broadcast_to(np.arange(positions), (n, positions))
    else:
        picked = np.sort(np.argsort(rng.random((n, positions)), axis=1)[:, :per_sample], axis=1)
    rows = np.take_along_axis(flat, picked[:, :, None], axis=1).reshape(-1, flat.shape[2])
    return np.ascontiguousarray(picked), rows.astype(np.float32)


def _patch_chunks(node: gs.Node, x: np.ndarray, picked: np.ndarray):
    """(row indices, input patches) in chunks of at most CHUNK_VALUES values."""
    if node.op == "Gemm":
        x = x.T if node.attrs.get("transA", 0) else x
        yield slice(None), x.astype(np.float32)
        return
    if node.op == "MatMul" or is_packed_attention(node):
        yield slice(None), x.reshape(-1, x.shape[-1]).astype(np.float32)
        return
    count = picked.shape[1]
    width = x.shape[1] * int(np.prod(np.asarray(node.inputs[1].values).shape[2:]))
    step = max(1, CHUNK_VALUES // max(count * width, 1))
    for start in range(0, len(x), step):
        stop = min(start + step, len(x))
        yield slice(start * count, stop * count), _conv_patches(node, x[start:stop], picked[start:stop])


def _conv_patches(node, x: np.ndarray, picked: np.ndarray) -> np.ndarray:
    """(n·count, C·k) input patches of the output positions `picked` (n, count), float32."""
    kernel = np.asarray(node.inputs[1].values).shape[2:]
    nd = len(kernel)
    strides = list(node.attrs.get("strides", [1] * nd))
    dilations = list(node.attrs.get("dilations", [1] * nd))
    pads = _pads(node, x.shape[2:], kernel, strides, dilations)
    padded = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)])
    out_spatial = [(padded.shape[2 + d] - dilations[d] * (kernel[d] - 1) - 1) // strides[d] + 1 for d in range(nd)]
    coords = np.unravel_index(picked, out_spatial)  # nd arrays (n, count)
    offsets = np.stack(np.meshgrid(*[np.arange(k) for k in kernel], indexing="ij"), -1).reshape(-1, nd)
    positions = [coords[d][:, :, None] * strides[d] + offsets[None, None, :, d] * dilations[d] for d in range(nd)]
    return _gather(padded, positions).reshape(picked.size, -1).astype(np.float32)


def _pads(node, spatial, kernel, strides, dilations) -> list[int]:
    """Begin and end pads per spatial axis; auto_pad SAME_* computed as the spec says."""
    nd = len(kernel)
    auto = node.attrs.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", "VALID"):
        return list(node.attrs.get("pads", [0] * 2 * nd)) if auto == "NOTSET" else [0] * 2 * nd
    total = [max((-(-spatial[d] // strides[d]) - 1) * strides[d] + (kernel[d] - 1) * dilations[d] + 1 - spatial[d], 0)
             for d in range(nd)]
    small = [t // 2 for t in total]
    large = [t - h for t, h in zip(total, small)]
    return small + large if auto == "SAME_UPPER" else large + small


def _gather(padded: np.ndarray, positions: list[np.ndarray]) -> np.ndarray:
    """padded (N, C, *S) at positions[d] (N, count, K) → (N, count, C, K)."""
    batch = np.arange(padded.shape[0])[:, None, None]
    moved = np.moveaxis(padded, 1, -1)  # (N, *S, C)
    picked = moved[(batch,) + tuple(positions)]  # (N, count, K, C)
    return np.moveaxis(picked, -1, 2)  # (N, count, C, K)


def _current_solution(node: gs.Node, layout: WeightLayout) -> np.ndarray:
    """The node's present weights (and bias) in the layout of the least-squares solution."""
    weights = weight_rows(node, layout)
    if layout.bias is None:
        return np.ascontiguousarray(weights.T)
    bias = bias_values(node, layout, len(weights))
    return np.concatenate([weights.T, (np.zeros(len(weights)) if bias is None else bias)[None, :]], axis=0)


def _output_map(space_maps: SpaceMaps, node: gs.Node, layout: WeightLayout):
    """Old → new output channels of the consumer (its producer map), None when unchanged."""
    if is_packed_attention(node):  # the packed weight's columns: a space of the node's own
        space = (node.inputs[1].name, 1)
    else:
        space = (node.outputs[0].name, layout.output_axis(len(node.outputs[0].shape or [0, 0])))
    if space not in space_maps.touching:
        return None
    return space_maps.matrix(space, "producer")


def _write(node: gs.Node, layout: WeightLayout, weights: np.ndarray, bias: np.ndarray | None) -> float:
    """Store the fitted weights in the node's layout; returns the relative change."""
    old = np.asarray(node.inputs[1].values)
    new = set_weight_rows(node, layout, weights)
    if bias is not None:
        write_bias(node, layout, bias, old.dtype)
    return float(np.linalg.norm(new - old) / max(np.linalg.norm(old), 1e-12))
