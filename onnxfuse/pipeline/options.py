"""The user's options: frozen dataclasses whose fields carry their CLI flag, help and choices.

`onnxfuse compress` is built from these fields (cli.py): defaults come from the field defaults,
choices from the registries (methods, importances, repairs) or the field's `choices`. Internal
plumbing (which groups a probe shrinks, counts decided elsewhere) lives in the Context, not here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..calibration.images import Preprocess
from ..errors import OnnxfuseError
from ..fields import option
from ..methods import METHODS
from ..methods.importance import IMPORTANCES
from ..methods.intra_fusion import FusionOptions
from ..repair import REPAIRS
from ..runtime.sessions import DEVICES, resolved_device
from ..runtime.timing import cpu_channel_block
from ..training.options import TrainOptions
from .defaults import AUTO, FUSION_FIELDS, auto_fields, auto_help, auto_layernorm_width

ALLOCATIONS = ("uniform", "sensitivity")
REPAIR_MODES = (AUTO, "none")  # besides the registered repairs
CALIB_SAMPLES = 256
STOPS = ("fixed", "icp")


def repair_choices() -> tuple[str, ...]:
    return REPAIR_MODES + REPAIRS.names()


@dataclass(frozen=True)
class Options:
    sparsity: float = option(0.5, "fraction of channels removed per group")
    method: str = option("auto", f"how each group's map is chosen ({auto_help('method')})",
                         choices=lambda: (AUTO,) + METHODS.names())
    importance: str = option("auto", f"channel importance criterion ({auto_help('importance')})",
                             choices=lambda: (AUTO,) + IMPORTANCES.names())
    round_to: int | str = option("auto", "keep a multiple of N channels per group (auto: 8 on CUDA or with "
                                 "--target-macs, the CPU's channel block with --target-latency, else 1)",
                                 metavar="N|auto", type="round_to")
    global_ranking: bool = option(False, "rank channels across all groups instead of the same sparsity in each",
                                  flag="--global", action="store_true")
    max_sparsity: float = option(1.0, "at most this fraction of a group goes")
    target_macs: float | None = option(None, "keep this fraction of the MACs (solves for the sparsity)", type=float,
                                       metavar="F")
    target_latency: float | None = option(None, "reach this fraction of the original ONNX Runtime latency "
                                          "(per-group timings)", type=float, metavar="F")
    min_agreement: float | None = option(None, "the smallest MAC ratio whose top-1 agreement with the original on "
                                         "--data is at least A (bisection, every point reported)", type=float,
                                         metavar="A")
    max_accuracy_drop: float | None = option(None, "the smallest MAC ratio whose accuracy on --data (labels) is at "
                                             "most D below the original's, D a fraction (0.01 = one point)",
                                             type=float, metavar="D")
    latency_batch: int = option(32, "batch size for --target-latency", type="positive_int", metavar="N")
    allocate: str = option("auto", "sensitivity: per-group sparsities measured on --calib data to meet "
                           "--target-macs (auto: sensitivity with --calib and --target-macs, else uniform)",
                           choices=(AUTO,) + ALLOCATIONS)
    layernorm_width: str = option("auto", "groups a LayerNorm normalises over (a transformer's hidden width): keep "
                                  "them whole or shrink them (auto: keep when pruning without --calib, else shrink)",
                                  choices=(AUTO, "keep", "shrink"))
    ignore: tuple[str, ...] = option((), "leave the output channels of matching nodes untouched (repeatable)",
                                     action="append", metavar="NODE_GLOB")
    fold_bn: bool = option(True, "do not fold BatchNormalization into Conv/Gemm", flag="--keep-bn",
                           action="store_false")
    calib: str | None = option(None, "calibration data: .npz (one array per input, optional labels) or a folder "
                               "of images (see the preprocessing options)")
    calib_samples: int = option(CALIB_SAMPLES, "use at most N calibration samples, drawn with --seed when there "
                                "are more", type="positive_int", metavar="N")
    preprocess: Preprocess = option(Preprocess, "", cli=False)  # the CLI's preprocessing group (cli.py)
    data: str | None = option(None, "validation data (.npz); default: the calibration data, else random inputs")
    labels_key: str = option("labels", "key of the labels array in the .npz files", flag="--labels")
    input_shape: tuple[str, ...] = option((), "shape of an input with dynamic dimensions, for MAC counts and "
                                          "random inputs", action="append", metavar="[NAME:]D0,D1,...")
    validate: bool = option(True, "skip the ONNX Runtime comparison", flag="--no-validate", action="store_false")
    device: str = option("auto", "where ONNX Runtime runs", choices=DEVICES)
    seed: int = option(0, "seed of every random draw (calibration subset, random importance, sampled "
                       "positions)", type=int)
    fusion: FusionOptions = option(FusionOptions, "", cli=False)  # flattened into --normalization, --ot-*
    repair: str = option("auto", "repair with the calibration data (auto: lsq with --calib, else none)",
                         choices=repair_choices)
    train: TrainOptions = option(TrainOptions, "", cli=False)  # flattened: --train-data, --train-steps, ...
    iterative: int = option(1, "shrink in K rounds, each to the next step of the schedule and distilled "
                            "(needs --train-data)", type="positive_int", metavar="K")
    stop: str = option("fixed", "when a round's distillation ends: fixed (an equal share of --train-steps, unused "
                       "steps carried on) or icp (the information flow matches the original's; needs --calib)",
                       choices=STOPS)
    split_data: int = option(1, "split-data Prune-and-Fuse: distil K students on disjoint parts of --train-data, "
                             "merge them with OT, distil the merged one on all of it", type="positive_int",
                             metavar="K")
    fuse_first: tuple[str, ...] = option((), "Fuse-and-Prune: merge these models (the input's architecture) into the "
                                         "input with OT, distil the merged model on --train-data for half of "
                                         "--train-steps, then compress it; the teacher is the ensemble of all",
                                         nargs="+", metavar="MODEL.onnx")
    ray: str | None = option(None, "run independent work (the students of --split-data, the probes of --allocate "
                             "sensitivity) as Ray tasks: auto (a local cluster sized to the machine) or the ADDRESS "
                             "of a running cluster",
                             metavar="auto|ADDRESS")
    icp_eps: float | None = option(None, "icp: the distance that ends a round (default: 3x the original's own "
                                   "distance between two halves of the calibration data)", type=float, metavar="E")
    tpp_update: int | None = option(None, "method tpp: steps of the update phase (default: half of --train-steps)",
                                    type=int, metavar="N")
    tpp_stabilise: int | None = option(None, "method tpp: steps of the stabilise phase (default: a fifth of "
                                       "--train-steps); the rest distils the pruned model", type=int, metavar="N")
    sdprun_c: float | None = option(None, "method sdprun: gRDA's c, in units of a group's RMS channel norm (default: "
                                    "from the plan, so that about the planned channels reach zero within the steps)",
                                    type=float, metavar="C")
    sdprun_mu: float = option(0.51, "method sdprun: gRDA's exponent mu", type=float, metavar="MU")

    @classmethod
    def from_flat(cls, **options) -> Options:
        """Options from flat keyword arguments: the fields of Options, the fusion options as
        `normalization`, `fuse_keep` and `ot_p`, `ot_solver`, `ot_reg`, `ot_marginals`, `ot_features`, and the
        fields of TrainOptions (`train_data`, `train_steps`, ...)."""
        fusion = {}
        for key in [k for k in options if k in ("normalization", "fuse_keep") or k.startswith("ot_")]:
            fusion[key.removeprefix("ot_").removeprefix("fuse_")] = options.pop(key)
        train_fields = {f.name for f in dataclasses.fields(TrainOptions)}
        train = {k: options.pop(k) for k in [k for k in options if k in train_fields]}
        train = TrainOptions.from_flat(**train)
        known = {f.name for f in dataclasses.fields(cls)} - {"fusion", "train"}
        known_fusion = {f.name for f in dataclasses.fields(FusionOptions)}
        unknown = sorted(set(options) - known) + sorted(set(fusion) - known_fusion)
        if unknown:
            raise OnnxfuseError(f"unknown option(s) {', '.join(unknown)}")
        for key in ("ignore", "input_shape", "fuse_first"):
            if key in options:
                options[key] = tuple(options[key])
        if options.get("preprocess", ...) is None:
            del options["preprocess"]
        return cls(fusion=FusionOptions(**fusion), train=train, **options)

    def check(self) -> None:
        self.with_defaults()._check()

    def _check(self) -> None:
        if not isinstance(self.sparsity, (int, float)) or not 0.0 <= self.sparsity < 1.0:
            raise OnnxfuseError(f"sparsity must be in [0, 1), got {self.sparsity}")
        METHODS.get(self.method)
        if not 0.0 < self.max_sparsity <= 1.0:
            raise OnnxfuseError(f"max-sparsity must be in (0, 1], got {self.max_sparsity}")
        if self.target_macs is not None and not 0.0 < self.target_macs <= 1.0:
            raise OnnxfuseError(f"target-macs must be in (0, 1], got {self.target_macs}")
        if self.round_to != "auto" and not positive_int(self.round_to):
            raise OnnxfuseError(f"round-to must be a positive integer or auto, got {self.round_to}")
        if self.target_latency is not None and not 0.0 < self.target_latency <= 1.0:
            raise OnnxfuseError(f"target-latency must be in (0, 1], got {self.target_latency}")
        if self.target_latency is not None and (self.target_macs is not None or self.allocate != "uniform"):
            raise OnnxfuseError("target-latency cannot be combined with target-macs or allocate sensitivity")
        self._check_quality_target()
        for name, value in (("latency-batch", self.latency_batch), ("calib-samples", self.calib_samples),
                            ("iterative", self.iterative), ("split-data", self.split_data)):
            if not positive_int(value):
                raise OnnxfuseError(f"{name} must be a positive integer, got {value}")
        self.preprocess.check()
        self.fusion.check()
        self.train.check()
        if self.allocate not in ALLOCATIONS:
            raise OnnxfuseError(f"unknown allocation {self.allocate!r}; choose from {', '.join(ALLOCATIONS)}")
        budget = self.target_macs is not None or self.quality_target
        if self.allocate == "sensitivity" and (not budget or not self.calib):
            raise OnnxfuseError("allocate sensitivity needs --target-macs (or a quality target) and calibration "
                                "data (--calib)")
        if self.repair not in repair_choices():
            raise OnnxfuseError(f"unknown repair {self.repair!r}; choose from {', '.join(repair_choices())}")
        if self.repair not in REPAIR_MODES and not self.calib:
            raise OnnxfuseError(f"repair {self.repair} needs calibration data (--calib)")
        self._check_needs()
        self._check_iterative()
        self._check_split_data()
        self._check_fuse_first()
        if self.method == "tpp":
            update, stabilise = self.tpp_phases
            if update < 1 or stabilise < 0 or update + stabilise > self.train.train_steps:
                raise OnnxfuseError(f"tpp phases {update} + {stabilise} steps must fit in train-steps "
                                    f"{self.train.train_steps} (update at least 1)")

    def _check_split_data(self) -> None:
        if self.split_data == 1:
            return
        if not self.train.train_data:
            raise OnnxfuseError("split-data trains a student on each part: give --train-data")
        if METHODS.get(self.method).needs_train_data:
            raise OnnxfuseError(f"split-data takes prune or fuse, not method {self.method}")
        if self.train.train_steps < 2 * self.split_data * self.iterative:
            raise OnnxfuseError(f"train-steps {self.train.train_steps} cannot give {self.split_data} students and "
                                "the merged model a step each" + (" in every round" if self.iterative > 1 else ""))

    def _check_fuse_first(self) -> None:
        if not self.fuse_first:
            return
        if not self.train.train_data:
            raise OnnxfuseError("fuse-first distils the merged model before compressing it: give --train-data")
        if self.iterative > 1 or self.split_data > 1:
            raise OnnxfuseError("fuse-first takes neither iterative nor split-data")
        if self.train.train_steps < 2:
            raise OnnxfuseError("fuse-first needs train-steps of at least 2 (half before compression, half after)")

    def _check_iterative(self) -> None:
        if self.stop not in STOPS:
            raise OnnxfuseError(f"unknown stop {self.stop!r}; choose from {', '.join(STOPS)}")
        if self.stop == "icp" and not (self.calib and self.train.train_data):
            raise OnnxfuseError("stop icp compares the information flow on calibration inputs during training: "
                                "give --calib and --train-data")
        if self.iterative == 1:
            return
        if not self.train.train_data:
            raise OnnxfuseError("iterative rounds distil after each shrink: give --train-data")
        if self.quality_target or self.target_latency is not None:
            raise OnnxfuseError("iterative takes --sparsity or --target-macs")
        if METHODS.get(self.method).needs_train_data:
            raise OnnxfuseError(f"method {self.method} trains in its own way: it does not take iterative")
        if self.train.train_steps < self.iterative:
            raise OnnxfuseError(f"train-steps {self.train.train_steps} cannot be shared by {self.iterative} rounds")

    @property
    def tpp_phases(self) -> tuple[int, int]:
        """(update, stabilise) steps of TPP; the rest of --train-steps distils the pruned model."""
        steps = self.train.train_steps
        update = self.tpp_update if self.tpp_update is not None else max(1, round(0.5 * steps))
        stabilise = self.tpp_stabilise if self.tpp_stabilise is not None else round(0.2 * steps)
        return update, stabilise

    @property
    def quality_target(self) -> bool:
        return self.min_agreement is not None or self.max_accuracy_drop is not None

    def _check_quality_target(self) -> None:
        if not self.quality_target:
            return
        if self.min_agreement is not None and self.max_accuracy_drop is not None:
            raise OnnxfuseError("give one of min-agreement and max-accuracy-drop")
        if self.min_agreement is not None and not 0.0 < self.min_agreement <= 1.0:
            raise OnnxfuseError(f"min-agreement must be in (0, 1], got {self.min_agreement}")
        if self.max_accuracy_drop is not None and not 0.0 <= self.max_accuracy_drop < 1.0:
            raise OnnxfuseError(f"max-accuracy-drop must be in [0, 1), got {self.max_accuracy_drop}")
        if self.target_macs is not None or self.target_latency is not None:
            raise OnnxfuseError("a quality target (min-agreement, max-accuracy-drop) chooses the MACs itself: "
                                "drop target-macs / target-latency")
        if not self.data:
            raise OnnxfuseError("a quality target is judged on validation data the repair does not see: give --data")

    def _check_needs(self) -> None:
        """What the chosen importance and method declare they need."""
        if METHODS.get(self.method).needs_train_data and not self.train.train_data:
            raise OnnxfuseError(f"method {self.method} trains the model: give --train-data")
        if self.calib:
            return
        importance = IMPORTANCES.get(self.importance)
        if importance.needs_activity and not importance.estimates_activity:
            raise OnnxfuseError(f"importance {self.importance} needs calibration data (--calib)")
        if METHODS.get(self.method).needs_activations(self):
            raise OnnxfuseError(f"OT features {self.fusion.features!r} need calibration data (--calib)")

    def with_defaults(self) -> Options:
        """A copy with every option left at "auto" set by the recipe (pipeline/defaults.py)."""
        chosen = auto_fields(self)
        if not chosen:
            return self
        fusion = {k: v for k, v in chosen.items() if k in FUSION_FIELDS}
        rest = {k: v for k, v in chosen.items() if k not in FUSION_FIELDS}
        return dataclasses.replace(self, fusion=dataclasses.replace(self.fusion, **fusion), **rest)

    def resolved(self) -> Options:
        """A checked copy with the recipe's defaults and `round_to` "auto" replaced by the device's multiple."""
        options = self.with_defaults()
        options._check()
        if options.layernorm_width == AUTO:
            options = dataclasses.replace(options, layernorm_width=auto_layernorm_width(options))
        return options if options.round_to != AUTO else dataclasses.replace(options, round_to=auto_round_to(options))


def positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


ALIGNED = 8  # tensor-core tiles on CUDA; ONNX Runtime's CPU channel block with AVX2, half of AVX-512's


def auto_round_to(options: Options) -> int:
    """Channel multiple: 8 on CUDA and under a MAC target on the CPU, where widths between two of
    ONNX Runtime's channel blocks cost the time of the next block (benchmarks/RESULTS.md, "Channel
    multiple under a MAC target": a multiple of 8 turns the same MAC ratio into much more speed-up
    for about half a point); with a latency target the CPU's own block; 1 for a plain --sparsity on
    the CPU (the exact count, as Torch-Pruning)."""
    if resolved_device(options.device) != "cpu":
        return ALIGNED
    if options.target_latency is not None:
        return cpu_channel_block()
    return ALIGNED if options.target_macs is not None else 1
