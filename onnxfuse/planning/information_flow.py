"""The information-flow vector of Information Consistent Pruning (Gharatappeh & Sekeh, 2025;
../shared/SEEDS.md, §2), measured in ONNX Runtime on fixed inputs.

For every Conv and Gemm/MatMul with a weight, in graph order, the output's per-channel mean over the
spatial axes is z-scored per channel over the samples; v_l is the mean of the correlation matrix
between layer l and layer l+1, (1/N)·z_lᵀ z_{l+1}. Channel counts may differ between the dense and
the compressed model: v has one entry per pair of layers either way. ICP stops a round of retraining
when ‖v − v_dense‖ falls below ε; the default ε is 3 × the distance between v of the dense model on
two halves of the inputs (our choice: the authors' fixed 0.11 was set on full-training-set statistics).
"""

from __future__ import annotations

import numpy as np
import onnx

from ..calibration.capture import outputs_only
from ..calibration.data import Dataset
from ..runtime.sessions import batch_size_for, run, session

LAYER_OPS = ("Conv", "Gemm", "MatMul")
NOISE_FACTOR = 3.0
STD_FLOOR = 1e-6


def layers(model: onnx.ModelProto) -> list[str]:
    """Output tensors of the weighted layers, in graph order."""
    weights = {t.name for t in model.graph.initializer}
    return [n.output[0] for n in model.graph.node if n.op_type in LAYER_OPS and len(n.input) > 1
            and n.input[1] in weights]


def flow_vector(model: onnx.ModelProto, data: Dataset, names: list[str], device: str = "cpu") -> np.ndarray:
    outputs = run(session(outputs_only(model, names), device), data, batch_size_for(model))
    means = [o.reshape(o.shape[0], o.shape[1], -1).mean(-1) if o.ndim > 2 else o for o in outputs]
    scores = [(m - m.mean(0)) / np.maximum(m.std(0), STD_FLOOR) for m in means]
    return np.array([float((a.T @ b).mean()) / len(a) for a, b in zip(scores[:-1], scores[1:])])


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.nan_to_num(a - b, nan=np.inf)))


def default_epsilon(model: onnx.ModelProto, data: Dataset, names: list[str], device: str = "cpu") -> float:
    """NOISE_FACTOR × the distance between the dense model's vectors on the two halves of `data`."""
    half = len(data) // 2
    first, second = (Dataset({k: v[s] for k, v in data.feeds.items()}) for s in (slice(0, half), slice(half, None)))
    return NOISE_FACTOR * distance(flow_vector(model, first, names, device), flow_vector(model, second, names, device))
