"""Compare an original and a compressed model in ONNX Runtime on the same inputs."""

from __future__ import annotations

import numpy as np
import onnx

from ..calibration.data import Dataset, input_specs
from ..errors import OnnxfuseError
from .sessions import batch_size_for, run, session


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
