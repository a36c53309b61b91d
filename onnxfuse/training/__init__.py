"""The training stage (extra `train`): the only package that imports torch, and only in its modules,
never here. Reserved: the torch view of the graph, distillation and the training-time methods
(TPP, structured directional pruning, iterative pruning) land here as modules registered with
`register_training_method`; none is implemented yet.
"""

from __future__ import annotations

from collections.abc import Callable

from ..registry import Registry

TRAINING_METHODS: Registry[Callable] = Registry("training method")


def register_training_method(name: str, replace: bool = False):
    """Decorator: register a training-time method under `name`."""
    return TRAINING_METHODS.register(name, replace)
