"""Input data for calibration and validation: `.npz` files checked against the model's inputs."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from .errors import OnnxfuseError


@dataclass
class InputSpec:
    name: str
    dtype: np.dtype
    shape: list[int | str | None]


@dataclass
class Dataset:
    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(next(iter(self.feeds.values())))

    def batches(self, size: int):
        for start in range(0, len(self), size):
            yield {k: v[start: start + size] for k, v in self.feeds.items()}


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                 for d in tensor_type.shape.dim]
        specs.append(InputSpec(value.name, dtype, shape))
    return specs


def load_npz(path: str | Path, model: onnx.ModelProto, labels_key: str = "labels") -> Dataset:
    """Arrays keyed by input name (a single-input model accepts any one key), optional labels."""
    path = Path(path)
    if not path.is_file():
        raise OnnxfuseError(f"{path}: no such data file")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a plain .npy file gives one bare array
            raise OnnxfuseError(f"{path}: a single .npy array, not a .npz archive of named arrays "
                                "(write one with numpy.savez)")
        with loaded as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise OnnxfuseError(f"{path}: not a readable .npz file ({exc})") from None
    labels = arrays.pop(labels_key, None)
    specs = input_specs(model)
    if len(specs) == 1 and specs[0].name not in arrays and len(arrays) == 1:
        arrays = {specs[0].name: next(iter(arrays.values()))}
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise OnnxfuseError(f"{path}: no array for model input(s) {', '.join(missing)} "
                            f"(found {', '.join(sorted(arrays)) or 'none'})")
    feeds = {s.name: _conform(path, s, arrays[s.name]) for s in specs}
    sizes = {len(v) for v in feeds.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise OnnxfuseError(f"{path}: input arrays have different or zero lengths {sorted(sizes)}")
    if labels is not None:
        labels = _check_labels(path, labels, sizes.pop())
    return Dataset(feeds, labels)


def _conform(path: Path, spec: InputSpec, array: np.ndarray) -> np.ndarray:
    if array.ndim != len(spec.shape):
        raise OnnxfuseError(f"{path}: array {spec.name!r} has shape {array.shape}, "
                            f"model expects rank {len(spec.shape)} {_fmt(spec.shape)}")
    for axis, (have, want) in enumerate(zip(array.shape, spec.shape)):
        if isinstance(want, int) and want > 0 and have != want and axis > 0:
            raise OnnxfuseError(f"{path}: array {spec.name!r} has shape {array.shape}, "
                                f"model expects {_fmt(spec.shape)}")
    if array.dtype == spec.dtype:
        return array
    if not np.can_cast(array.dtype, spec.dtype, casting="same_kind") or array.dtype.kind not in "biuf":
        raise OnnxfuseError(f"{path}: array {spec.name!r} has dtype {array.dtype}, model expects {spec.dtype}")
    return array.astype(spec.dtype)


def _check_labels(path: Path, labels: np.ndarray, n: int) -> np.ndarray:
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != n:
        raise OnnxfuseError(f"{path}: labels must be {n} integers, got shape {labels.shape} {labels.dtype}")
    return labels.astype(np.int64)


def random_inputs(model: onnx.ModelProto, batch: int = 8, seed: int = 0) -> Dataset:
    """Random inputs from the model's input shapes; a dynamic first axis becomes `batch`."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in input_specs(model):
        shape = []
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int) and dim > 0:
                shape.append(dim)
            elif axis == 0:
                shape.append(batch)
            else:
                raise OnnxfuseError(f"input {spec.name!r} has a dynamic dimension {dim!r} at axis {axis}; "
                                    "give data with --data/--calib")
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.kind in "iu":
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise OnnxfuseError(f"input {spec.name!r} has dtype {spec.dtype}; give data with --data")
    return Dataset(feeds)


def _fmt(shape) -> str:
    return "(" + ", ".join(str(d) if d not in (None, 0) else "?" for d in shape) + ")"
