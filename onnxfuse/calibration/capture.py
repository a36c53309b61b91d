"""Activation capture with ONNX Runtime: intermediate tensors exposed as extra outputs, read in
batches, reduced on the fly to per-channel statistics (memory stays bounded whatever the size of
the calibration set)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ..log import progress
from ..runtime.sessions import session
from .data import Dataset


@dataclass
class ChannelStats:
    count: int
    mean: np.ndarray  # (channels,)
    var: np.ndarray  # (channels,)
    abs_mean: np.ndarray  # (channels,)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.maximum(self.var, 0.0))


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` that also outputs the tensors `names` (float, shape left to the runtime)."""
    extended = onnx.ModelProto()
    extended.CopyFrom(model)
    present = {o.name for o in extended.graph.output}
    for name in names:
        if name not in present:
            extended.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return extended


def outputs_only(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` whose outputs are the tensors `names` and whose nodes are only those they
    depend on: ONNX Runtime runs every node of a graph whatever outputs are fetched, so reading a
    tensor half-way costs half a run only on the cut graph."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    needed, stack, keep = set(), list(names), set()
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        node = producer.get(name)
        if node is not None and id(node) not in keep:
            keep.add(id(node))
            stack.extend(n for n in list(node.input) + _captured_names(node) if n)
    cut = onnx.ModelProto()
    cut.CopyFrom(model)
    del cut.graph.node[:]
    cut.graph.node.extend(n for n in graph.node if id(n) in keep)
    del cut.graph.initializer[:]
    cut.graph.initializer.extend(t for t in graph.initializer if t.name in needed)
    del cut.graph.output[:]
    cut.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    return cut


def _captured_names(node: onnx.NodeProto) -> list[str]:
    """Outer-scope names read inside a node's subgraphs (If/Loop/Scan bodies)."""
    names = []
    for attr in node.attribute:
        for sub in list(attr.g.node if attr.HasField("g") else []) + [n for g in attr.graphs for n in g.node]:
            names.extend(sub.input)
            names.extend(_captured_names(sub))
    return names


class OutputCache:
    """What the original model computes at some tensor on some data (a tuple of arrays), kept
    across the repairs of one compress, its probes included, up to `limit` bytes; beyond that,
    computed again."""

    def __init__(self, limit: int = 1 << 30):
        self._items: dict[tuple, tuple] = {}
        self._limit, self._size = limit, 0

    def get(self, key: tuple, compute) -> tuple:
        if key in self._items:
            return self._items[key]
        value = compute()
        size = sum(a.nbytes for a in value)
        if self._size + size <= self._limit:
            self._items[key] = value
            self._size += size
        return value


def channel_stats(model: onnx.ModelProto, data: Dataset, tensors: dict[str, int], batch_size: int = 64,
                  device: str = "cpu", label: str | None = "capture", sess=None) -> dict[str, ChannelStats]:
    """Mean and variance of every channel of each tensor (name → channel axis) over all other axes.
    `sess`: a session of `model` that outputs the tensors already (when called many times);
    `label` None: no progress bar."""
    names = list(tensors)
    sess = sess or session(outputs_only(model, names), device, fuse_nodes=False)
    acc = {name: [0, 0.0, 0.0, 0.0] for name in names}
    batches = -(-len(data) // batch_size)
    for feeds in progress(data.batches(batch_size), total=batches, desc=label):
        outputs = sess.run(names, feeds)
        for name, value in zip(names, outputs):
            moved = np.moveaxis(value.astype(np.float64), tensors[name], 0).reshape(value.shape[tensors[name]], -1)
            a = acc[name]
            a[0] += moved.shape[1]
            a[1] = a[1] + moved.sum(1)
            a[2] = a[2] + (moved * moved).sum(1)
            a[3] = a[3] + np.abs(moved).sum(1)
    stats = {}
    for name, (count, total, squares, absolute) in acc.items():
        mean = total / count
        stats[name] = ChannelStats(count, mean, squares / count - mean * mean, absolute / count)
    return stats


def sampled_activations(model: onnx.ModelProto, data: Dataset, tensors: dict[str, int], positions: int = 8,
                        batch_size: int = 64, seed: int = 0, device: str = "cpu") -> dict[str, np.ndarray]:
    """(channels, samples · positions) activations of each tensor: for every input, `positions`
    random spatial positions (all of them for tensors without spatial axes), the same for every
    channel, so columns are comparable across channels."""
    names = list(tensors)
    sess = session(outputs_only(model, names), device, fuse_nodes=False)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    total = -(-len(data) // batch_size)
    for feeds in progress(data.batches(batch_size), total=total, desc="activations"):
        for name, value in zip(names, sess.run(names, feeds)):
            moved = np.moveaxis(value, tensors[name], 1)  # (N, C, ...)
            flat = moved.reshape(moved.shape[0], moved.shape[1], -1)  # (N, C, P)
            if flat.shape[2] > positions:
                idx = rng.integers(0, flat.shape[2], size=(flat.shape[0], 1, positions))
                flat = np.take_along_axis(flat, np.broadcast_to(idx, (flat.shape[0], flat.shape[1], positions)), 2)
            parts[name].append(np.moveaxis(flat, 1, 0).reshape(flat.shape[1], -1).astype(np.float32))
    return {name: np.concatenate(p, axis=1) for name, p in parts.items()}


def activation_space(group, activations: set[str]) -> tuple[str, int]:
    """Where a group's channels are read: a consumer's input, else what a producer writes, else
    any activation the group runs through (`activations`: the names of non-constant tensors)."""
    for role in ("consumer", "producer", None):
        for member in group.members:
            if (role is None or member.role == role) and member.space[0] in activations:
                return member.space
    return next(s for s in group.positions if s[0] in activations)
