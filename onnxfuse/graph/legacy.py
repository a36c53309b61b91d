"""Classic ONNX exports (IR < 4, opsets 7-9): what differs from the form the analysis reads.

- IR < 4 requires every initializer to be listed as a graph input too. The graph drops those
  inputs on import (they are weights, not inputs); `list_initializers_as_inputs` adds them back
  to a result exported at such an IR version, with their new shapes.
- BatchNormalization before opset 9 has `spatial` (0: statistics per channel *and* position, the
  parameters are (C, H, W)) and before opset 7 `is_test` (0, the default: training mode).
  `batchnorm_not_per_channel` says why such a node is not the per-channel inference form, so that
  it is neither folded nor pruned (frozen with that reason, never guessed).
- Upsample (opsets 7-9: scales as attribute, then as input) and Resize may scale the channel axis:
  `channel_scale` reads the factor where it is a constant.

`Sum` (variadic) needs nothing here: the broadcast rule couples any number of inputs. Constant
nodes, ConstantOfShape and other constant subgraphs are folded by `rewrites.normalize`.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

FIRST_IR_WITH_OPTIONAL_INITIALIZER_INPUTS = 4


def list_initializers_as_inputs(model: onnx.ModelProto) -> None:
    """At IR < 4 every initializer must also be a graph input: list the missing ones (in place)."""
    if model.ir_version >= FIRST_IR_WITH_OPTIONAL_INITIALIZER_INPUTS:
        return
    listed = {value.name for value in model.graph.input}
    for init in model.graph.initializer:
        if init.name not in listed:
            model.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
            listed.add(init.name)


def batchnorm_not_per_channel(node: gs.Node, opset: int) -> str | None:
    """Why a BatchNormalization is not per-channel inference (old attributes, non-vector
    parameters), or None when it is."""
    if int(node.attrs.get("spatial", 1)) == 0:
        return "BatchNormalization with spatial=0 (parameters per channel and position)"
    if opset < 7 and not int(node.attrs.get("is_test", 0)):
        return "BatchNormalization with is_test=0 (training mode before opset 7)"
    for param in node.inputs[1:5]:
        if isinstance(param, gs.Constant) and np.asarray(param.values).ndim != 1:
            return "BatchNormalization with parameters that are not per-channel vectors"
    return None


def channel_scale(node: gs.Node, opset: int) -> float | None:
    """The scale factor of an Upsample/Resize on axis 1 where scales are constant, else None."""
    if "scales" in node.attrs:  # Upsample-7
        scales = node.attrs["scales"]
    else:
        index = 1 if node.op == "Upsample" or opset < 11 else 2
        tensor = node.inputs[index] if index < len(node.inputs) else None
        if not isinstance(tensor, gs.Constant):
            return None
        scales = tensor.values
    scales = np.atleast_1d(np.asarray(scales, dtype=np.float64))
    return float(scales[1]) if scales.size > 1 else None
