"""Compare an original and a compressed model in ONNX Runtime on the same inputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from .data import Dataset, input_specs
from .errors import OnnxfuseError

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
    options.log_severity_level = 3
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


def check_same_inputs(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    inputs_a, inputs_b = ([(s.name, s.dtype) for s in input_specs(m)] for m in (a, b))
    if inputs_a != inputs_b:
        raise OnnxfuseError(f"the models have different inputs: {inputs_a} vs {inputs_b}")


def compare(original: onnx.ModelProto, compressed: onnx.ModelProto, data: Dataset,
            device: str = "auto", original_path: str | None = None) -> dict:
    """Agreement, output error and (with labels) accuracy of both models on `data`. With
    `original_path` (the file `original` was read from) ONNX Runtime reads the original from disk,
    external data included, instead of a serialised copy."""
    check_same_inputs(original, compressed)
    batch = batch_size_for(original)
    if len(data) % batch and batch != 64:
        keep = len(data) - len(data) % batch
        data = Dataset({k: v[:keep] for k, v in data.feeds.items()},
                       None if data.labels is None else data.labels[:keep])
    sess = session(original_path or original, device)  # one model at a time in ONNX Runtime
    out_a, names = run(sess, data, batch), [o.name for o in sess.get_outputs()]
    del sess
    sess = session(compressed, device)
    out_b = run(sess, data, batch)
    report = {
        "provider": sess.get_providers()[0],
        "samples": len(data),
        "outputs": {},
    }
    for name, a, b in zip(names, out_a, out_b):
        if a.shape != b.shape:
            raise OnnxfuseError(f"output {name!r} changed shape {a.shape} -> {b.shape}")
        if a.dtype.kind != "f":
            report["outputs"][name] = {"equal": bool(np.array_equal(a, b))}
            continue
        err = np.abs(a.astype(np.float64) - b.astype(np.float64))
        report["outputs"][name] = {"max_abs_error": float(err.max(initial=0.0)),
                                   "mean_abs_error": float(err.mean()) if err.size else 0.0}
    first_a, first_b = out_a[0], out_b[0]
    if first_a.dtype.kind == "f" and first_a.ndim >= 2:
        top_a, top_b = first_a.argmax(-1), first_b.argmax(-1)
        report["top1_agreement"] = float((top_a == top_b).mean())
        if data.labels is not None and first_a.ndim == 2 and len(data.labels) == len(first_a):
            report["accuracy_original"] = float((top_a == data.labels).mean())
            report["accuracy_compressed"] = float((top_b == data.labels).mean())
    return report
