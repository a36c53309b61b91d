"""The compression pipeline, in order. Each pass reads and extends one Context.

    load ─► normalize ─► analyze ─► capture ─► score ─► plan ─► fuse ─► repair ─► emit ─► validate
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .channelmap import GroupMap, SpaceMaps
from .channels import Analysis
from .data import Dataset
from .errors import OnnxfuseError
from .fusion import FusionOptions, warm_up_l1_kernel
from .images import Preprocess
from .latency import cpu_channel_block
from .validate import resolved_device

METHODS = ("prune", "fuse")
REPAIRS = ("auto", "none", "stats", "lsq")
ALLOCATIONS = ("uniform", "sensitivity")


@dataclass
class Options:
    sparsity: float = 0.5
    method: str = "prune"
    importance: str = "l1"
    round_to: int | str = "auto"  # "auto": 8 on CUDA/TensorRT, 1 on CPU (the CPU block with target_latency)
    global_ranking: bool = False
    max_sparsity: float = 1.0
    target_macs: float | None = None  # fraction of MACs to keep; solves for the sparsity
    target_latency: float | None = None  # fraction of the ONNX Runtime latency to reach (measured per group)
    latency_batch: int = 32  # batch size the latency target is measured at
    allocate: str = "uniform"  # or "sensitivity": per-group sparsities measured on calibration data
    ignore: tuple[str, ...] = ()
    only_groups: tuple[int, ...] | None = None  # shrink only these group ids (one-group studies)
    fixed_counts: dict[int, int] | None = None  # channels each group keeps, decided elsewhere (allocator probes)
    fold_bn: bool = True
    calib: str | None = None  # .npz file or folder of images
    calib_samples: int = 256  # at most this many calibration samples (seeded draw when more)
    preprocess: Preprocess = field(default_factory=Preprocess)  # for a folder of images
    data: str | None = None  # validation data; default: calib, else random inputs
    labels_key: str = "labels"
    input_shape: tuple[str, ...] = ()  # "NAME:1,3,224,224": dynamic input dims for MAC counts and random inputs
    validate: bool = True
    device: str = "auto"
    seed: int = 0
    fusion: FusionOptions = field(default_factory=FusionOptions)
    repair: str = "auto"  # stats when calibration data is given, else none

    @classmethod
    def from_flat(cls, **options) -> Options:
        """Options from flat keyword arguments: the fields of Options, and the fusion options as
        `normalization` and `ot_p`, `ot_solver`, `ot_reg`, `ot_marginals`, `ot_features`."""
        fusion = {}
        for key in [k for k in options if k == "normalization" or k.startswith("ot_")]:
            fusion[key.removeprefix("ot_")] = options.pop(key)
        known = {f.name for f in dataclasses.fields(cls)} - {"fusion"}
        known_fusion = {f.name for f in dataclasses.fields(FusionOptions)}
        unknown = sorted(set(options) - known) + sorted(set(fusion) - known_fusion)
        if unknown:
            raise OnnxfuseError(f"unknown option(s) {', '.join(unknown)}")
        for key in ("ignore", "input_shape"):
            if key in options:
                options[key] = tuple(options[key])
        if options.get("preprocess", ...) is None:
            del options["preprocess"]
        return cls(fusion=FusionOptions(**fusion), **options)

    def check(self) -> None:
        if not isinstance(self.sparsity, (int, float)) or not 0.0 <= self.sparsity < 1.0:
            raise OnnxfuseError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.method not in METHODS:
            raise OnnxfuseError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if not 0.0 < self.max_sparsity <= 1.0:
            raise OnnxfuseError(f"max-sparsity must be in (0, 1], got {self.max_sparsity}")
        if self.target_macs is not None and not 0.0 < self.target_macs <= 1.0:
            raise OnnxfuseError(f"target-macs must be in (0, 1], got {self.target_macs}")
        if self.round_to != "auto" and not _positive_int(self.round_to):
            raise OnnxfuseError(f"round-to must be a positive integer or auto, got {self.round_to}")
        if self.target_latency is not None and not 0.0 < self.target_latency <= 1.0:
            raise OnnxfuseError(f"target-latency must be in (0, 1], got {self.target_latency}")
        if self.target_latency is not None and (self.target_macs is not None or self.allocate != "uniform"):
            raise OnnxfuseError("target-latency cannot be combined with target-macs or allocate sensitivity")
        for name, value in (("latency-batch", self.latency_batch), ("calib-samples", self.calib_samples)):
            if not _positive_int(value):
                raise OnnxfuseError(f"{name} must be a positive integer, got {value}")
        self.preprocess.check()
        self.fusion.check()
        if self.allocate not in ALLOCATIONS:
            raise OnnxfuseError(f"unknown allocation {self.allocate!r}; choose from {', '.join(ALLOCATIONS)}")
        if self.allocate == "sensitivity" and (self.target_macs is None or not self.calib):
            raise OnnxfuseError("allocate sensitivity needs --target-macs and calibration data (--calib)")
        if self.repair not in REPAIRS:
            raise OnnxfuseError(f"unknown repair {self.repair!r}; choose from {', '.join(REPAIRS)}")
        if self.repair in ("stats", "lsq") and not self.calib:
            raise OnnxfuseError(f"repair {self.repair} needs calibration data (--calib)")

    @property
    def effective_repair(self) -> str:
        if self.repair == "auto":
            return "stats" if self.calib else "none"
        return self.repair


@dataclass
class Context:
    options: Options
    source: str | onnx.ModelProto
    original: onnx.ModelProto | None = None
    weights_dir: str | None = None  # set when `original` left its weights in their external-data files there
    graph: gs.Graph | None = None
    analysis: Analysis | None = None
    calib: Dataset | None = None
    data: Dataset | None = None
    input_shapes: dict[str, list[int]] = field(default_factory=dict)  # for inputs with dynamic dims
    activity: dict[int, np.ndarray] = field(default_factory=dict)  # group id -> mean |activation| per channel
    activations: dict[int, np.ndarray] = field(default_factory=dict)  # group id -> (width, samples)
    scores: dict[int, np.ndarray] = field(default_factory=dict)
    keep: dict[int, np.ndarray] = field(default_factory=dict)  # group id -> kept channel indices
    maps: dict[int, GroupMap] = field(default_factory=dict)
    space_maps: SpaceMaps | None = None
    before_fuse: onnx.ModelProto | None = None  # the normalised model, kept when repair needs it
    result: onnx.ModelProto | None = None
    report: dict = field(default_factory=dict)
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr))

    @property
    def original_path(self) -> str | None:
        return self.source if isinstance(self.source, str) else None

    @property
    def model_source(self) -> str | onnx.ModelProto:
        """The original as ONNX Runtime or another pipeline run reads it: its file when the
        weights stayed there, else the proto."""
        return self.source if self.weights_dir else self.original


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def auto_round_to(options: Options) -> int:
    """Channel multiple per device: 8 on CUDA (tensor-core tiles); on the CPU 1, or with a latency
    target the width of ONNX Runtime's NCHWc blocks, since widths between two blocks cost the same
    time there (benchmarks/RESULTS.md, "Latency")."""
    if resolved_device(options.device) != "cpu":
        return 8
    return cpu_channel_block() if options.target_latency is not None else 1


def passes() -> list:
    from onnxfuse.passes import analyze, capture, emit, fuse, load, normalize, plan, repair, score, validate

    return [load.Load(), normalize.Normalize(), analyze.Analyze(), capture.Capture(), score.Score(), plan.Plan(),
            fuse.Fuse(), repair.Repair(), emit.Emit(), validate.Validate()]


def run(ctx: Context, stop_after: str | None = None) -> Context:
    ctx.options.check()
    if ctx.options.round_to == "auto":
        ctx.options = dataclasses.replace(ctx.options, round_to=auto_round_to(ctx.options))
    timings = ctx.report.setdefault("seconds", {})
    for p in passes():
        start = time.perf_counter()
        ctx = p.run(ctx)
        timings[p.name] = round(time.perf_counter() - start, 4)
        if p.name == "load" and ctx.options.method == "fuse":
            warm_up_l1_kernel(ctx.original, ctx.options.fusion)
        if p.name == stop_after:
            break
    return ctx
