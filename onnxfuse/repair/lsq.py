"""Least-squares repair: refit every consumer of a shrunk group on calibration data.

For each consumer (Conv with group 1, Gemm, MatMul) that reads a mapped group, in graph order:
its input in the new model (after the upstream refits) is unfolded into patches at sampled output
positions (im2col), its output in the original model is mapped into the new output channels, and
a ridge regression fits new weights and bias. Only the normal equations XᵀX and XᵀY are kept, so
memory does not grow with the number of calibration samples.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..calibration.capture import with_outputs
from ..calibration.data import Dataset
from ..graph.convert import runnable
from ..graph.layouts import (
    WeightLayout,
    bias_values,
    layout_of,
    set_weight_rows,
    weight_rows,
    write_bias,
)
from ..log import progress
from ..methods.channelmap import SpaceMaps
from ..runtime.sessions import session
from .registry import RepairJob, register_repair

POSITIONS = 16  # sampled output positions per input for convolutions
RIDGE = 1e-5  # relative to the mean diagonal of XᵀX


@register_repair("lsq")
def repair_lsq(job: RepairJob) -> list[dict]:
    graph, analysis, space_maps = job.graph, job.analysis, job.space_maps
    order = {node.name: i for i, node in enumerate(graph.nodes)}
    nodes = {node.name: node for node in graph.nodes}
    consumers = sorted({m.node for gid in space_maps.maps for m in analysis.groups[gid].members
                        if m.role == "consumer" and m.scored}, key=lambda n: order.get(n, 0))
    report = []
    for name in progress(consumers, desc="least-squares repair"):
        node = nodes[name]
        if node.op == "Conv" and int(node.attrs.get("group", 1)) != 1 or node.domain == "com.microsoft":
            continue  # grouped convs; ORT's fused ops, whose outputs are after their activation
        report.append(_refit(graph, job.like, job.original, space_maps, node, job.data, job.seed))
    return report


def _refit(graph, like, original, space_maps: SpaceMaps, node: gs.Node, data: Dataset, seed: int) -> dict:
    x_name, y_name = node.inputs[0].name, node.outputs[0].name
    layout = layout_of(node)
    with_bias = layout.bias is not None  # a MatMul has no bias input: fit the weights alone
    new_model = with_outputs(runnable(graph, like), [x_name])
    old_model = with_outputs(original, [y_name])
    sess_new, sess_old = session(new_model, "cpu", fuse_nodes=False), session(old_model, "cpu", fuse_nodes=False)
    rng = np.random.default_rng(seed)
    xtx = xty = None
    yty = 0.0
    out_map = _output_map(space_maps, node, layout, y_name)
    for feeds in data.batches(32):
        x = sess_new.run([x_name], feeds)[0].astype(np.float64)
        y = sess_old.run([y_name], feeds)[0].astype(np.float64)
        patches, targets = _samples(node, x, y, rng)
        if out_map is not None:
            targets = np.asarray(out_map @ targets.T).T
        if with_bias:
            patches = np.concatenate([patches, np.ones((len(patches), 1))], axis=1)
        xtx = patches.T @ patches if xtx is None else xtx + patches.T @ patches
        xty = patches.T @ targets if xty is None else xty + patches.T @ targets
        yty += float(np.sum(targets * targets))
    ridge = RIDGE * max(np.trace(xtx) / len(xtx), 1e-12)
    solution = np.linalg.solve(xtx + ridge * np.eye(len(xtx)), xty)  # (D [+ 1], C_out)
    error_before = _relative_error(_current_solution(node, layout), xtx, xty, yty)
    weights, bias = (solution[:-1].T, solution[-1]) if with_bias else (solution.T, None)
    change = _write(node, layout, weights, bias)
    return {"node": node.name, "features": int(weights.shape[1]), "relative_weight_change": change,
            "output_error_before": error_before, "output_error_after": _relative_error(solution, xtx, xty, yty)}


def _relative_error(solution: np.ndarray, xtx: np.ndarray, xty: np.ndarray, yty: float) -> float:
    """‖Y − X·S‖ / ‖Y‖ on the sampled positions, from the normal equations alone."""
    squared = yty - 2 * np.sum(solution * xty) + np.sum(solution * (xtx @ solution))
    return float(np.sqrt(max(squared, 0.0) / max(yty, 1e-300)))


def _current_solution(node: gs.Node, layout: WeightLayout) -> np.ndarray:
    """The node's present weights (and bias) in the layout of the least-squares solution."""
    weights = weight_rows(node, layout)
    if layout.bias is None:
        return np.ascontiguousarray(weights.T)
    bias = bias_values(node, layout, len(weights))
    return np.concatenate([weights.T, (np.zeros(len(weights)) if bias is None else bias)[None, :]], axis=0)


def _output_map(space_maps: SpaceMaps, node: gs.Node, layout: WeightLayout, y_name: str):
    """Old → new output channels of the consumer (its producer map), None when unchanged."""
    space = (y_name, layout.output_axis(len(node.outputs[0].shape or [0, 0])))
    if space not in space_maps.touching:
        return None
    return space_maps.matrix(space, "producer")


def _samples(node: gs.Node, x: np.ndarray, y: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """Rows of (input patch, original output) pairs."""
    if node.op == "Gemm":
        x = x.T if node.attrs.get("transA", 0) else x
        return x, y
    if node.op == "MatMul":
        return x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    return _conv_patches(node, x, y, rng)


def _conv_patches(node, x, y, rng):
    kernel = np.asarray(node.inputs[1].values).shape[2:]
    nd = len(kernel)
    strides = list(node.attrs.get("strides", [1] * nd))
    dilations = list(node.attrs.get("dilations", [1] * nd))
    pads = list(node.attrs.get("pads", [0] * 2 * nd))
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise NotImplementedError("least-squares repair of a Conv with auto_pad SAME")
    padded = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)])
    n, out_spatial = y.shape[0], y.shape[2:]
    count = min(POSITIONS, int(np.prod(out_spatial)))
    flat = rng.integers(0, int(np.prod(out_spatial)), size=(n, count))
    coords = np.unravel_index(flat, out_spatial)  # nd arrays (n, count)
    offsets = np.stack(np.meshgrid(*[np.arange(k) for k in kernel], indexing="ij"), -1).reshape(-1, nd)
    positions = [coords[d][:, :, None] * strides[d] + offsets[None, None, :, d] * dilations[d] for d in range(nd)]
    patches = _gather(padded, positions).reshape(n * count, -1)  # (n·count, C·k)
    targets = np.moveaxis(y.reshape(y.shape[0], y.shape[1], -1), 1, 2)  # (n, P, C_out)
    targets = np.take_along_axis(targets, flat[:, :, None], axis=1).reshape(n * count, -1)
    return patches, targets


def _gather(padded: np.ndarray, positions: list[np.ndarray]) -> np.ndarray:
    """padded (N, C, *S) at positions[d] (N, count, K) → (N, count, C, K)."""
    batch = np.arange(padded.shape[0])[:, None, None]
    moved = np.moveaxis(padded, 1, -1)  # (N, *S, C)
    picked = moved[(batch,) + tuple(positions)]  # (N, count, K, C)
    return np.moveaxis(picked, -1, 2)  # (N, count, C, K)


def _write(node: gs.Node, layout: WeightLayout, weights: np.ndarray, bias: np.ndarray | None) -> float:
    """Store the fitted weights in the node's layout; returns the relative change."""
    old = np.asarray(node.inputs[1].values)
    new = set_weight_rows(node, layout, weights)
    if bias is not None:
        write_bias(node, layout, bias, old.dtype)
    return float(np.linalg.norm(new - old) / max(np.linalg.norm(old), 1e-12))
