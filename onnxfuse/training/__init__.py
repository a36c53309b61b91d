"""The training stage (extra `train`): the only package that imports torch, and only in its modules,
never here. `view.TorchView` runs an ONNX graph with torch ops (op table: ops.py, nn_ops.py) and
`view.write_back` puts trained weights back into the same graph. Not yet: distillation, the
`finetune` command, and the training-time methods (TPP, structured directional pruning, iterative
pruning), which will register with `register_training_method`.
"""

from __future__ import annotations

from collections.abc import Callable

from ..registry import Registry

TRAINING_METHODS: Registry[Callable] = Registry("training method")


def register_training_method(name: str, replace: bool = False):
    """Decorator: register a training-time method under `name`."""
    return TRAINING_METHODS.register(name, replace)
