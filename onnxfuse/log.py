"""The one way onnxfuse talks to the user: a module logger for lines, tqdm for progress bars, and
ONNX Runtime's own log level.

Lines go to stderr through the `onnxfuse` logger (level INFO; `quiet()` raises it so that only
errors pass). Bars are tqdm's (rate and ETA) on stderr, shown only when stderr is a terminal and
the logger is not quiet. ONNX Runtime's C++ warnings (graph optimiser notes such as
`UnsqueezeElimination cannot remove node`) are silenced unless `verbose()` was called.
"""

from __future__ import annotations

import contextlib
import logging
import sys

import onnxruntime as ort
from tqdm import tqdm

logger = logging.getLogger("onnxfuse")
ORT_QUIET, ORT_VERBOSE = 3, 1  # ONNX Runtime severities: 3 errors only, 1 info and up
_state = {"ort_severity": ORT_QUIET}


class _StderrHandler(logging.StreamHandler):
    """Writes to the sys.stderr of the moment (tests and callers may replace it)."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


if not logger.handlers:
    logger.addHandler(_StderrHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False
ort.set_default_logger_severity(ORT_QUIET)


def info(message: str) -> None:
    logger.info(message)


def warning(message: str) -> None:
    logger.warning(message)


@contextlib.contextmanager
def quiet(enabled: bool = True):
    """Within the block, nothing below an error is printed (no lines, no bars)."""
    if not enabled:
        yield
        return
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def verbose(enabled: bool = True) -> None:
    """Let ONNX Runtime's own warnings through (they are silenced by default)."""
    _state["ort_severity"] = ORT_VERBOSE if enabled else ORT_QUIET
    ort.set_default_logger_severity(_state["ort_severity"])


def ort_severity() -> int:
    """The log severity for ONNX Runtime sessions."""
    return _state["ort_severity"]


def progress(iterable=None, *, total: int | None = None, desc: str | None = ""):
    """A tqdm bar on stderr (rate, ETA), disabled when stderr is not a terminal, output is quiet or
    `desc` is None."""
    disabled = desc is None or not logger.isEnabledFor(logging.INFO) or not sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, disable=disabled, file=sys.stderr, leave=False,
                dynamic_ncols=True)
