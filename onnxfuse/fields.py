"""Dataclass fields that carry their command-line metadata, so that cli.py builds the flags from the
option dataclasses (pipeline.Options, methods.intra_fusion.FusionOptions) and nothing restates a
default, a help text or a choice list."""

from __future__ import annotations

from dataclasses import field


def option(default, help: str = "", **cli):
    """A field with its CLI metadata: help, and optionally flag, choices (a tuple or a callable
    returning one), type, metavar, action ("store_true", "store_false", "append"), nargs, cli=False."""
    kind = "default_factory" if callable(default) else "default"
    return field(**{kind: default}, metadata={"help": help, **cli})
