"""`finetune(teacher, student, options)`: train the student graph by distillation from the teacher and
write the best validated step back into a copy of the student (same nodes, names and opsets)."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable

import numpy as np
import onnx
import torch

from ..calibration.data import Dataset, load_npz
from ..calibration.images import Preprocess
from ..errors import OnnxfuseError
from ..log import info, warning
from ..runtime.sessions import batch_size_for
from . import checkpoints
from .data import check_same_interface, image_layout, load_train_data, split
from .distill import Hooks, Teacher, Trainer
from .options import TrainOptions
from .validation import Scorer
from .view import TorchView, write_back

CURVE_POINTS = 200  # the report's loss curve: means over at most this many stretches of steps
NOT_IN_THE_RUN_KEY = ("checkpoint", "checkpoint_every", "resume")


def finetune(teacher: onnx.ModelProto, student: onnx.ModelProto, options: TrainOptions, *, device: str = "auto",
             seed: int = 0, labels_key: str = "labels", preprocess: Preprocess | None = None,
             teacher_source: str | None = None, hooks: Callable[[TorchView], Hooks] | None = None,
             phase: str = "train") -> tuple[onnx.ModelProto, dict]:
    """The trained student and a report. `teacher_source`: the teacher's file, for ONNX Runtime to
    read with its external data. `hooks(view)`: a training-time method's additions to the loop;
    `phase` names its checkpoint file."""
    options.check()
    if not options.train_data:
        raise OnnxfuseError("training needs --train-data")
    check_same_interface(teacher, student)
    torch_device = _torch_device(device)
    data = load_train_data(options.train_data, teacher, labels_key, preprocess)
    val = load_npz(options.val_data, teacher, labels_key) if options.val_data else None
    train, val = split(data, teacher, val, options.val_samples)
    _check_batch(teacher, options.batch)
    layout = image_layout(train.specs) if options.augment == "auto" else None
    view = TorchView(student, bn=options.bn).to(torch_device)
    store = None
    if options.checkpoint:
        key = checkpoints.run_key(phase, _digest(teacher), _digest(student), _data_digest(data), str(seed),
                                  repr({k: v for k, v in dataclasses.asdict(options).items()
                                        if k not in NOT_IN_THE_RUN_KEY}))
        store = checkpoints.Store(options.checkpoint, key, options.resume, phase)
    ort_device = "cuda" if torch_device.type == "cuda" else "cpu"
    scorer = Scorer(teacher_source or teacher, teacher, val, ort_device)
    trainer = Trainer(view, student, Teacher(teacher_source or teacher, torch_device), train, scorer, options, seed,
                      layout, store, hooks(view) if hooks else None)
    info(f"{phase}: {options.train_steps} steps at batch {options.batch} on {len(train)} samples "
         f"({torch_device.type}{', augmented' if layout else ''}); {scorer.metric} on {len(val)} held-out samples "
         f"every {options.val_every} steps")
    state = trainer.run()
    view.load_state_dict(state.best_weights)
    result = write_back(view, student)
    return result, _report(state, scorer, options, len(train), torch_device)


def _torch_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device in ("cuda", "tensorrt"):
        if not torch.cuda.is_available():
            raise OnnxfuseError(f"device {device} asked for, but this torch has no CUDA device")
        return torch.device("cuda")
    return torch.device("cpu")


def _check_batch(model: onnx.ModelProto, batch: int) -> None:
    fixed = batch_size_for(model, batch)
    if fixed != batch:
        raise OnnxfuseError(f"the model's inputs have a fixed batch of {fixed}: train with --batch {fixed}")


def _digest(model: onnx.ModelProto) -> bytes:
    return hashlib.sha1(model.SerializeToString(deterministic=True)).digest()


def _data_digest(data: Dataset) -> str:
    """Sizes and the first and last samples: enough to tell two data files apart without reading them whole."""
    digest = hashlib.sha1()
    for name in sorted(data.feeds):
        array = data.feeds[name]
        digest.update(f"{name}{array.shape}{array.dtype}".encode())
        digest.update(np.ascontiguousarray(array[:1]).tobytes() + np.ascontiguousarray(array[-1:]).tobytes())
    return digest.hexdigest()


def _report(state, scorer: Scorer, options: TrainOptions, samples: int, device: torch.device) -> dict:
    first = state.validation[0]
    report = {"steps": state.step, "batch": options.batch, "samples": samples, "optimizer": options.optimizer,
              "lr": options.peak_lr, "temperature": options.temperature, "device": device.type,
              "seconds": round(state.seconds, 2),
              "seconds_per_step": round(state.seconds / state.step, 4) if state.step else None,
              "loss_curve": _curve(state.losses), "metric": scorer.metric, "validation_samples": len(scorer.data),
              "validation": state.validation, "score_before": first["score"], "best_step": state.best_step,
              "score_after": state.best_score, "teacher_score": scorer.teacher_score, "stopped_at": state.stopped_at}
    if state.best_step == 0 and state.step:
        warning(f"warning: no trained step beat the start on the validation set ({scorer.metric}); "
                "the student is written untrained")
    return report


def _curve(losses: list[float]) -> list[list[float]]:
    """[last step of the stretch, mean loss over it] for at most CURVE_POINTS stretches."""
    if not losses:
        return []
    edges = np.unique(np.linspace(0, len(losses), min(CURVE_POINTS, len(losses)) + 1).round().astype(int))
    return [[int(b), round(float(np.mean(losses[a:b])), 6)] for a, b in zip(edges[:-1], edges[1:])]
