"""Scoring a student in ONNX Runtime on the validation set: accuracy when the set has labels, else
top-1 agreement with the teacher (classifiers), else minus the relative squared error of the outputs.
The teacher's outputs on the set are computed once."""

from __future__ import annotations

import numpy as np
import onnx

from ..calibration.data import Dataset
from ..runtime.sessions import batch_size_for, run, session

METRICS = ("accuracy", "agreement", "negative relative error")


class Scorer:
    def __init__(self, teacher: onnx.ModelProto | str, like: onnx.ModelProto, data: Dataset, device: str = "auto"):
        self.data, self.device, self.batch = data, device, batch_size_for(like)
        self.reference = run(session(teacher, device), data, self.batch)
        first = self.reference[0]
        classifier = first.dtype.kind == "f" and first.ndim == 2 and first.shape[1] > 1
        self.metric = (METRICS[0] if classifier and data.labels is not None
                       else METRICS[1] if classifier else METRICS[2])

    def score(self, model: onnx.ModelProto) -> float:
        outputs = run(session(model, self.device), self.data, self.batch)
        if self.metric == "accuracy":
            return float((outputs[0].argmax(-1) == self.data.labels).mean())
        if self.metric == "agreement":
            return float((outputs[0].argmax(-1) == self.reference[0].argmax(-1)).mean())
        errors = [np.mean((o.astype(np.float64) - r) ** 2) / max(np.mean(r.astype(np.float64) ** 2), 1e-24)
                  for o, r in zip(outputs, self.reference) if r.dtype.kind == "f"]
        return -float(np.mean(errors))

    @property
    def teacher_score(self) -> float | None:
        if self.metric == "accuracy":
            return float((self.reference[0].argmax(-1) == self.data.labels).mean())
        return None
