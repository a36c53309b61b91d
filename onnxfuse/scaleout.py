"""Independent work as Ray tasks (`--ray auto` starts a local cluster sized to the machine, `--ray
ADDRESS` joins a running one), or one after another without Ray. A task is a pure function of
its arguments (models as bytes, arrays, options, a seed), so the results are the same either way."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from .errors import OnnxfuseError


def run_tasks(task: Callable, arguments: Sequence[tuple], ray: str | None) -> list:
    """[task(*args) for args in arguments], as Ray tasks when `ray` is set."""
    if not ray:
        return [task(*args) for args in arguments]
    ray_module = _ray()
    if not ray_module.is_initialized():
        address = None if ray == "auto" else ray
        ray_module.init(address=address, num_cpus=os.cpu_count() if address is None else None,
                        include_dashboard=False, log_to_driver=False, configure_logging=False)
    remote = ray_module.remote(num_cpus=1)(task)
    try:
        return ray_module.get([remote.remote(*args) for args in arguments])
    except ray_module.exceptions.RayTaskError as exc:  # the task's own error, raised as itself
        raise exc.as_instanceof_cause() from None


def _ray():
    try:
        import ray
    except ImportError:
        raise OnnxfuseError("--ray needs Ray: pip install 'onnxfuse[ray]'") from None
    return ray
