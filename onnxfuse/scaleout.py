"""Independent work as Ray tasks (`--ray auto` starts a local cluster sized to the machine, `--ray
ADDRESS` joins a running one), or one after another without Ray. A task is a pure function of
its arguments (models as bytes, arrays, options, a seed), so the results are the same either way."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from .errors import OnnxfuseError
from .log import progress

NOTHING = object()


def run_tasks(task: Callable, arguments: Sequence[tuple], ray: str | None, shared=NOTHING,
              desc: str | None = None, cpus: int = 1) -> list:
    """[task(*args) for args in arguments], as Ray tasks when `ray` is set; `shared`, when given,
    is every task's first argument (sent to the cluster once); `desc` labels a progress bar; `cpus`:
    the cores each task keeps busy (its thread count), so that Ray does not start more at once
    than the workers have cores."""
    lead = () if shared is NOTHING else (shared,)
    if not ray:
        return [task(*lead, *args) for args in progress(arguments, desc=desc)]
    ray_module = _connected(ray)
    if lead:
        lead = (ray_module.put(shared),)
    largest = max((node["Resources"].get("CPU", 0) for node in ray_module.nodes() if node["Alive"]), default=1)
    remote = ray_module.remote(num_cpus=max(1, min(cpus, int(largest))))(task)  # more than a node has: never runs
    pending = [remote.remote(*lead, *args) for args in arguments]
    try:
        with progress(total=len(pending), desc=desc) as bar:
            waiting = list(pending)
            while waiting:
                done, waiting = ray_module.wait(waiting, num_returns=1)
                bar.update(len(done))
        return ray_module.get(pending)
    except ray_module.exceptions.RayTaskError as exc:  # the task's own error, raised as itself
        raise exc.as_instanceof_cause() from None


def _connected(ray: str):
    """Ray, joined to the cluster of --ray (auto: a local one sized to the machine) once per process."""
    ray_module = _ray()
    if not ray_module.is_initialized():
        address = None if ray == "auto" else ray
        ray_module.init(address=address, num_cpus=os.cpu_count() if address is None else None,
                        include_dashboard=False, log_to_driver=False, configure_logging=False)
    return ray_module


def _ray():
    try:
        import ray
    except ImportError:
        raise OnnxfuseError("--ray needs Ray: pip install 'onnxfuse[ray]'") from None
    return ray
