"""The repair registry: corrections fitted on calibration data after the maps are applied.

A repair is `repair(job: RepairJob) -> list[dict]` registered with `@register_repair(name)`; it
edits `job.graph` in place and returns one report row per step. Every repair needs calibration
data (the options refuse one without `--calib`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import onnx
import onnx_graphsurgeon as gs

from ..analysis.channels import Analysis
from ..calibration.capture import OutputCache
from ..calibration.data import Dataset
from ..methods.channelmap import SpaceMaps
from ..registry import Registry


@dataclass(frozen=True)
class RepairJob:
    graph: gs.Graph  # the shrunk graph, repaired in place
    like: onnx.ModelProto  # the original proto (opsets, interface) to export the graph with
    original: onnx.ModelProto  # the normalised original before any map: the targets come from it
    analysis: Analysis
    space_maps: SpaceMaps  # the maps that were applied
    data: Dataset  # calibration data
    seed: int = 0
    cache: OutputCache = field(default_factory=OutputCache)  # the original's outputs, shared by probes


Repair = Callable[[RepairJob], list[dict]]
REPAIRS: Registry[Repair] = Registry("repair")


def register_repair(name: str, replace: bool = False):
    """Decorator: register `repair(job) -> list[dict]` as the repair `name`."""
    return REPAIRS.register(name, replace)
