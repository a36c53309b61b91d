"""The stop of Information Consistent Pruning as a training hook: every `stop_every` steps the
written-back student's information-flow vector on fixed inputs (planning/information_flow.py) is
compared with the dense model's; the round ends once they are within ε."""

from __future__ import annotations

import onnx

from ..calibration.data import Dataset
from ..planning import information_flow as flow
from . import register_training_method
from .distill import Hooks

CHECKS_PER_ROUND = 10


@register_training_method("icp")
class ICPStop(Hooks):
    def __init__(self, dense: onnx.ModelProto, student: onnx.ModelProto, data: Dataset, steps: int,
                 epsilon: float | None, device: str = "cpu"):
        dense_layers = set(flow.layers(dense))
        self.names = [n for n in flow.layers(student) if n in dense_layers]
        self.data, self.device = data, device
        self.dense = flow.flow_vector(dense, data, self.names, device)
        self.epsilon = flow.default_epsilon(dense, data, self.names, device) if epsilon is None else epsilon
        self.stop_every = max(1, steps // CHECKS_PER_ROUND)
        self.distances: list[tuple[int, float]] = []

    def stop(self, step: int, model: onnx.ModelProto) -> bool:
        gap = flow.distance(flow.flow_vector(model, self.data, self.names, self.device), self.dense)
        self.distances.append((step, round(gap, 6)))
        return gap < self.epsilon
