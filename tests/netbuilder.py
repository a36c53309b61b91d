"""A tiny builder for test graphs with onnx.helper: random weights, readable call sites."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference


class Net:
    def __init__(self, input_shape=("N", 3, 8, 8), opset: int = 17, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.opset = opset
        self.input_shape = input_shape
        self.count = 0

    def _name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, array, prefix: str = "c") -> str:
        name = self._name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def rand(self, *shape, scale: float = 0.5) -> str:
        return self.const((self.rng.standard_normal(shape) * scale).astype(np.float32), "w")

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs):
        outs = [self._name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self._name(op_type + "_"), **attrs))
        return outs[0] if n_out == 1 else outs

    def conv(self, x: str, c_in: int, c_out: int, k: int = 3, group: int = 1, bias: bool = True,
             stride: int = 1) -> str:
        inputs = [x, self.rand(c_out, c_in // group, k, k)]
        if bias:
            inputs.append(self.rand(c_out, scale=0.1))
        return self.op("Conv", inputs, pads=[k // 2] * 4, group=group, strides=[stride, stride])

    def bn(self, x: str, c: int, **attrs) -> str:
        scale = self.const(self.rng.uniform(0.5, 1.5, c).astype(np.float32))
        shift = self.const(self.rng.uniform(-0.2, 0.2, c).astype(np.float32))
        mean = self.const(self.rng.uniform(-0.2, 0.2, c).astype(np.float32))
        var = self.const(self.rng.uniform(0.5, 2.0, c).astype(np.float32))
        return self.op("BatchNormalization", [x, scale, shift, mean, var], epsilon=1e-3, **attrs)

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])

    def gemm(self, x: str, k: int, n: int, trans_b: int = 1) -> str:
        w = self.rand(n, k) if trans_b else self.rand(k, n)
        return self.op("Gemm", [x, w, self.rand(n, scale=0.1)], transB=trans_b)

    def model(self, *outputs: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "test", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(self.input_shape))],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        model = onnx.shape_inference.infer_shapes(model)
        del model.graph.value_info[:]
        onnx.checker.check_model(model, full_check=True)
        return model

    def classic_model(self, *outputs: str, ir_version: int = 3) -> onnx.ModelProto:
        """The model as classic exporters wrote it: every initializer also listed as a graph input,
        an old IR version; output shapes from ONNX Runtime's symbolic inference (computed Reshape shapes)."""
        graph = helper.make_graph(
            self.nodes, "classic", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(self.input_shape))],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], self.inits)
        graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)], ir_version=ir_version)
        model = SymbolicShapeInference.infer_shapes(model, auto_merge=True)  # resolves computed shapes
        del model.graph.value_info[:]
        onnx.checker.check_model(model, full_check=True)
        return model

    def input(self, batch: int = 2, seed: int = 1) -> np.ndarray:
        shape = [batch if isinstance(d, str) else d for d in self.input_shape]
        return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
