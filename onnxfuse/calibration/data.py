"""Input data for calibration and validation: `.npz` files checked against the model's inputs, or
(calibration) a folder of images (onnxfuse/images.py)."""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from ..errors import OnnxfuseError
from ..graph.io import atomic_file, check_output_path
from ..log import warning
from . import images


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

    def split(self, divisor: int = 4, most: int | None = None) -> tuple[Dataset, Dataset]:
        """(samples to fit on, the last 1/`divisor` of them, at most `most`, held out to judge the fit);
        both are the whole set when it has fewer than 2 samples."""
        n = len(self)
        if n < 2:
            return self, self
        held = max(n // divisor, 1) if most is None else min(max(n // divisor, 1), most)
        return (Dataset({k: v[:n - held] for k, v in self.feeds.items()}),
                Dataset({k: v[n - held:] for k, v in self.feeds.items()}))

    def folds(self, count: int) -> list[Dataset]:
        """The samples in `count` contiguous parts of near-equal size (fewer when there are fewer samples)."""
        bounds = np.linspace(0, len(self), min(count, len(self)) + 1).round().astype(int)
        return [Dataset({k: v[a:b] for k, v in self.feeds.items()}) for a, b in zip(bounds[:-1], bounds[1:])]

    def fingerprint(self) -> str:
        """A digest of the inputs: caches of what the original model computes on them key on it."""
        digest = hashlib.sha1()
        for name in sorted(self.feeds):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(self.feeds[name]).tobytes())
        return digest.hexdigest()


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


def load_npz(path: str | Path, model: onnx.ModelProto, labels_key: str = "labels", mmap: bool = False) -> Dataset:
    """Arrays keyed by input name (a single-input model accepts any one key), optional labels. With
    `mmap`, arrays stored uncompressed are memory-mapped and every input keeps its stored dtype
    (checked to cast to the model's; the reader casts each batch), so a file larger than memory works."""
    path = Path(path)
    if not path.is_file():
        raise OnnxfuseError(f"{path}: no such data file")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a plain .npy file gives one bare array
            raise OnnxfuseError(f"{path}: a single .npy array, not a .npz archive of named arrays "
                                "(write one with numpy.savez)")
        with loaded as npz:
            arrays = {k: _mapped(path, npz, k) if mmap else npz[k] for k in npz.files}
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
    for spec in specs:
        _check_array(path, spec, arrays[spec.name])
    feeds = {s.name: arrays[s.name] if mmap else _conform(arrays[s.name], s.dtype) for s in specs}
    sizes = {len(v) for v in feeds.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise OnnxfuseError(f"{path}: input arrays have different or zero lengths {sorted(sizes)}")
    if labels is not None:
        labels = _check_labels(path, labels, sizes.pop())
    return Dataset(feeds, labels)


def _mapped(path: Path, npz, key: str) -> np.ndarray:
    """Member `key` of an open .npz, memory-mapped when it is stored uncompressed, else read."""
    info = npz.zip.getinfo(key + ".npy")
    if info.compress_type != zipfile.ZIP_STORED:
        return npz[key]
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # the zip local header: name and extra-field lengths at bytes 26..29
        name_length, extra_length = (int.from_bytes(local[i: i + 2], "little") for i in (26, 28))
        f.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(f)
        shape, fortran, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                 else np.lib.format.read_array_header_2_0)(f)
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError(f"array {key!r} holds Python objects")
    return np.memmap(path, dtype, "r", offset, shape, order="F" if fortran else "C")


def load_calibration(path: str | os.PathLike, model: onnx.ModelProto, samples: int = 256, seed: int = 0,
                     preprocess: images.Preprocess | None = None, labels_key: str = "labels") -> Dataset:
    """Calibration data from an `.npz` file or a folder of images: at most `samples` samples, drawn
    with `seed` without replacement when the source has more (kept in source order)."""
    path = Path(path)
    check_samples(samples)
    if path.is_dir():
        return load_image_folder(path, model, samples, seed, preprocess)
    if preprocess is not None and not preprocess.is_default:
        warning(f"warning: {path}: preprocessing options apply to image folders only; ignored for a data file")
    data = load_npz(path, model, labels_key)
    keep = pick(len(data), samples, seed)
    if len(keep) == len(data):
        return data
    return Dataset({k: v[keep] for k, v in data.feeds.items()}, None if data.labels is None else data.labels[keep])


def check_samples(samples) -> None:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise OnnxfuseError(f"calib-samples must be a positive integer, got {samples}")


def load_image_folder(folder: Path, model: onnx.ModelProto, samples: int = 256, seed: int = 0,
                      preprocess: images.Preprocess | None = None) -> Dataset:
    """A folder of images as the input of a single-image-input model (see onnxfuse/images.py)."""
    specs = input_specs(model)
    if len(specs) != 1:
        raise OnnxfuseError(f"{folder}: an image folder feeds a model with one image input; this model has "
                            f"{len(specs)} inputs ({', '.join(s.name for s in specs)})")
    spec = specs[0]
    plan = images.resolve(preprocess or images.Preprocess(), spec.shape, spec.dtype, f"model input {spec.name!r}")
    paths, note = images.list_images(folder)
    chosen = [paths[i] for i in pick(len(paths), samples, seed)]
    data = Dataset({spec.name: images.load_images(chosen, plan)})
    if note:  # after the images are read: an error stays the only line
        warning(note)
    return data


def pick(n: int, samples: int, seed: int) -> np.ndarray:
    """`samples` of `n` indices drawn with `seed` without replacement, sorted; all of them when n <= samples."""
    if n <= samples:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=samples, replace=False))


def save_npz(data: Dataset, path: str | os.PathLike, sources: tuple = (), labels_key: str = "labels") -> None:
    """Write `data` as an `.npz` in the CLI contract, atomically (temp file in the same folder, then
    rename); never over one of `sources`."""
    path = Path(path)
    for source in sources or (None,):
        check_output_path(path, source)
    arrays = dict(data.feeds)
    if data.labels is not None:
        arrays[labels_key] = data.labels
    with atomic_file(path) as f:  # a file object: numpy appends no ".npz" to the name
        np.savez(f, **arrays)


def _conform(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return array if array.dtype == dtype else array.astype(dtype)


def _check_array(path: Path, spec: InputSpec, array: np.ndarray) -> None:
    """`array` (all samples of input `spec`) fits the model input in rank, static sizes and dtype kind."""
    if array.ndim != len(spec.shape):
        raise OnnxfuseError(f"{path}: array {spec.name!r} has shape {array.shape}, "
                            f"model expects rank {len(spec.shape)} {_fmt(spec.shape)}")
    for axis, (have, want) in enumerate(zip(array.shape, spec.shape)):
        if isinstance(want, int) and want > 0 and have != want and axis > 0:
            raise OnnxfuseError(f"{path}: array {spec.name!r} has shape {array.shape}, "
                                f"model expects {_fmt(spec.shape)}")
    if array.dtype != spec.dtype and (not np.can_cast(array.dtype, spec.dtype, casting="same_kind")
                                      or array.dtype.kind not in "biuf"):
        raise OnnxfuseError(f"{path}: array {spec.name!r} has dtype {array.dtype}, model expects {spec.dtype}")


def _check_labels(path: Path, labels: np.ndarray, n: int) -> np.ndarray:
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != n:
        raise OnnxfuseError(f"{path}: labels must be {n} integers, got shape {labels.shape} {labels.dtype}")
    return labels.astype(np.int64)


def random_inputs(model: onnx.ModelProto, batch: int = 8, seed: int = 0,
                  shapes: dict[str, list[int]] | None = None) -> Dataset:
    """Random inputs from the model's input shapes; a dynamic first axis becomes `batch`, other
    dynamic dimensions come from `shapes` (--input-shape), else from `representative_shapes`."""
    rng = np.random.default_rng(seed)
    shapes = {**representative_shapes(model, shapes), **(shapes or {})}
    feeds = {}
    for spec in input_specs(model):
        shape = []
        given = shapes.get(spec.name)
        for axis, dim in enumerate(spec.shape):
            if given is not None and axis > 0:
                shape.append(int(given[axis]))
            elif isinstance(dim, int) and dim > 0:
                shape.append(dim)
            else:
                shape.append(batch)
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.kind in "iu":
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise OnnxfuseError(f"input {spec.name!r} has dtype {spec.dtype}; give data with --data")
    return Dataset(feeds)


IMAGE_SIDES = (224, 32, 28, 64, 96, 128, 256, 299, 320, 384, 416, 512, 640)  # tried in this order
SEQUENCES = (128, 64, 32, 16, 8, 256, 512)  # any other dynamic axis but the batch, tried in this order
SEQUENCE = SEQUENCES[0]


def image_sides(model: onnx.ModelProto) -> list[tuple[int, int]]:
    """Candidate H, W for dynamic image axes: the model's metadata (`imgsz`, as Ultralytics exports
    write it) first, then IMAGE_SIDES."""
    metadata = _metadata_image_size(model)
    return list(dict.fromkeys(([metadata] if metadata else []) + [(s, s) for s in IMAGE_SIDES]))


def representative_shapes(model: onnx.ModelProto, given: dict[str, list[int]] | None = None,
                          sides: tuple[int, int] | None = None, sequence: int = SEQUENCE) -> dict[str, list[int]]:
    """Shapes (batch 1) for the inputs with dynamic dimensions that `given` does not cover: an image
    input's (rank 4) dynamic axes from `sides` (default: the first of `image_sides`), any other
    dynamic axis `sequence`."""
    sides = sides or image_sides(model)[0]
    shapes = {}
    for spec in input_specs(model):
        dims = [d if isinstance(d, int) and d > 0 else None for d in spec.shape]
        dynamic = [axis for axis in range(1, len(dims)) if dims[axis] is None]
        if (given and spec.name in given) or not dynamic:
            continue
        for k, axis in enumerate(dynamic):
            dims[axis] = sides[min(k, 1)] if len(dims) == 4 else sequence
        shapes[spec.name] = [1] + dims[1:]
    return shapes


def _metadata_image_size(model: onnx.ModelProto) -> tuple[int, int] | None:
    props = {p.key: p.value for p in model.metadata_props}
    if "imgsz" not in props:
        return None
    numbers = [int(n) for n in "".join(c if c.isdigit() else " " for c in props["imgsz"]).split()]
    return (numbers[0], numbers[-1]) if numbers else None


def _fmt(shape) -> str:
    return "(" + ", ".join(str(d) if d not in (None, 0) else "?" for d in shape) + ")"


def has_dynamic_dims(model: onnx.ModelProto) -> bool:
    """Whether an input has a dynamic dimension other than the batch axis."""
    return any(not (isinstance(d, int) and d > 0) for s in input_specs(model) for d in s.shape[1:])


def parse_input_shapes(texts: list[str], model: onnx.ModelProto) -> dict[str, list[int]]:
    """`NAME:1,3,224,224` (or just `1,3,224,224` for a single-input model) → {name: dims}."""
    specs = input_specs(model)
    shapes = {}
    for text in texts:
        name, _, dims = text.rpartition(":")
        if not name:
            if len(specs) != 1:
                raise OnnxfuseError(f"--input-shape {text!r}: the model has {len(specs)} inputs; write NAME:DIMS")
            name = specs[0].name
        if name not in {s.name for s in specs}:
            raise OnnxfuseError(f"--input-shape {text!r}: the model has no input {name!r}")
        try:
            values = [int(v) for v in dims.split(",")]
        except ValueError:
            values = []
        spec = next(s for s in specs if s.name == name)
        if len(values) != len(spec.shape) or min(values, default=0) < 1:
            raise OnnxfuseError(f"--input-shape {text!r}: expected {len(spec.shape)} positive integers")
        shapes[name] = values
    return shapes
