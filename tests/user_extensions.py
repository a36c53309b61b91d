"""Extensions written the way a user writes them, in their own file outside the package: an op rule
for an op onnxfuse does not know (Shrink), an importance, and a repair. tests/test_extensions.py
imports this file and checks that each changes what `compress` does."""

import numpy as np

import onnxfuse
from onnxfuse.analysis.relations import Couple
from onnxfuse.repair import RepairJob


@onnxfuse.register_op_rule("Shrink")
def shrink(node, tensor, axis, g):
    """Shrink is elementwise: every axis of its input is the same axis of its output."""
    x, y = node.inputs[0], node.outputs[0]
    return [Couple((x.name, axis), (y.name, axis))] if tensor in (x, y) else []


@onnxfuse.register_importance("first_channels")
def first_channels(group, tensors, seed=0, activity=None, **_):
    """Keeps the lowest-numbered channels of every group."""
    return np.arange(group.width, 0, -1, dtype=np.float64)


@onnxfuse.register_repair("halve_biases")
def halve_biases(job: RepairJob) -> list[dict]:
    """Halves the bias of every node that writes a shrunk group (a visible, checkable edit)."""
    tensors, rows = job.graph.tensors(), []
    for gid in job.space_maps.maps:
        for member in job.analysis.groups[gid].members:
            if member.role == "shift" and member.tensor in tensors:
                tensors[member.tensor].values = np.asarray(tensors[member.tensor].values) * 0.5
                rows.append({"tensor": member.tensor})
    return rows
