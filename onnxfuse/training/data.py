"""Training inputs: an `.npz` (memory-mapped where stored uncompressed) or a folder of images, read
in a seeded order that depends only on (seed, step), so that a resumed run reads what an
uninterrupted one would; a held-out slice for validation; crop-and-flip augmentation of image inputs.
No torch here: batches are numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..calibration.data import Dataset, InputSpec, input_specs, load_image_folder, load_npz
from ..calibration.images import Preprocess
from ..errors import OnnxfuseError
from ..log import warning

HELD_OUT_SHARE = 5  # without --val-data, at most 1/5 of the samples are held out


@dataclass(frozen=True)
class ImageLayout:
    """Where an image input keeps its channel and spatial axes."""
    name: str
    channels_last: bool
    height: int
    width: int

    @property
    def width_axis(self) -> int:
        return 2 if self.channels_last else 3


@dataclass
class TrainSet:
    data: Dataset  # arrays as stored (memory-mapped where possible), cast per batch
    specs: list[InputSpec]
    indices: np.ndarray  # the samples trained on

    def __len__(self) -> int:
        return len(self.indices)

    def batch(self, step: int, size: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """Batch `step` of the stream of seeded epoch permutations (inputs in the model's dtypes)."""
        n, start = len(self.indices), step * size
        positions = []
        while len(positions) < size:
            epoch, offset = divmod(start + len(positions), n)
            order = np.random.default_rng([seed, epoch]).permutation(n)
            positions.extend(order[offset: offset + size - len(positions)])
        batch = self.subset(np.sort(self.indices[np.asarray(positions)]))  # sorted: sequential memory-map reads
        return batch.feeds, batch.labels

    def subset(self, indices: np.ndarray) -> Dataset:
        """Samples `indices` (of the whole file) as an in-memory Dataset in the model's dtypes."""
        feeds = {s.name: np.asarray(self.data.feeds[s.name][indices]).astype(s.dtype, copy=False) for s in self.specs}
        return Dataset(feeds, None if self.data.labels is None else self.data.labels[indices])


def load_train_data(path: str, model: onnx.ModelProto, labels_key: str = "labels",
                    preprocess: Preprocess | None = None) -> Dataset:
    """All samples of an .npz (memory-mapped) or an image folder (read into memory)."""
    source = Path(path)
    if source.is_dir():
        return load_image_folder(source, model, samples=2**62, preprocess=preprocess)
    return load_npz(source, model, labels_key, mmap=True)


def check_train_data(options, model: onnx.ModelProto, labels_key: str = "labels") -> None:
    """The training (and validation) data exist and fit the model, read no further than needed."""
    source = Path(options.train_data)
    if source.is_dir():
        return  # an image folder is checked as it is read
    load_npz(source, model, labels_key, mmap=True)
    if options.val_data:
        load_npz(options.val_data, model, labels_key, mmap=True)


def split(data: Dataset, model: onnx.ModelProto, val: Dataset | None, val_samples: int) -> tuple[TrainSet, Dataset]:
    """(the training set, the validation set): `val` when given, else the last samples of `data`
    (at most `val_samples`, at most a fifth), which are then not trained on."""
    specs = input_specs(model)
    n = len(data)
    if val is not None:
        return TrainSet(data, specs, np.arange(n)), val
    if n < 2:
        warning("warning: one training sample: it is also the validation sample")
        everything = TrainSet(data, specs, np.arange(n))
        return everything, everything.subset(np.arange(n))
    held = min(val_samples, max(1, n // HELD_OUT_SHARE))
    train = TrainSet(data, specs, np.arange(n - held))
    return train, train.subset(np.arange(n - held, n))


def image_layout(specs: list[InputSpec]) -> ImageLayout | None:
    """The one float input that looks like an image batch (N, C, H, W) or (N, H, W, C) with C of 1, 3
    or 4 and H, W of at least 8; None when there is no such input or more than one input."""
    if len(specs) != 1 or specs[0].dtype.kind != "f" or len(specs[0].shape) != 4:
        return None
    spec = specs[0]
    _, a, b, c = (d if isinstance(d, int) and d > 0 else None for d in spec.shape)
    for channels_last, channels, h, w in ((False, a, b, c), (True, c, a, b)):
        if channels in (1, 3, 4) and h and w and h >= 8 and w >= 8:
            return ImageLayout(spec.name, channels_last, h, w)
    return None


def augment(feeds: dict[str, np.ndarray], layout: ImageLayout, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random crop of the zero-padded image (padding 1/8 of the side) and a horizontal flip for half
    the samples, as the CIFAR-style recipes of the anchors do."""
    x = feeds[layout.name]
    pad_h, pad_w = max(1, layout.height // 8), max(1, layout.width // 8)
    spatial = (1, 2) if layout.channels_last else (2, 3)
    widths = [(0, 0)] * 4
    widths[spatial[0]], widths[spatial[1]] = (pad_h, pad_h), (pad_w, pad_w)
    padded = np.pad(x, widths)
    out = np.empty_like(x)
    dys = rng.integers(0, 2 * pad_h + 1, len(x))
    dxs = rng.integers(0, 2 * pad_w + 1, len(x))
    flips = rng.random(len(x)) < 0.5
    for i, (dy, dx, flip) in enumerate(zip(dys, dxs, flips)):
        index = [i, slice(None), slice(None), slice(None)]
        index[spatial[0]] = slice(dy, dy + layout.height)
        index[spatial[1]] = slice(dx, dx + layout.width)
        crop = padded[tuple(index)]
        out[i] = np.flip(crop, axis=layout.width_axis - 1) if flip else crop
    return {**feeds, layout.name: out}


def check_same_interface(teacher: onnx.ModelProto, student: onnx.ModelProto) -> None:
    """The student takes the teacher's inputs and gives its outputs (names, dtypes, static sizes)."""
    def interface(model, kind):
        known = {t.name for t in model.graph.initializer}
        return [(v.name, v.type.tensor_type.elem_type,
                 tuple(d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim))
                for v in getattr(model.graph, kind) if v.name not in known]

    for kind in ("input", "output"):
        a, b = interface(teacher, kind), interface(student, kind)
        if [x[:2] for x in a] != [x[:2] for x in b]:
            raise OnnxfuseError(f"teacher and student have different {kind}s: "
                                f"{[x[0] for x in a]} vs {[x[0] for x in b]} (names and dtypes must match)")
        for (name, _, da), (_, _, db) in zip(a, b):
            if len(da) != len(db) or any(x and y and x != y for x, y in zip(da, db)):
                raise OnnxfuseError(f"teacher and student {kind} {name!r} have different shapes {da} vs {db}")
