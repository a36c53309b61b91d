"""Tiny hand-built models and the bad-input assertion shared by several test files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import run_cli
from tests.netbuilder import Net


def _conv(name, x, y, cin, cout, k, rng):
    w = numpy_helper.from_array(rng.standard_normal((cout, cin, k, k)).astype(np.float32), f"{name}.w")
    b = numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), f"{name}.b")
    node = helper.make_node("Conv", [x, w.name, b.name], [y], name=name, pads=[k // 2] * 4)
    return node, [w, b]


def conv_relu_conv() -> onnx.ModelProto:
    """x (N,3,8,8) -> Conv(8) -> Relu -> Conv(4) -> y (N,4,8,8): one prunable group of width 8."""
    rng = np.random.default_rng(0)
    c1, i1 = _conv("conv1", "x", "h", 3, 8, 3, rng)
    c2, i2 = _conv("conv2", "r", "y", 8, 4, 1, rng)
    relu = helper.make_node("Relu", ["h"], ["r"], name="relu")
    graph = helper.make_graph(
        [c1, relu, c2], "crc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], i1 + i2)
    return _finish(graph)


def two_inputs() -> onnx.ModelProto:
    """Image `a` (N,3,8,8) through Conv-Relu-Conv, plus an int64 input `ids` (N,4) cast to float."""
    rng = np.random.default_rng(1)
    c1, i1 = _conv("conv1", "a", "h", 3, 8, 3, rng)
    c2, i2 = _conv("conv2", "r", "y", 8, 4, 1, rng)
    relu = helper.make_node("Relu", ["h"], ["r"], name="relu")
    cast = helper.make_node("Cast", ["ids"], ["z"], name="cast", to=TensorProto.FLOAT)
    graph = helper.make_graph(
        [c1, relu, c2, cast], "two",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3, 8, 8]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])], i1 + i2)
    return _finish(graph)


def single_relu() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")], "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])])
    return _finish(graph)


def single_conv() -> onnx.ModelProto:
    conv, inits = _conv("conv", "x", "y", 3, 4, 3, np.random.default_rng(2))
    graph = helper.make_graph(
        [conv], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], inits)
    return _finish(graph)


def _finish(graph) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def snapshot(root: Path) -> dict[str, str | None]:
    """Every path under `root` with the hash of its bytes (None for folders and dangling links)."""
    return {str(p.relative_to(root)): digest(p) for p in sorted(root.rglob("*"))}


def assert_user_error(argv: list, capsys, root: Path, match: str | None = None) -> str:
    """Exit 2, exactly one stderr line `error: ...`, nothing on stdout, and the folder unchanged:
    no file written or removed (no output, no report, no temporary file), no byte of any input changed."""
    before = snapshot(root)
    code, out, err = run_cli(argv, capsys)
    assert "Traceback" not in out + err
    assert code == 2, (code, err)
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    assert lines[0].startswith("error: "), err
    assert out == ""
    assert snapshot(root) == before
    if match is not None:
        assert match in lines[0], lines[0]
    return lines[0]


def thin_mobile(seed: int = 0) -> onnx.ModelProto:
    """A MobileNetV2-style network as TensorFlow converters write it: "same" pads computed per stride
    into explicit Pad nodes, depthwise convs, ReLU6 as Clip, BN, a residual, and 96-wide expanded
    groups read by 1×1 projections (the widest consumer has 97 columns with its bias)."""
    net = Net(("N", 3, 16, 16), seed=seed)

    def pad(x, top_left, bottom_right):
        pads = [0, 0, top_left, top_left, 0, 0, bottom_right, bottom_right]
        return net.op("Pad", [x, net.const(np.array(pads, np.int64))])

    def relu6(x):
        return net.op("Clip", [x, net.const(np.float32(0.0)), net.const(np.float32(6.0))])

    def conv(x, c_in, c_out, k=1, stride=1, group=1):
        fan_in = c_in // group * k * k
        weights = net.rng.standard_normal((c_out, fan_in)) * np.sqrt(2.0 / fan_in)
        if c_out > 4 * c_in and group == 1:  # expansions are redundant, as in trained networks: rank c_in/2 + noise
            mix = net.rng.standard_normal((c_out, c_in // 2)) / np.sqrt(c_in // 2)
            weights = mix @ weights[: c_in // 2] + 0.1 * weights
        weights = net.const(weights.reshape(c_out, c_in // group, k, k).astype(np.float32), "w")
        y = net.op("Conv", [x, weights, net.rand(c_out, scale=0.1)], group=group, strides=[stride, stride],
                   pads=[0, 0, 0, 0], kernel_shape=[k, k])
        return net.bn(y, c_out)

    def block(x, c_in, c_out, stride):
        y = relu6(conv(x, c_in, 96))
        y = pad(y, 0, 1) if stride == 2 else pad(y, 1, 1)
        y = relu6(conv(y, 96, 96, k=3, stride=stride, group=96))
        y = conv(y, 96, c_out)
        return net.op("Add", [x, y]) if stride == 1 and c_in == c_out else y

    y = relu6(conv(pad("x", 0, 1), 3, 16, k=3, stride=2))
    y = block(block(y, 16, 16, 1), 16, 24, 2)
    y = net.op("Flatten", [net.op("GlobalAveragePool", [y])])
    model = net.model(net.gemm(y, 24, 10))
    return _balanced_classes(model)


def _balanced_classes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shift the classifier's bias by the mean logit over typical inputs, so that the top class
    depends on the input (random weights otherwise let one class win almost everywhere)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"x": thin_mobile_inputs(512, seed=99)})[0]
    bias = next(t for t in model.graph.initializer if t.name == model.graph.node[-1].input[2])
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) - logits.mean(0), bias.name))
    return model


def thin_mobile_inputs(n: int, seed: int) -> np.ndarray:
    """Inputs for thin_mobile whose predictions vary: noise plus a per-sample colour and row pattern."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 3, 16, 16)) + 2 * rng.standard_normal((n, 3, 1, 1))
            + rng.standard_normal((n, 1, 16, 1))).astype(np.float32)
