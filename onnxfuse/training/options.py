"""The training options (no torch here: the CLI builds its flags from these fields, and `compress`
checks them before anything long starts). `onnxfuse finetune` takes every field; `compress` takes
them too and trains after the repair when `train_data` is given."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import OnnxfuseError
from ..fields import option

OPTIMIZERS = ("sgd", "adamw")
DEFAULT_LR = {"sgd": 0.01, "adamw": 0.001}
BN_MODES = ("frozen", "train")
AUGMENTATIONS = ("auto", "none")


@dataclass(frozen=True)
class TrainOptions:
    train_data: str | None = option(None, "unlabelled training inputs (.npz, memory-mapped, or a folder of images "
                                    "with the preprocessing options): train the compressed model by distillation "
                                    "from the original")
    train_steps: int = option(1000, "optimizer steps", type="positive_int", metavar="N")
    batch: int = option(128, "training batch size", type="positive_int", metavar="N")
    lr: float | None = option(None, "peak learning rate (default: 0.01 for sgd, 0.001 for adamw)", type=float)
    optimizer: str = option("sgd", "sgd (momentum 0.9, Nesterov) or adamw", choices=OPTIMIZERS)
    weight_decay: float = option(5e-5, "weight decay on weights of rank 2 and more (default 5e-5)",
                                  type=float)
    warmup_steps: int | None = option(None, "linear warm-up before the cosine decay (default: 5% of the steps)",
                                      type=int, metavar="N")
    temperature: float = option(4.0, "distillation temperature of the KL loss on classifier logits (default 4)",
                                 type=float)
    clip_grad: float = option(5.0, "clip the gradient norm at this value (default 5; 0: no clipping)", type=float)
    logits: tuple[str, ...] = option((), "output(s) trained with the KL loss (default: every 2-D float output; "
                                     "others get a normalised MSE); repeatable", action="append", metavar="NAME")
    val_data: str | None = option(None, "validation inputs (.npz, labels optional) scored in ONNX Runtime "
                                  "(default: a held-out slice of --train-data)")
    val_every: int = option(250, "validate every N steps; the best validated step is the one written",
                            type="positive_int", metavar="N")
    val_samples: int = option(1000, "size of the held-out slice when there is no --val-data", type="positive_int",
                              metavar="N")
    bn: str = option("frozen", "BatchNormalization in training: frozen running statistics, or train them",
                     choices=BN_MODES)
    augment: str = option("auto", "image inputs: random crop with padding and horizontal flip (auto), or none "
                          "(for data where flips are wrong)", choices=AUGMENTATIONS)
    checkpoint: str | None = option(None, "checkpoint folder (default for the CLI: OUTPUT.ckpt, removed after a "
                                    "finished run)", metavar="DIR")
    checkpoint_every: int = option(250, "write a checkpoint every N steps (and on Ctrl-C)", type="positive_int",
                                   metavar="N")
    resume: bool = option(False, "continue from the checkpoint", action="store_true")

    @classmethod
    def from_flat(cls, **options) -> TrainOptions:
        """From keyword arguments as the API takes them (`logits` any sequence)."""
        if "logits" in options:
            options["logits"] = tuple(options["logits"])
        return cls(**options)

    @property
    def peak_lr(self) -> float:
        return DEFAULT_LR[self.optimizer] if self.lr is None else self.lr

    @property
    def warmup(self) -> int:
        return max(1, self.train_steps // 20) if self.warmup_steps is None else self.warmup_steps

    def check(self) -> None:
        for name, value in (("train-steps", self.train_steps), ("batch", self.batch), ("val-every", self.val_every),
                            ("val-samples", self.val_samples), ("checkpoint-every", self.checkpoint_every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise OnnxfuseError(f"{name} must be a positive integer, got {value}")
        if self.optimizer not in OPTIMIZERS:
            raise OnnxfuseError(f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
        for name, value, allowed in (("bn", self.bn, BN_MODES), ("augment", self.augment, AUGMENTATIONS)):
            if value not in allowed:
                raise OnnxfuseError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        finite = [("lr", self.peak_lr, False), ("temperature", self.temperature, False),
                  ("weight-decay", self.weight_decay, True), ("clip-grad", self.clip_grad, True)]
        for name, value, zero_ok in finite:
            if not isinstance(value, (int, float)) or not (0 <= value < float("inf")) or (value == 0 and not zero_ok):
                raise OnnxfuseError(f"{name} must be a {'non-negative' if zero_ok else 'positive'} number, got {value}")
        if self.warmup_steps is not None and not 0 <= self.warmup_steps <= self.train_steps:
            raise OnnxfuseError(f"warmup-steps must be in [0, train-steps], got {self.warmup_steps}")
        if self.train_data is None and self.resume:
            raise OnnxfuseError("resume continues a training run: give --train-data")
        if self.resume and not self.checkpoint:
            raise OnnxfuseError("resume needs a checkpoint folder (--checkpoint)")
