"""One student of split-data Prune-and-Fuse, as a task (passes/split_train.py runs K of them, as Ray
tasks with --ray): everything it needs comes in its arguments, so it runs alike on any worker."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from .finetune import finetune
from .options import TrainOptions


def train_student(teacher: bytes, student: bytes, arrays: dict[str, np.ndarray], options: TrainOptions,
                  device: str, seed: int, labels_key: str, phase: str, threads: int) -> tuple[bytes, dict]:
    """The student (serialised) distilled from the teacher on `arrays` (its part of the data), with
    `threads` torch threads whatever the worker's default, so that the result does not depend on
    where it ran."""
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="onnxfuse-part-") as folder:
        part = Path(folder) / "part.npz"
        np.savez(part, **arrays)
        trained, report = finetune(onnx.load_from_string(teacher), onnx.load_from_string(student),
                                   dataclasses.replace(options, train_data=str(part)), device=device, seed=seed,
                                   labels_key=labels_key, phase=phase)
    return trained.SerializeToString(), report
