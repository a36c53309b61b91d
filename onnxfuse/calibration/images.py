"""Calibration data from a folder of images: read (Pillow), convert, resize, scale, normalise, lay out.

Order per image: grey/RGB conversion, resize to H×W (bilinear, aspect ratio not kept), × scale,
(x − mean) / std per channel, then NCHW or NHWC. Images are listed in sorted file-name order
(onnxfuse.data.load_image_folder draws the bounded, seeded selection from that list).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import OnnxfuseError

LAYOUTS = ("NCHW", "NHWC")
COLORS = ("grey", "rgb")


@dataclass(frozen=True)
class Preprocess:
    """How images become model input. None means: derived from the model's input shape."""

    size: tuple[int, int] | None = None  # (H, W); default: the model's static H×W
    scale: float = 1.0  # e.g. 1/255; default 1: raw 0..255 pixel values
    mean: tuple[float, ...] | None = None  # per channel, after scaling
    std: tuple[float, ...] | None = None
    layout: str | None = None  # NCHW | NHWC; default: NCHW when dim 1 is 1 or 3
    color: str | None = None  # grey | rgb; default: from the channel count

    def check(self) -> None:
        if self.size is not None and (len(self.size) != 2 or not all(
                isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in self.size)):
            raise OnnxfuseError(f"preprocess size must be two positive integers H,W, got {self.size}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or \
                not math.isfinite(self.scale) or self.scale <= 0:
            raise OnnxfuseError(f"scale must be a positive number, got {self.scale}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values is None:
                continue
            if len(values) not in (1, 3) or not all(isinstance(v, (int, float)) and math.isfinite(v)
                                                    for v in values):
                raise OnnxfuseError(f"{name} must be 1 or 3 numbers, got {values}")
        if self.std is not None and any(v == 0 for v in self.std):
            raise OnnxfuseError(f"std must not contain zero, got {self.std}")
        if self.layout is not None and self.layout not in LAYOUTS:
            raise OnnxfuseError(f"unknown layout {self.layout!r}; choose from {', '.join(LAYOUTS)}")
        if self.color is not None and self.color not in COLORS:
            raise OnnxfuseError(f"unknown color {self.color!r}; choose from {', '.join(COLORS)}")

    @property
    def is_default(self) -> bool:
        return self == Preprocess()


@dataclass(frozen=True)
class Plan:
    """The preprocessing resolved against one model input."""

    height: int
    width: int
    channels: int  # 1 or 3
    layout: str
    dtype: np.dtype
    scale: float
    mean: np.ndarray | None
    std: np.ndarray | None


def resolve(pre: Preprocess, shape: list, dtype: np.dtype, what: str) -> Plan:
    """Fill the defaults of `pre` from a rank-4 model input shape; errors name `what` (the input)."""
    pre.check()
    if len(shape) != 4:
        raise OnnxfuseError(f"{what} has rank {len(shape)}; an image folder needs a rank-4 input "
                            "(N,C,H,W or N,H,W,C)")
    static = [d if isinstance(d, int) and d > 0 else None for d in shape]
    layout = pre.layout
    if layout is None:
        if static[1] in (1, 3):
            layout = "NCHW"
        elif static[3] in (1, 3):
            layout = "NHWC"
        else:
            raise OnnxfuseError(f"{what} has shape {_fmt(shape)}: cannot tell the channel axis; give --layout")
    c, h, w = (static[1], static[2], static[3]) if layout == "NCHW" else (static[3], static[1], static[2])
    if c is not None and c not in (1, 3):
        raise OnnxfuseError(f"{what} has {c} channels in {layout} layout; images give 1 (grey) or 3 (RGB)")
    color = pre.color or ("grey" if c == 1 else "rgb")
    channels = 1 if color == "grey" else 3
    if c is not None and c != channels:
        raise OnnxfuseError(f"{what} has {c} channel(s); --color {color} gives {channels}")
    if pre.size is not None:
        height, width = pre.size
        if (h is not None and h != height) or (w is not None and w != width):
            raise OnnxfuseError(f"{what} expects H×W {h}×{w} ({layout}), not the preprocess size {height}×{width}")
    elif h is None or w is None:
        raise OnnxfuseError(f"{what} has a dynamic height or width {_fmt(shape)}; give --preprocess-size H,W")
    else:
        height, width = h, w
    normalise = pre.scale != 1 or pre.mean is not None or pre.std is not None
    if dtype.kind in "iu" and normalise:
        raise OnnxfuseError(f"{what} is {dtype}: scale, mean and std need a float input")
    if dtype.kind not in "fiu":
        raise OnnxfuseError(f"{what} has dtype {dtype}; images need a float or integer input")
    mean, std = (None if v is None else _per_channel(v, channels, name)
                 for name, v in (("mean", pre.mean), ("std", pre.std)))
    return Plan(height, width, channels, layout, np.dtype(dtype), float(pre.scale), mean, std)


def _per_channel(values, channels: int, name: str) -> np.ndarray:
    if len(values) not in (1, channels):
        raise OnnxfuseError(f"{name} has {len(values)} values; the input has {channels} channel(s)")
    return np.broadcast_to(np.asarray(values, np.float32), (channels,)).copy()


def list_images(folder: Path) -> tuple[list[Path], str | None]:
    """The images directly in `folder`, sorted by name, and a warning naming what was skipped (or None)."""
    from PIL import Image, UnidentifiedImageError

    if not folder.is_dir():
        raise OnnxfuseError(f"{folder}: not a folder")
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise OnnxfuseError(f"{folder}: cannot read ({exc.strerror or exc})") from None
    images, skipped, folders = [], 0, 0
    for path in entries:
        if path.is_dir():
            folders += 1
            continue
        try:
            with Image.open(path):
                images.append(path)
        except (UnidentifiedImageError, OSError, ValueError):
            skipped += 1
    parts = [f"{n} {what}" for n, what in ((skipped, "file(s) that are not images"),
                                           (folders, "sub-folder(s), not read")) if n]
    note = f"skipped {' and '.join(parts)}" if parts else None
    if not images:
        raise OnnxfuseError(f"{folder}: no image found (PNG, JPEG, ... files directly in the folder)"
                            + (f"; {note}" if note else ""))
    return images, note and f"warning: {folder}: {note}"


def load_image(path: Path, plan: Plan) -> np.ndarray:
    """One image as an array in the plan's layout (no batch axis) and dtype."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("L" if plan.channels == 1 else "RGB")
            if img.size != (plan.width, plan.height):
                img = img.resize((plan.width, plan.height), Image.Resampling.BILINEAR)
            pixels = np.asarray(img)
    except (OSError, ValueError, SyntaxError) as exc:
        raise OnnxfuseError(f"{path}: cannot read the image ({exc})") from None
    if plan.dtype.kind in "iu":
        x = pixels.reshape(plan.height, plan.width, plan.channels).astype(plan.dtype)
    else:
        x = pixels.reshape(plan.height, plan.width, plan.channels).astype(np.float32) * np.float32(plan.scale)
        if plan.mean is not None:
            x -= plan.mean
        if plan.std is not None:
            x /= plan.std
        x = x.astype(plan.dtype)
    return x.transpose(2, 0, 1) if plan.layout == "NCHW" else x


def load_images(paths: list[Path], plan: Plan) -> np.ndarray:
    shape = (plan.channels, plan.height, plan.width) if plan.layout == "NCHW" else \
        (plan.height, plan.width, plan.channels)
    out = np.empty((len(paths), *shape), plan.dtype)
    for i, path in enumerate(paths):
        out[i] = load_image(path, plan)
    return out


def _fmt(shape) -> str:
    return "(" + ", ".join(str(d) if isinstance(d, int) and d > 0 else "?" for d in shape) + ")"
