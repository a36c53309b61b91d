"""Compare an original and a compressed model in ONNX Runtime on the same inputs."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort

from ..calibration.data import SEQUENCES, Dataset, image_sides, input_specs, random_inputs, representative_shapes
from ..errors import OnnxfuseError
from ..log import ort_severity

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
DEVICE_PROVIDERS = {
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "cpu": ["CPUExecutionProvider"],
}
# TF32 off so that CUDA results compare with the CPU's at float32 precision; TensorRT builds
# float32 engines (no fp16/int8), though it may still pick TF32 kernels on Ampere and later.
PROVIDER_OPTIONS = {"CUDAExecutionProvider": {"use_tf32": "0"}}


def providers_for(device: str = "auto") -> list[str]:
    available = ort.get_available_providers()
    if device == "auto":
        device = "cuda" if "CUDAExecutionProvider" in available else "cpu"
    if device not in DEVICE_PROVIDERS:
        raise OnnxfuseError(f"unknown device {device!r}; choose {', '.join(DEVICES)}")
    missing = DEVICE_PROVIDERS[device][0]
    if missing not in available:
        raise OnnxfuseError(f"device {device} asked for, but this onnxruntime has no {missing} "
                            f"(available: {', '.join(available)}; install onnxfuse[gpu])")
    return DEVICE_PROVIDERS[device]


def resolved_device(device: str = "auto") -> str:
    """The device that `device` runs on: cpu, cuda or tensorrt."""
    first = providers_for(device)[0]
    return {v[0]: k for k, v in DEVICE_PROVIDERS.items()}[first]


def session(model: onnx.ModelProto | str, device: str = "auto", fuse_nodes: bool = True,
            threads: int | None = None) -> ort.InferenceSession:
    """`fuse_nodes=False` for models that expose intermediate tensors as outputs: ONNX Runtime's
    extended fusions (Conv+Add+Relu …) can drop such a tensor and then fail to load the model.
    `threads` fixes the intra-op thread count (benchmarks); default: ONNX Runtime's choice."""
    options = ort.SessionOptions()
    options.log_severity_level = ort_severity()
    if not fuse_nodes:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    providers = providers_for(device)
    try:
        source = model if isinstance(model, str) else model.SerializeToString()
        return ort.InferenceSession(source, options, providers=providers,
                                    provider_options=[PROVIDER_OPTIONS.get(p, {}) for p in providers])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise OnnxfuseError(f"ONNX Runtime cannot load the model: {str(exc).splitlines()[0]}") from None


def run(sess: ort.InferenceSession, data: Dataset, batch_size: int) -> list[np.ndarray]:
    outputs = None
    for feeds in data.batches(batch_size):
        result = sess.run(None, feeds)
        outputs = [[r] for r in result] if outputs is None else [o + [r] for o, r in zip(outputs, result)]
    return [np.concatenate(o) for o in outputs]


def batch_size_for(model: onnx.ModelProto, wanted: int = 64) -> int:
    """A fixed batch dimension in the model's inputs dictates the batch size."""
    for spec in input_specs(model):
        if spec.shape and isinstance(spec.shape[0], int) and spec.shape[0] > 0:
            return spec.shape[0]
    return wanted




def assumed_input_shapes(model: onnx.ModelProto, given: dict[str, list[int]],
                         source: onnx.ModelProto | str | None = None) -> dict[str, list[int]]:
    """Shapes for the dynamic input dimensions that `given` leaves open: the first candidate
    (calibration/data.py: image_sides) the model runs at on the CPU; none needed, none returned.
    `source`: what ONNX Runtime loads (the file, when the weights are external), default `model`."""
    if not representative_shapes(model, given):
        return {}
    sess = session(source or model, "cpu")
    silent = ort.RunOptions()
    silent.log_severity_level = 4  # a size that does not fit is expected here, not an error to print
    candidates = list(zip(image_sides(model), itertools.cycle(SEQUENCES)))
    for sides, sequence in candidates:
        shapes = representative_shapes(model, given, sides, sequence)
        try:
            sess.run(None, random_inputs(model, batch=1, shapes={**given, **shapes}).feeds, silent)
            return shapes
        except Exception:  # noqa: BLE001  (onnxruntime's own exception types: this size does not fit)
            continue
    names = ", ".join(representative_shapes(model, given))
    raise OnnxfuseError(f"input(s) {names} have dynamic dimensions and the model runs at none of the sizes tried "
                        f"({', '.join(f'{h}x{w}' for h, w in image_sides(model))}; sequences "
                        f"{', '.join(map(str, SEQUENCES))}); give them with --input-shape")
