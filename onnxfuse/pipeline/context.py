"""What the passes read and extend, in typed parts: the model, the calibration data and what was
measured on it, the decisions (scores, kept channels, maps), and the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..analysis.channels import Analysis
from ..calibration.capture import OutputCache
from ..calibration.data import Dataset
from ..methods.channelmap import GroupMap, SpaceMaps
from .options import Options


@dataclass
class ModelState:
    source: str | onnx.ModelProto
    original: onnx.ModelProto | None = None
    weights_dir: str | None = None  # set when `original` left its weights in their external-data files there
    graph: gs.Graph | None = None
    analysis: Analysis | None = None
    input_shapes: dict[str, list[int]] = field(default_factory=dict)  # for inputs with dynamic dims
    before_fuse: onnx.ModelProto | None = None  # the normalised model, kept when repair needs it
    result: onnx.ModelProto | None = None
    reference: tuple[onnx.ModelProto, str | None] | None = None  # rounds after the first: the true original

    @property
    def teacher(self) -> tuple[onnx.ModelProto, str | None]:
        """(the model to distil from and validate against, its file): the original of the whole run."""
        return self.reference or (self.original, self.original_path)

    @property
    def original_path(self) -> str | None:
        return self.source if isinstance(self.source, str) else None

    @property
    def model_source(self) -> str | onnx.ModelProto:
        """The original as ONNX Runtime reads it: its file when the weights stayed there, else the proto."""
        return self.source if self.weights_dir else self.original


@dataclass
class CalibrationState:
    calib: Dataset | None = None
    data: Dataset | None = None  # validation data
    activity: dict[int, np.ndarray] = field(default_factory=dict)  # group id -> mean |activation| per channel
    activations: dict[int, np.ndarray] = field(default_factory=dict)  # group id -> (width, samples)
    original_outputs: OutputCache = field(default_factory=OutputCache)  # shared with the probes' repairs


@dataclass
class Decisions:
    scores: dict[int, np.ndarray] | None = None
    keep: dict[int, np.ndarray] | None = None  # group id -> kept channel indices
    maps: dict[int, GroupMap] | None = None
    space_maps: SpaceMaps | None = None
    only_groups: tuple[int, ...] | None = None  # probes: shrink only these groups
    fixed_counts: dict[int, int] | None = None  # probes: channels each group keeps, decided by the planner
    choices: dict[str, dict[int, np.ndarray]] | None = None  # --importance select: each candidate's scores
    sensitivity: dict[int, dict[float, float]] | None = None  # damage per group and level, once measured


@dataclass
class Context:
    options: Options
    model: ModelState
    calibration: CalibrationState = field(default_factory=CalibrationState)
    decisions: Decisions = field(default_factory=Decisions)
    report: dict = field(default_factory=dict)
    probes: Any = None  # planning.probes.Probes, set by the runner: the one way to re-run a part
    trained_steps: int = 0  # of --train-steps, spent by a method's own training before the train pass
    round: int = 0  # of --iterative: names the checkpoint files of the round's training phases

    def phase(self, name: str) -> str:
        return f"{name}-round{self.round}" if self.round else name

    @classmethod
    def for_model(cls, options: Options, source: str | onnx.ModelProto) -> Context:
        return cls(options, ModelState(source))

    def field_value(self, path: str):
        """`"model.graph"` → self.model.graph (the pass contract names fields so)."""
        value = self
        for part in path.split("."):
            value = getattr(value, part)
        return value
