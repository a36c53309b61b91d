"""`passes(options)`: the pass list for a run. The base flow, then the passes the chosen method adds
(methods/registry.py: `extra_passes`, each after the pass it names)."""

from __future__ import annotations

from .. import passes as _passes  # noqa: F401  (importing onnxfuse.passes registers every pass)
from ..methods import METHODS
from .contract import PASSES, Pass
from .options import Options

FLOW = ("load", "normalize", "analyze", "keep_whole", "capture", "score", "choose_importance", "plan", "fuse", "repair",
        "emit", "train", "validate")


def passes(options: Options) -> list[Pass]:
    names = list(FLOW)
    for name, after in METHODS.get(options.with_defaults().method).extra_passes:
        names.insert(names.index(after) + 1, name)
    if options.split_data > 1:
        names.insert(names.index("train"), "split_train")
    return [PASSES.get(name)() for name in names]
