"""Distillation of a student graph from its teacher: the loss, the schedule and the training loop.

Loss: KL(teacher ‖ student) at temperature τ (× τ²) on classifier logits, an MSE normalised by the
teacher's mean square on the other float outputs, plus cross-entropy on the first logits when the
data has labels. SGD (momentum 0.9, Nesterov) or AdamW with weight decay on the weights of rank 2 and
more, a linear warm-up into a cosine decay to zero, gradient-norm clipping. The data order and the
augmentation of step k depend only on (seed, k), so a run resumed from a checkpoint equals an
uninterrupted one (CPU, same threads).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from ..errors import OnnxfuseError
from ..log import info, progress
from ..runtime.sessions import session
from ..scratch import interrupts_held
from . import checkpoints
from .data import ImageLayout, TrainSet, augment
from .options import TrainOptions
from .validation import Scorer
from .view import FLOAT_TYPES, TorchView, write_back

SGD_MOMENTUM = 0.9
DIVERGED = 100.0  # a smoothed loss this many times max(its lowest so far, 1) has diverged
SMOOTHING = 0.9


@dataclass
class Outputs:
    """How each graph output is trained: "kl" (logits), "mse", or None (not a float output)."""
    kinds: list[str | None]

    @classmethod
    def detect(cls, model: onnx.ModelProto, logits: tuple[str, ...]) -> Outputs:
        names = [o.name for o in model.graph.output]
        unknown = [n for n in logits if n not in names]
        if unknown:
            raise OnnxfuseError(f"--logits {unknown[0]!r} is not an output of the model (outputs: {', '.join(names)})")
        kinds = []
        for o in model.graph.output:
            t = o.type.tensor_type
            if t.elem_type not in FLOAT_TYPES:
                kinds.append(None)
            elif o.name in logits or not logits and len(t.shape.dim) == 2 and t.shape.dim[1].dim_value != 1:
                kinds.append("kl")
            else:
                kinds.append("mse")
        if not any(kinds):
            raise OnnxfuseError("the model has no float output to distil")
        return cls(kinds)


def loss_of(student: tuple, teacher: list[torch.Tensor], outputs: Outputs, tau: float,
            labels: torch.Tensor | None) -> torch.Tensor:
    total = student[0].new_zeros(())
    first_logits = None
    for s, t, kind in zip(student, teacher, outputs.kinds):
        if kind is None:
            continue
        if s.shape != t.shape:
            raise OnnxfuseError(f"student output has shape {tuple(s.shape)}, teacher's {tuple(t.shape)}")
        s, t = s.float(), t.float()
        if kind == "kl":
            first_logits = s if first_logits is None else first_logits
            total = total + F.kl_div(F.log_softmax(s / tau, -1), F.log_softmax(t / tau, -1), log_target=True,
                                     reduction="batchmean") * tau * tau
        else:
            total = total + F.mse_loss(s, t) / t.pow(2).mean().clamp_min(1e-12)
    if labels is not None and first_logits is not None:
        total = total + F.cross_entropy(first_logits, labels)
    return total


def learning_rate(step: int, options: TrainOptions) -> float:
    """Linear warm-up to the peak, then cosine to zero at the last step."""
    peak, warm, steps = options.peak_lr, options.warmup, options.train_steps
    if step < warm:
        return peak * (step + 1) / warm
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


def optimizer_for(view: TorchView, options: TrainOptions) -> torch.optim.Optimizer:
    trained = view.trained_parameters()
    groups = [{"params": [p for p in trained if p.ndim >= 2], "weight_decay": options.weight_decay},
              {"params": [p for p in trained if p.ndim < 2], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise OnnxfuseError("the student has no trainable weights")
    if options.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=options.peak_lr, momentum=SGD_MOMENTUM, nesterov=True)
    return torch.optim.AdamW(groups, lr=options.peak_lr)


class Teacher:
    """The original model without gradient: ONNX Runtime on the CPU, the torch view on a GPU."""

    def __init__(self, model: onnx.ModelProto | str, device: torch.device):
        self.device = device
        if device.type == "cpu":
            self.sess, self.view = session(model, "cpu"), None
        else:
            self.sess = None
            self.view = TorchView(onnx.load(model) if isinstance(model, str) else model).to(device).eval()

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[torch.Tensor]:
        if self.sess is not None:
            return [torch.from_numpy(np.asarray(o)) for o in self.sess.run(None, feeds)]
        with torch.no_grad():
            return list(self.view(**{k: torch.from_numpy(v).to(self.device) for k, v in feeds.items()}))


class Hooks:
    """What a training-time method adds to the loop (registry `training methods`): a regulariser
    added to the loss, a change of the gradients before the optimizer step (after clipping), a
    change of the parameters after it, its own learning rate and optimizer. `keep_best` False: the
    last step is the result (the method's schedule must finish), not the best validated one."""

    keep_best = True

    def loss(self, step: int) -> torch.Tensor | None:
        return None

    def before_step(self, step: int) -> None:
        pass

    def after_step(self, step: int) -> None:
        pass

    def learning_rate(self, step: int) -> float | None:
        return None

    def make_optimizer(self, view: TorchView, options: TrainOptions) -> torch.optim.Optimizer | None:
        return None

    stop_every = 0  # with a positive value: `stop(step, model)` every so many steps may end the run early

    def stop(self, step: int, model: onnx.ModelProto) -> bool:
        return False


@dataclass
class State:
    """What a checkpoint holds besides the parameters and the optimizer."""
    step: int = 0
    losses: list[float] = field(default_factory=list)
    validation: list[dict] = field(default_factory=list)  # {"step", "score"}
    best_step: int = 0
    best_score: float = -math.inf
    best_weights: dict[str, torch.Tensor] | None = None
    smoothed: float | None = None
    lowest: float = math.inf
    seconds: float = 0.0  # spent in training steps, over every resumed part
    stopped_at: int | None = None  # a method's stop criterion ended the run at this step


class Trainer:
    def __init__(self, view: TorchView, student: onnx.ModelProto, teacher: Teacher, train: TrainSet,
                 scorer: Scorer, options: TrainOptions, seed: int, layout: ImageLayout | None,
                 store: checkpoints.Store | None, hooks: Hooks | None = None):
        self.view, self.student, self.teacher, self.train, self.scorer = view, student, teacher, train, scorer
        self.options, self.seed, self.layout, self.store = options, seed, layout, store
        self.hooks = hooks or Hooks()
        self.outputs = Outputs.detect(student, options.logits)
        self.optimizer = self.hooks.make_optimizer(view, options) or optimizer_for(view, options)
        self.trained = view.trained_parameters()
        self.state = State()
        self.device = next(view.parameters()).device

    def run(self) -> State:
        opts = self.options
        if self.store and opts.resume and self.store.saved:
            self.state = State(**self.store.load(self.view, self.optimizer))
            info(f"resumed at step {self.state.step} of {opts.train_steps} from {self.store.path}")
        done = self.state.step
        due = done == 0 or done % opts.val_every == 0 or done == opts.train_steps
        if due and (not self.state.validation or self.state.validation[-1]["step"] != done):
            self._validate()  # the start, or a validation Ctrl-C fell on
        bar = progress(total=opts.train_steps, desc="train")
        bar.update(self.state.step)
        try:
            with torch.random.fork_rng(devices=[]):
                while self.state.step < opts.train_steps and self.state.stopped_at is None:
                    self._step()
                    bar.update(1)
                    bar.set_postfix(loss=f"{self.state.losses[-1]:.4g}", refresh=False)
                    done = self.state.step
                    if self._stops(done):
                        self._validate()
                        if self.store:
                            self.store.save(self.view, self.optimizer, self.state)
                        break
                    if done % opts.val_every == 0 or done == opts.train_steps:
                        self._validate()
                    if self.store and (done % opts.checkpoint_every == 0 or done == opts.train_steps):
                        self.store.save(self.view, self.optimizer, self.state)
        except KeyboardInterrupt:
            if self.store:
                self.store.save(self.view, self.optimizer, self.state)
                info(f"interrupted at step {self.state.step}: checkpoint kept in {self.store.folder} "
                     "(run again with --resume to continue)")
            raise
        finally:
            bar.close()
        return self.state

    def _step(self) -> None:
        opts, state, start = self.options, self.state, time.perf_counter()
        torch.manual_seed(self.seed * 1_000_003 + state.step)  # the dropout of this step
        feeds, labels = self.train.batch(state.step, opts.batch, self.seed)
        if self.layout is not None:
            feeds = augment(feeds, self.layout, np.random.default_rng([self.seed, state.step, 1]))
        teacher = [t.to(self.device) for t in self.teacher(feeds)]
        self.view.train()
        student = self.view(**{k: torch.from_numpy(v).to(self.device) for k, v in feeds.items()})
        target = None if labels is None else torch.from_numpy(labels).to(self.device)
        loss = loss_of(student, teacher, self.outputs, opts.temperature, target)
        extra = self.hooks.loss(state.step)
        loss = loss if extra is None else loss + extra
        value = float(loss.detach())
        self._guard(value)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if opts.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.trained, opts.clip_grad)
        self.hooks.before_step(state.step)
        lr = self.hooks.learning_rate(state.step)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(state.step, opts) if lr is None else lr
        with interrupts_held():  # a step is applied whole or not at all
            self.optimizer.step()
            with torch.no_grad():
                self.hooks.after_step(state.step)
            state.losses.append(value)
            state.step += 1
            state.seconds += time.perf_counter() - start

    def _guard(self, value: float) -> None:
        state, step = self.state, self.state.step
        if not math.isfinite(value):
            raise OnnxfuseError(f"the training loss became {value} at step {step}; nothing written "
                                "(try a lower --lr)")
        state.smoothed = value if state.smoothed is None else SMOOTHING * state.smoothed + (1 - SMOOTHING) * value
        state.lowest = min(state.lowest, state.smoothed)
        if state.smoothed > DIVERGED * max(1.0, state.lowest):
            raise OnnxfuseError(f"the training loss diverged at step {step} (smoothed {state.smoothed:.4g}, "
                                f"lowest {state.lowest:.4g}); nothing written (try a lower --lr)")

    def _stops(self, done: int) -> bool:
        every = self.hooks.stop_every
        if not every or done % every or done == self.options.train_steps:
            return False
        self.view.eval()
        if self.hooks.stop(done, write_back(self.view, self.student)):
            self.state.stopped_at = done
            return True
        return False

    def _validate(self) -> None:
        state = self.state
        self.view.eval()
        score = self.scorer.score(write_back(self.view, self.student))
        state.validation.append({"step": state.step, "score": score})
        if score >= state.best_score or not self.hooks.keep_best:  # a tie goes to the more trained step
            state.best_score, state.best_step = score, state.step
            state.best_weights = {k: v.detach().clone() for k, v in self.view.state_dict().items()}
