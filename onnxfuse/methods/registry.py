"""The method registry: how a group's channel map is chosen (prune: a selection; fuse: optimal
transport; the training-time methods to come).

A method is a function `group_map(group, tensors, kept, scores, options, activations) -> GroupMap`
registered with `@register_method(name, ...)`, and declares what it needs and adds:
- `needs_activations(options)`: calibration activations of every group (the capture pass reads them);
- `extra_passes`: (pass name, the pass it follows) pairs that `pipeline.passes(options)` inserts,
  for methods that change the flow (train, remove, iterate) instead of special cases in the runner;
- `needs_train_data`: the method trains (--train-data).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..registry import Registry


def _never(options) -> bool:
    return False


@dataclass(frozen=True)
class Method:
    name: str
    group_map: Callable
    needs_activations: Callable = _never
    extra_passes: tuple[tuple[str, str], ...] = ()
    needs_train_data: bool = False


METHODS: Registry[Method] = Registry("method")


def register_method(name: str, *, needs_activations: Callable = _never,
                    extra_passes: tuple[tuple[str, str], ...] = (), needs_train_data: bool = False,
                    replace: bool = False):
    """Decorator: register `group_map` as the method `name`."""
    def wrap(group_map: Callable) -> Callable:
        METHODS.add(name, Method(name, group_map, needs_activations, tuple(extra_passes), needs_train_data), replace)
        return group_map
    return wrap
