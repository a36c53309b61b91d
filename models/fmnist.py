"""Fashion-MNIST loading helpers (numpy only).

Images are returned as uint8 arrays of shape (N, 1, 28, 28) and labels as
int64 arrays of shape (N,).  Models in this directory take the raw pixel
values cast to float32 (range [0, 255]) and normalise internally.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

DATASET_DIR = Path(os.environ.get("FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))
DATA_DIR = Path(__file__).resolve().parent / "data"
CALIB_FILE = DATA_DIR / "fmnist_calib512.npz"
EVAL_FILE = DATA_DIR / "fmnist_eval2000.npz"

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse a (optionally gzip-compressed) IDX file into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file")
    dtype_code, ndim = data[2], data[3]
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4",
              0x0D: ">f4", 0x0E: ">f8"}
    if dtype_code not in dtypes:
        raise ValueError(f"{path}: unknown IDX dtype 0x{dtype_code:02x}")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=dtypes[dtype_code], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: size mismatch {arr.size} vs {dims}")
    return arr.reshape(dims)


def _split_paths(split: str, root: Path) -> tuple[Path, Path]:
    prefix = {"train": "train", "test": "t10k"}[split]
    return (root / f"{prefix}-images-idx3-ubyte.gz",
            root / f"{prefix}-labels-idx1-ubyte.gz")


def dataset_available(root: str | os.PathLike | None = None) -> bool:
    root = Path(root) if root is not None else DATASET_DIR
    return all(p.exists() for s in ("train", "test") for p in _split_paths(s, root))


def load_split(split: str, root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load the 'train' (60 000) or 'test' (10 000) split.

    Returns (images uint8 (N,1,28,28), labels int64 (N,)).
    """
    root = Path(root) if root is not None else DATASET_DIR
    img_p, lbl_p = _split_paths(split, root)
    if not (img_p.exists() and lbl_p.exists()):
        raise FileNotFoundError(
            f"Fashion-MNIST {split} split not found at {root} "
            f"(expected {img_p.name} and {lbl_p.name}). Install the Debian "
            "fashion-mnist dataset package or set FMNIST_DIR.")
    images = read_idx(img_p).astype(np.uint8, copy=False)
    labels = read_idx(lbl_p).astype(np.int64)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise ValueError(f"unexpected Fashion-MNIST shapes {images.shape} {labels.shape}")
    return images[:, None].copy(), labels  # copy: writable, contiguous


def load_train_split(root=None):
    return load_split("train", root)


def load_test_split(root=None):
    """Full 10 000-image test split (requires the dataset package)."""
    return load_split("test", root)


def load_npz(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Load a committed sample file: keys `input` (uint8 N,1,28,28), `labels` (int64)."""
    with np.load(path) as z:
        return z["input"], z["labels"]


def load_calib_sample():
    """512 train images committed at models/data/fmnist_calib512.npz."""
    return load_npz(CALIB_FILE)


def load_eval_sample():
    """2000 balanced test images committed at models/data/fmnist_eval2000.npz."""
    return load_npz(EVAL_FILE)
