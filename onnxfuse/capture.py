"""Activation capture with ONNX Runtime: intermediate tensors exposed as extra outputs, read in
batches, reduced on the fly to per-channel statistics (memory stays bounded whatever the size of
the calibration set)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from .data import Dataset
from .validate import session


@dataclass
class ChannelStats:
    count: int
    mean: np.ndarray  # (channels,)
    var: np.ndarray  # (channels,)

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


def channel_stats(model: onnx.ModelProto, data: Dataset, tensors: dict[str, int], batch_size: int = 64,
                  device: str = "cpu", label: str = "capture") -> dict[str, ChannelStats]:
    """Mean and variance of every channel of each tensor (name → channel axis) over all other axes."""
    names = list(tensors)
    sess = session(with_outputs(model, names), device)
    acc = {name: [0, 0.0, 0.0] for name in names}
    batches = list(range(0, len(data), batch_size))
    for step, feeds in enumerate(data.batches(batch_size)):
        outputs = sess.run(names, feeds)
        for name, value in zip(names, outputs):
            moved = np.moveaxis(value.astype(np.float64), tensors[name], 0).reshape(value.shape[tensors[name]], -1)
            a = acc[name]
            a[0] += moved.shape[1]
            a[1] = a[1] + moved.sum(1)
            a[2] = a[2] + (moved * moved).sum(1)
        progress(label, step + 1, len(batches))
    stats = {}
    for name, (count, total, squares) in acc.items():
        mean = total / count
        stats[name] = ChannelStats(count, mean, squares / count - mean * mean)
    return stats


def progress(label: str, done: int, total: int) -> None:
    """A one-line progress bar on stderr (only when it is a terminal)."""
    if not sys.stderr.isatty():
        return
    width = 30
    filled = int(width * done / max(total, 1))
    sys.stderr.write(f"\r{label}: [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()
