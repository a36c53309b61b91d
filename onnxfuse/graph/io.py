"""Reading and writing ONNX models: clear errors for bad files, atomic writes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_tensor, set_external_data

from ..errors import OnnxfuseError
from ..scratch import committed, interrupts_held

try:
    import fcntl
except ImportError:  # Windows: no folder lock
    fcntl = None

TWO_GB = 2**31


def load_model(path: str | os.PathLike, external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX file with its external data, or raise OnnxfuseError saying what is wrong.
    With `external_data=False` the main graph's initializers stored as external data stay in their
    file (the proto holds no copy; `has_external_data` tells); their files are checked."""
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
        if external_data:
            onnx.load_external_data_for_model(model, str(path.parent))
        else:
            _load_all_but_initializers(model, str(path.parent))
            for tensor in model.graph.initializer:
                if _is_external(tensor):
                    _check_external_file(tensor, str(path.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise OnnxfuseError(f"{path}: cannot read external data ({_first_line(exc)})") from None
    return model


def has_external_data(model: onnx.ModelProto) -> bool:
    return any(_is_external(t) for t in model.graph.initializer)


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def _load_all_but_initializers(model: onnx.ModelProto, folder: str) -> None:
    """External data of subgraphs and attributes (rare and small) is read into the proto."""
    tensors = [t for node in model.graph.node for t in _node_tensors(node, attributes=True)]
    for tensor in tensors:
        if _is_external(tensor):
            load_external_data_for_tensor(tensor, folder)


def _check_external_file(tensor: onnx.TensorProto, folder: str) -> None:
    info = ExternalDataInfo(tensor)
    size = os.path.getsize(os.path.join(folder, info.location))  # the checker vetted the location
    if size < (info.offset or 0) + (info.length or 0):
        raise ValueError(f"{info.location} is too short for tensor {tensor.name}")


def _graph_tensors(graph: onnx.GraphProto, attributes: bool):
    yield from graph.initializer
    for node in graph.node:
        yield from _node_tensors(node, attributes)


def _node_tensors(node: onnx.NodeProto, attributes: bool):
    """Tensors of a node's attributes (with `attributes`) and its subgraphs' initializers."""
    for attr in node.attribute:
        if attributes:
            yield from ([attr.t] if attr.HasField("t") else []) + list(attr.tensors)
        for graph in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            yield from _graph_tensors(graph, attributes)


def check_model(model: onnx.ModelProto | str, what: str = "model", full: bool = False) -> None:
    try:
        if isinstance(model, str) or model.ByteSize() < TWO_GB:
            onnx.checker.check_model(model, full_check=full)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise OnnxfuseError(f"{what}: invalid ONNX model ({_first_line(exc)})") from None


EXTERNAL_THRESHOLD = 1024  # bytes: smaller tensors stay in the .onnx file (onnx's default)


def save_model(model: onnx.ModelProto, path: str | os.PathLike, input_path: str | os.PathLike | None = None):
    """Write atomically (temp files in the same folder, then renames); never overwrite the input.
    The weights go to `OUT.onnx.data` (external data) when the input kept them so or above 2 GB;
    as with onnx.save_model, the model's tensors then point there instead of holding their data.
    Concurrent writers of one path leave one writer's whole result: the renames of a model and its
    data happen under a lock on the folder; Ctrl-C waits for them (see `scratch`)."""
    path = Path(path)
    check_output_path(path, input_path)
    external = model.ByteSize() >= TWO_GB or input_path is not None and _has_external_data(input_path)
    data = path.with_name(path.name + ".data")
    temps: list[str] = []
    try:
        if external:
            _temp_file(data, temps)
            _write_external_data(model, temps[-1], data.name)
        _temp_file(path, temps)
        onnx.save_model(model, temps[-1])
        with interrupts_held(), _folder_lock(path.parent, external):
            if external:
                os.replace(temps[0], data)
                committed(data)
            os.replace(temps[-1], path)
            committed(path)
            temps.clear()
    except BaseException:
        _unlink(temps)
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb"):
    """A file to write `path` through: a temporary file in the same folder, renamed to `path` when
    the block ends, removed if it raises."""
    temps: list[str] = []
    try:
        _temp_file(Path(path), temps)
        with open(temps[0], mode) as f:
            yield f
        with interrupts_held():
            os.replace(temps[0], path)
            committed(path)
            temps.clear()
    except BaseException:
        _unlink(temps)
        raise


def _temp_file(path: Path, temps: list[str]) -> None:
    """A new temporary file next to `path`, appended to `temps` (Ctrl-C cannot fall in between)."""
    with interrupts_held():
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        temps.append(tmp)


def _unlink(paths: list[str]) -> None:
    with interrupts_held():
        for tmp in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


@contextlib.contextmanager
def _folder_lock(folder: Path, needed: bool):
    """An exclusive lock on the folder itself (no lock file) while a model and its data file are
    renamed, so that two writers of one path cannot leave one's model with the other's data."""
    fd = None
    if needed and fcntl is not None:
        with contextlib.suppress(OSError):
            fd = os.open(folder, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def _write_external_data(model: onnx.ModelProto, data_path: str, location: str) -> None:
    """Move every initializer's raw data of at least EXTERNAL_THRESHOLD bytes to `data_path`, one
    tensor at a time (the model holds no second copy); the tensors point to `location`."""
    with open(data_path, "wb") as data:
        for tensor in _graph_tensors(model.graph, attributes=False):
            raw = tensor.raw_data if tensor.HasField("raw_data") else b""
            if len(raw) < EXTERNAL_THRESHOLD:
                continue
            offset = data.tell()
            data.write(raw)
            set_external_data(tensor, location, offset, data.tell() - offset)
            tensor.ClearField("raw_data")


def _has_external_data(path: str | os.PathLike) -> bool:
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not a readable model (the input may be a ModelProto's stand-in): write inline
        return False
    return has_external_data(model)


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
    try:  # permissions do not tell all (root, read-only mounts, pseudo file systems): try it
        temps: list[str] = []
        with interrupts_held():  # the probe file goes again whatever comes between
            _temp_file(path, temps)
            _unlink(temps)
    except OSError as exc:
        raise OnnxfuseError(f"{path.parent}: output directory is not writable ({exc.strerror or exc})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
