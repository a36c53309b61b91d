"""The training stage (extra `train`): the only package that imports torch, and only in its modules,
never here. `view.TorchView` runs an ONNX graph with torch ops (op table: ops.py, nn_ops.py),
`view.write_back` puts trained weights back into the same graph, `finetune.finetune` distils a
student from its teacher (distill.py: loss and loop; data.py: inputs and augmentation;
checkpoints.py; validation.py). Not yet: the training-time methods (TPP, structured directional
pruning, iterative pruning), which will register with `register_training_method`.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable
from pathlib import Path

from ..errors import OnnxfuseError
from ..registry import Registry
from ..scratch import interrupts_held

TRAINING_METHODS: Registry[Callable] = Registry("training method")


def register_training_method(name: str, replace: bool = False):
    """Decorator: register a training-time method under `name`."""
    return TRAINING_METHODS.register(name, replace)


def remove_checkpoints(folder: str | os.PathLike) -> None:
    """The checkpoints of a finished run, and their folder unless the user keeps other files there."""
    folder = Path(folder)
    with interrupts_held():
        for path in folder.glob("*.pt"):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()


def load_training(module: str):
    """The module `onnxfuse.training.<module>`, imported on demand; one error line when torch is missing."""
    try:
        return importlib.import_module(f"{__name__}.{module}")
    except ModuleNotFoundError as exc:
        if exc.name != "torch":
            raise
        raise OnnxfuseError("training needs torch: pip install 'onnxfuse[train]'") from None


def load_finetune() -> Callable:
    """`finetune.finetune`, imported on demand (see load_training)."""
    return load_training("finetune").finetune
