"""Synthetic calibration data for image models that carry BatchNormalization statistics.

A trained BN layer stores the mean and variance that its input had on the training data. Random
images are drawn from a small family of generators (blocks of random values at mixed scales,
optionally sparse, optionally confined to a centred box, in one of a few value ranges); the
generator whose images reproduce those statistics best is kept, and its images stand in for
calibration data (the idea of ZeroQ's distilled data, Cai et al. CVPR 2020, without gradients).
Real images score far lower than any generator. On the model zoo the score keeps away the
generators whose value range or layout is wrong (those repair VGG11-BN or MobileNetV2 to 10–45 %
instead of 65 / 29 %), but it does not rank the better ones finely (benchmarks/synthetic_ranking.py).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import OnnxfuseError
from ..graph.rewrites import constant_node_value
from ..log import progress
from ..runtime.sessions import session
from .capture import channel_stats, with_outputs
from .data import Dataset, input_specs

VALUE_RANGES = ((0.0, 1.0), (-1.0, 1.0), (-2.5, 2.5), (0.0, 255.0))
PROBE_SAMPLES = 32


@dataclass(frozen=True)
class Generator:
    density: float  # fraction of blocks that are not zero
    centred: bool  # blocks only inside a random centred box
    low: float
    high: float

    def describe(self) -> str:
        return (f"random blocks at mixed scales, {self.density:.0%} non-zero"
                f"{', inside a centred box' if self.centred else ''}, values in [{self.low:g}, {self.high:g}]")

    def sample(self, count: int, shape: tuple[int, int, int], seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        channels, height, width = shape
        rows, cols = np.arange(height), np.arange(width)
        scales = _block_counts(min(height, width))
        out = np.empty((count, channels, height, width), dtype=np.float32)
        for i in range(count):
            cells = rng.choice(scales)
            blocks = rng.uniform(self.low, self.high, (channels, cells, cells))
            blocks *= rng.random((1, cells, cells)) < self.density
            image = blocks[:, (rows * cells // height)[:, None], (cols * cells // width)[None, :]]
            if self.centred:
                half_h, half_w = rng.uniform(0.2, 0.47, 2) * (height, width)
                box = (np.abs(rows - (height - 1) / 2) < half_h)[:, None] & \
                      (np.abs(cols - (width - 1) / 2) < half_w)[None, :]
                image = np.where(box, image, self.low if self.low >= 0 else 0.0)
            out[i] = image
        return out


def _block_counts(size: int) -> list[int]:
    """Blocks per side: 1, 2, 4, … up to half the image side (ending at exactly size // 2)."""
    counts = [1 << k for k in range(size.bit_length()) if (1 << k) < size // 2]
    return counts + [max(size // 2, 1)]


GENERATORS = tuple(Generator(density, centred, low, high) for (low, high), density, centred
                   in itertools.product(VALUE_RANGES, (0.3, 0.6, 1.0), (False, True)))


def synthesize(model: onnx.ModelProto, samples: int = 256, seed: int = 0) -> tuple[Dataset, str]:
    """`samples` synthetic inputs for `model`'s one image input, from the generator whose images
    best reproduce the model's BatchNormalization statistics; with a line saying which and how well."""
    name, shape = _image_input(model)
    stats = bn_statistics(model)
    if not stats:
        raise OnnxfuseError("synthetic calibration data needs BatchNormalization statistics and the model has "
                            "none (were they folded into the convolutions?); give real data with --calib")
    sess = session(with_outputs(model, list(stats)), "cpu", fuse_nodes=False)
    scores = []
    for generator in progress(GENERATORS, desc="synthetic data"):
        probe = Dataset({name: generator.sample(PROBE_SAMPLES, shape, seed + 1)})
        scores.append(mismatch(model, probe, stats, sess))
    best = int(np.argmin(scores))
    chosen = GENERATORS[best]
    summary = (f"synthetic data: {samples} samples of {chosen.describe()}; BN-statistics mismatch "
               f"{scores[best]:.3f} (best of {len(GENERATORS)} generators, 0 = exact, the worst {max(scores):.3f})")
    return Dataset({name: chosen.sample(samples, shape, seed)}), summary


def _image_input(model: onnx.ModelProto) -> tuple[str, tuple[int, int, int]]:
    specs = input_specs(model)
    if len(specs) != 1:
        raise OnnxfuseError(f"synthetic calibration data feeds a model with one image input; this model has "
                            f"{len(specs)} inputs ({', '.join(s.name for s in specs)})")
    spec = specs[0]
    dims = spec.shape[1:]
    if spec.dtype != np.float32 or len(spec.shape) != 4 or not all(isinstance(d, int) and d > 0 for d in dims):
        raise OnnxfuseError(f"synthetic calibration data needs a float32 input of shape (N, C, H, W) with "
                            f"fixed C, H, W; input {spec.name!r} is {spec.dtype} {spec.shape}")
    return spec.name, tuple(dims)


def bn_statistics(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """BN input tensor → (running mean, running variance + epsilon), for BN nodes with constant stats."""
    graph = gs.import_onnx(model)
    stats = {}
    for node in graph.nodes:
        if node.op != "BatchNormalization" or len(node.inputs) < 5:
            continue
        mean, var = (_constant(t) for t in node.inputs[3:5])
        if mean is not None and var is not None and node.inputs[0].name:
            eps = float(node.attrs.get("epsilon", 1e-5))
            stats[node.inputs[0].name] = (mean.astype(np.float64), var.astype(np.float64) + eps)
    return stats


def _constant(tensor: gs.Tensor) -> np.ndarray | None:
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    producer = tensor.inputs[0] if len(tensor.inputs) == 1 else None
    return constant_node_value(producer) if producer is not None and producer.op == "Constant" else None


def mismatch(model: onnx.ModelProto, data: Dataset, stats: dict[str, tuple[np.ndarray, np.ndarray]],
             sess=None) -> float:
    """How far the per-channel mean and variance of each BN input on `data` are from the stored ones:
    the mean over layers and channels of ((m − μ)² + log²(v / σ²)) in units of the stored σ²."""
    measured = channel_stats(model, data, {name: 1 for name in stats}, batch_size=8, label=None, sess=sess)
    per_layer = []
    for name, (mean, var) in stats.items():
        got = measured[name]
        per_layer.append(np.mean((got.mean - mean) ** 2 / var + np.log(np.maximum(got.var, 1e-12) / var) ** 2))
    return float(np.mean(per_layer))
