"""The pass contract: each pass names the Context fields it requires and provides; the runner checks
them, and reports an internal error with the pass it came from. Passes register by name so that a
method can insert one into the list (methods/registry.py: `extra_passes`)."""

from __future__ import annotations

from typing import ClassVar

from ..registry import Registry


class Pass:
    """One step of the pipeline: `run(ctx)` reads `requires` and sets `provides` (dotted Context paths)."""

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    provides: ClassVar[tuple[str, ...]] = ()

    def run(self, ctx) -> None:
        raise NotImplementedError


PASSES: Registry[type[Pass]] = Registry("pass")


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: register a pass under its `name`."""
    PASSES.add(cls.name, cls)
    return cls


class PassContractError(RuntimeError):
    """A pass ran without what it requires, or did not provide what it promised (a bug, not a user error)."""


class PassFailed(RuntimeError):
    """An internal error inside a pass, with the pass named."""
