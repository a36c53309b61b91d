"""`ensemble(models)`: one model with the models' shared interface whose every float output is the
mean of theirs (other outputs: the first model's), e.g. the teacher of --fuse-first."""

from __future__ import annotations

import onnx
from onnx import helper
from onnx.compose import add_prefix_graph

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def ensemble(models: list[onnx.ModelProto]) -> onnx.ModelProto:
    first = models[0]
    graph = helper.make_graph([], "ensemble", list(first.graph.input), list(first.graph.output))
    for i, model in enumerate(models):
        part = add_prefix_graph(model.graph, _prefix(i), rename_inputs=False)
        graph.node.extend(part.node)
        graph.initializer.extend(part.initializer)
        graph.sparse_initializer.extend(part.sparse_initializer)
        graph.value_info.extend(part.value_info)
    for output in first.graph.output:
        members = [_prefix(i) + output.name for i in range(len(models))]
        mean = output.type.tensor_type.elem_type in FLOAT_TYPES
        graph.node.append(helper.make_node("Mean" if mean else "Identity", members if mean else members[:1],
                                           [output.name], name=f"ensemble/{output.name}"))
    result = helper.make_model(graph, opset_imports=list(first.opset_import), ir_version=first.ir_version,
                               producer_name="onnxfuse ensemble")
    result.functions.extend(first.functions)
    return result


def _prefix(i: int) -> str:
    return f"member{i}/"
