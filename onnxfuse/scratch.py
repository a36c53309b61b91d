"""Nothing written outside the outputs: one private temporary directory per run, libraries that write
into the working directory run inside it, and Ctrl-C held back while outputs are renamed into place.

A run (`run()`, the CLI opens one per command) gets its private directory under TMPDIR
(`tempfile.gettempdir()`) the first time something needs it (`directory()`), and loses it, with
everything in it, when the run ends: on success, on error and on Ctrl-C. A call outside a run gets a
directory of its own for the length of the call. Outputs renamed into place during a run are
recorded (`committed`); an interrupted run removes them again, so that exit 130 leaves no output.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

PREFIX = "onnxfuse-"
_LOCK = threading.RLock()  # the run's state
_CWD_LOCK = threading.RLock()  # the working directory is the process's: one borrower at a time


class _Run:
    depth = 0
    path: str | None = None
    outputs: list[Path] = []


_RUN = _Run()


@contextlib.contextmanager
def run():
    """The scope of one run (nested scopes join the outer one). When the outermost scope ends, the
    private directory is removed; when it ends with Ctrl-C, so are the outputs it committed."""
    with _LOCK:
        outermost = _RUN.depth == 0
        if outermost:
            _RUN.outputs = []
        _RUN.depth += 1
    try:
        yield
    except KeyboardInterrupt:
        if outermost:
            with interrupts_held():
                for path in _RUN.outputs:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
        raise
    finally:
        with _LOCK:
            _RUN.depth -= 1
            if _RUN.depth == 0:
                path, _RUN.path, _RUN.outputs = _RUN.path, None, []
                if path:
                    _remove(path)


def directory() -> Path:
    """The run's private directory (mode 0700, under TMPDIR), created on first use. Inside `run()`."""
    with _LOCK:
        if _RUN.depth == 0:
            raise RuntimeError("scratch.directory() outside scratch.run()")
        if _RUN.path is None:
            with interrupts_held():
                _RUN.path = os.path.abspath(tempfile.mkdtemp(prefix=PREFIX))  # TMPDIR may be relative
        return Path(_RUN.path)


@contextlib.contextmanager
def private_cwd():
    """Run the block with a fresh subdirectory of the run's private directory as the working
    directory, for a library that writes into the working directory (ONNX Runtime's symbolic shape
    inference saves `sym_shape_infer_temp.onnx` and its external data there when it stops short).
    The working directory is restored and the subdirectory removed after, whatever happens. Only
    library code that takes no relative path of ours may run inside: the block changes the
    process's working directory (other threads that open relative paths meanwhile would be
    surprised; the onnxfuse code does not)."""
    with run(), _CWD_LOCK:
        with interrupts_held():
            work = tempfile.mkdtemp(prefix="call-", dir=directory())
        try:
            here = os.getcwd()
        except OSError:  # the working directory was removed: nothing can be written there anyway
            here = None
        try:
            if here is not None:
                os.chdir(work)
            yield Path(work)
        finally:
            with interrupts_held():
                if here is not None:
                    os.chdir(here)
                _remove(work)


def committed(path: str | os.PathLike) -> None:
    """Record an output just renamed into place (call it with interrupts held), so that an
    interrupted run removes it."""
    with _LOCK:
        if _RUN.depth:
            _RUN.outputs.append(Path(path).absolute())


class _Held:
    came = False


@contextlib.contextmanager
def interrupts_held():
    """SIGINT waits until the block ends (renames, clean-up: things that must not stop half-way);
    yields a state whose `came` says whether one arrived, so that the block can undo its work. The
    held interrupt is then delivered (KeyboardInterrupt). Outside the main thread, where Python
    delivers no signal, the block simply runs."""
    state = _Held()
    previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if not callable(previous):  # not the main thread, SIGINT ignored or left to the OS
        yield state
        return

    def hold(signum, frame):
        state.came = True

    signal.signal(signal.SIGINT, hold)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)
        if state.came:
            previous(signal.SIGINT, None)  # KeyboardInterrupt, or an outer hold's record


def _remove(path: str) -> None:
    with interrupts_held():
        shutil.rmtree(path, ignore_errors=True)
