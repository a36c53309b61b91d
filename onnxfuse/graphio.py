"""Reading and writing ONNX models: clear errors for bad files, atomic writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from .errors import OnnxfuseError

TWO_GB = 2**31


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX file with its external data, or raise OnnxfuseError saying what is wrong."""
    path = Path(path)
    if not path.exists():
        raise OnnxfuseError(f"{path}: no such file")
    if not path.is_file():
        raise OnnxfuseError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise OnnxfuseError(f"{path}: empty file, not an ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, UnicodeDecodeError) as exc:
        raise OnnxfuseError(f"{path}: not a valid ONNX model ({_first_line(exc)})") from None
    except OSError as exc:
        raise OnnxfuseError(f"{path}: cannot read ({exc.strerror or _first_line(exc)})") from None
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise OnnxfuseError(f"{path}: not an ONNX model (no graph with nodes)")
    check_model(str(path), what=str(path))  # from the file: the weights are not copied to check them
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except (OSError, onnx.checker.ValidationError) as exc:
        raise OnnxfuseError(f"{path}: cannot read external data ({_first_line(exc)})") from None
    return model


def check_model(model: onnx.ModelProto | str, what: str = "model", full: bool = False) -> None:
    try:
        if isinstance(model, str) or model.ByteSize() < TWO_GB:
            onnx.checker.check_model(model, full_check=full)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise OnnxfuseError(f"{what}: invalid ONNX model ({_first_line(exc)})") from None


def save_model(model: onnx.ModelProto, path: str | os.PathLike, input_path: str | os.PathLike | None = None):
    """Write atomically (temp file in the same folder, then rename); never overwrite the input.
    The weights go to `OUT.onnx.data` (external data) when the input kept them so or above 2 GB."""
    path = Path(path)
    check_output_path(path, input_path)
    external = model.ByteSize() >= TWO_GB or input_path is not None and _has_external_data(input_path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if external:
            data = path.with_name(path.name + ".data")
            if data.exists():
                data.unlink()  # onnx appends to an existing data file
            onnx.save_model(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data.name, size_threshold=1024)
        else:
            onnx.save_model(model, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _has_external_data(path: str | os.PathLike) -> bool:
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not a readable model (the input may be a ModelProto's stand-in): write inline
        return False
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def check_output_path(path: Path, input_path: str | os.PathLike | None) -> None:
    if input_path is not None and Path(input_path).exists() and (
            path.exists() and os.path.samefile(path, input_path) or path.resolve() == Path(input_path).resolve()):
        raise OnnxfuseError(f"{path}: output path is the input file; choose another output")
    if path.is_dir():
        raise OnnxfuseError(f"{path}: output path is a directory")
    if not path.parent.is_dir():
        state = "is a file, not a directory" if path.parent.exists() else "does not exist"
        raise OnnxfuseError(f"{path.parent}: output directory {state}")
    if not os.access(path.parent, os.W_OK):
        raise OnnxfuseError(f"{path.parent}: output directory is not writable")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
