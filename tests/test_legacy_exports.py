"""Classic ONNX exports (issue 15, item 5): IR 3 with every initializer listed as a graph input,
opsets 7-9, Sum as the residual add, Upsample, BatchNormalization with `spatial`, weights from
Constant / ConstantOfShape nodes and Reshape shapes computed by Shape → Gather → Concat.

Small versions of the classic zoo architectures (ResNet-50, VGG, SqueezeNet, Inception, DenseNet,
ShuffleNet) must shrink, pass the checker, run in ONNX Runtime with the same output shapes and
keep the interface, IR version and opset; what cannot be analysed is frozen with its reason."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import onnxfuse
from tests.helpers import run
from tests.netbuilder import Net

SHAPE = (1, 3, 16, 16)


def conv_bn_relu(n: Net, x: str, c_in: int, c_out: int, k: int = 3, relu: bool = True, stride: int = 1,
                 **bn_attrs) -> str:
    y = n.bn(n.conv(x, c_in, c_out, k=k, bias=False, stride=stride), c_out, **bn_attrs)
    return n.relu(y) if relu else y


def flatten_by_shape(n: Net, x: str) -> str:
    """x.view(x.size(0), -1) as the TorchScript exporter of that time wrote it."""
    size = n.op("Gather", [n.op("Shape", [x]), n.const(np.array(0, np.int64))], axis=0)
    shape = n.op("Concat", [n.op("Unsqueeze", [size], axes=[0]), n.const(np.array([-1], np.int64))], axis=0)
    return n.op("Reshape", [x, shape])


def resnet(opset: int = 8) -> onnx.ModelProto:
    """ResNet-50 in small: stem, bottlenecks (one with a projection), Sum residuals, BN spatial=1
    before opset 9, GlobalAveragePool, a flatten by computed shape, Gemm."""
    n = Net(SHAPE, opset=opset)
    bn = {"spatial": 1} if opset < 9 else {}
    x = conv_bn_relu(n, "x", 3, 16, **bn)
    x = n.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    c = 16
    for width, out in ((8, 32), (8, 32), (16, 32)):
        y = conv_bn_relu(n, x, c, width, k=1, **bn)
        y = conv_bn_relu(n, y, width, width, **bn)
        y = conv_bn_relu(n, y, width, out, k=1, relu=False, **bn)
        shortcut = x if c == out else conv_bn_relu(n, x, c, out, k=1, relu=False, **bn)
        x, c = n.relu(n.op("Sum", [shortcut, y])), out
    x = flatten_by_shape(n, n.op("GlobalAveragePool", [x]))
    return n.classic_model(n.gemm(x, c, 10))


def vgg() -> onnx.ModelProto:
    n = Net(SHAPE, opset=8)
    x = n.relu(n.conv("x", 3, 8))
    x = n.op("MaxPool", [n.relu(n.conv(x, 8, 8))], kernel_shape=[2, 2], strides=[2, 2])
    x = n.op("MaxPool", [n.relu(n.conv(x, 8, 16))], kernel_shape=[2, 2], strides=[2, 2])
    x = n.op("Flatten", [x], axis=1)
    x = n.op("Dropout", [n.relu(n.gemm(x, 16 * 16, 32))], ratio=0.5)
    return n.classic_model(n.gemm(x, 32, 10))


def fire(n: Net, x: str, c_in: int, squeeze: int, expand: int) -> str:
    s = n.relu(n.conv(x, c_in, squeeze, k=1))
    return n.op("Concat", [n.relu(n.conv(s, squeeze, expand, k=1)), n.relu(n.conv(s, squeeze, expand))], axis=1)


def squeezenet() -> onnx.ModelProto:
    n = Net(SHAPE, opset=7)
    x = n.op("MaxPool", [n.relu(n.conv("x", 3, 16))], kernel_shape=[2, 2], strides=[2, 2])
    x = fire(n, x, 16, 4, 8)
    x = fire(n, x, 16, 4, 8)
    x = n.op("GlobalAveragePool", [n.relu(n.conv(x, 16, 10, k=1))])
    return n.classic_model(n.op("Softmax", [n.op("Flatten", [x], axis=1)], axis=1))


def inception() -> onnx.ModelProto:
    n = Net(SHAPE, opset=8)
    x = conv_bn_relu(n, "x", 3, 16, spatial=1)
    for _ in range(2):
        b1 = conv_bn_relu(n, x, 16, 4, k=1, spatial=1)
        b2 = conv_bn_relu(n, conv_bn_relu(n, x, 16, 4, k=1, spatial=1), 4, 6, spatial=1)
        b3 = conv_bn_relu(n, n.op("AveragePool", [x], kernel_shape=[3, 3], pads=[1] * 4), 16, 6, k=1, spatial=1)
        x = n.op("Concat", [b1, b2, b3], axis=1)
    x = n.op("Flatten", [n.op("GlobalAveragePool", [x])], axis=1)
    return n.classic_model(n.gemm(x, 16, 10))


def densenet() -> onnx.ModelProto:
    """Dense block: BN-Relu-Conv on the concatenation of everything before, growth 4."""
    n = Net(SHAPE, opset=8)
    x, c = n.conv("x", 3, 8), 8
    for _ in range(3):
        y = n.conv(n.relu(n.bn(x, c, spatial=1)), c, 4)
        x, c = n.op("Concat", [x, y], axis=1), c + 4
    x = n.conv(n.relu(n.bn(x, c, spatial=1)), c, 8, k=1)  # transition
    x = flatten_by_shape(n, n.op("GlobalAveragePool", [x]))
    return n.classic_model(n.gemm(x, 8, 10))


def shufflenet() -> onnx.ModelProto:
    """ShuffleNet unit: grouped 1×1, channel shuffle (Reshape-Transpose-Reshape), depthwise 3×3,
    grouped 1×1, Concat with the pooled shortcut."""
    n = Net(SHAPE, opset=8)
    x = conv_bn_relu(n, "x", 3, 16, spatial=1)
    y = conv_bn_relu(n, n.conv(x, 16, 8, k=1, group=2, bias=False), 8, 8, k=1, spatial=1)
    y = n.op("Reshape", [y, n.const(np.array([1, 2, 4, 16, 16], np.int64))])
    y = n.op("Transpose", [y], perm=[0, 2, 1, 3, 4])
    y = n.op("Reshape", [y, n.const(np.array([1, 8, 16, 16], np.int64))])
    y = n.bn(n.conv(y, 8, 8, group=8, bias=False, stride=2), 8, spatial=1)
    y = n.bn(n.conv(y, 8, 16, k=1, group=2, bias=False), 16, spatial=1)
    shortcut = n.op("AveragePool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    x = n.relu(n.op("Concat", [shortcut, y], axis=1))
    x = n.op("Flatten", [n.op("GlobalAveragePool", [conv_bn_relu(n, x, 32, 16, k=1, spatial=1)])], axis=1)
    return n.classic_model(n.gemm(x, 16, 10))


def upsample(opset: int) -> onnx.ModelProto:
    """FPN-style top-down path: a coarse map upsampled ×2 and summed with a lateral 1×1."""
    n = Net(SHAPE, opset=opset)
    fine = n.relu(n.conv("x", 3, 8))
    coarse = n.relu(n.conv(fine, 8, 16, stride=2))
    top = n.conv(coarse, 16, 8, k=1)
    if opset < 9:
        up = n.op("Upsample", [top], scales=[1.0, 1.0, 2.0, 2.0], mode="nearest")
    else:
        up = n.op("Upsample", [top, n.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    merged = n.op("Sum", [up, n.conv(fine, 8, 8, k=1)])
    return n.classic_model(n.conv(n.relu(merged), 8, 4))


def constant_subgraph_weights() -> onnx.ModelProto:
    """Weights from Constant and ConstantOfShape nodes (an all-ones kernel plus a Constant
    offset), a bias from a Constant node, and a Reshape shape from Shape → Gather → Concat."""
    n = Net(SHAPE, opset=9)

    def constant(array):
        return n.op("Constant", [], value=numpy_helper.from_array(np.asarray(array)))

    rng = np.random.default_rng(3)
    ones = n.op("ConstantOfShape", [constant(np.array([8, 3, 3, 3], np.int64))],
                value=numpy_helper.from_array(np.array([1.0], np.float32)))
    w1 = n.op("Mul", [ones, constant(rng.standard_normal((8, 3, 3, 3)).astype(np.float32))])
    x = n.relu(n.op("Conv", ["x", w1, constant(np.zeros(8, np.float32))], pads=[1] * 4))
    w2 = constant(rng.standard_normal((8, 8, 3, 3)).astype(np.float32))
    x = n.relu(n.op("Conv", [x, w2, constant(rng.standard_normal(8).astype(np.float32))], pads=[1] * 4))
    x = flatten_by_shape(n, n.op("MaxPool", [x], kernel_shape=[4, 4], strides=[4, 4]))
    return n.classic_model(n.gemm(x, 8 * 16, 10))


def sum_of_many() -> onnx.ModelProto:
    """Sum of three branches and a per-channel initializer."""
    n = Net(SHAPE, opset=8)
    branches = [n.relu(n.conv("x", 3, 8, k=k)) for k in (1, 3, 5)]
    s = n.op("Sum", [*branches, n.rand(1, 8, 1, 1)])
    return n.classic_model(n.conv(n.relu(s), 8, 4))


MODELS = {
    "resnet-opset8-bn-spatial": lambda: resnet(8),
    "resnet-opset9": lambda: resnet(9),
    "vgg": vgg,
    "squeezenet": squeezenet,
    "inception": inception,
    "densenet": densenet,
    "shufflenet": shufflenet,
    "upsample-opset7": lambda: upsample(7),
    "upsample-opset8": lambda: upsample(8),
    "upsample-opset9": lambda: upsample(9),
    "constant-subgraph-weights": constant_subgraph_weights,
    "sum-of-many": sum_of_many,
}


def _run(model: onnx.ModelProto) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)})


def _interface(model: onnx.ModelProto, kind: str) -> list[str]:
    initializers = {t.name for t in model.graph.initializer}
    return [v.name for v in getattr(model.graph, kind) if v.name not in initializers]


@pytest.mark.parametrize("name", MODELS)
def test_classic_export_shrinks_and_stays_valid(name):
    model = MODELS[name]()
    before = _run(model)  # ONNX Runtime loads and runs the old opset
    compressed, report = onnxfuse.compress(model, 0.5, quiet=True)
    assert report["params_after"] < report["params_before"], report["normalize"]
    onnx.checker.check_model(compressed, full_check=True)
    assert compressed.ir_version == model.ir_version
    assert list(compressed.opset_import) == list(model.opset_import)
    for kind in ("input", "output"):
        assert _interface(compressed, kind) == _interface(model, kind)
    initializers = {t.name for t in compressed.graph.initializer}
    assert initializers <= {v.name for v in compressed.graph.input}  # IR 3: every initializer is an input
    after = _run(compressed)
    assert [a.shape for a in after] == [b.shape for b in before]


@pytest.mark.parametrize("name", MODELS)
def test_classic_export_at_sparsity_0_reproduces(name):
    """Nothing is mis-analysed: every rule and fold at sparsity 0 gives the original outputs."""
    model = MODELS[name]()
    compressed, _ = onnxfuse.compress(model, 0.0, quiet=True, validate=False)
    for a, b in zip(_run(compressed), _run(model)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max()))


def _groups(model: onnx.ModelProto) -> dict:
    return onnxfuse.inspect(model)


def test_classic_resnet_is_fully_analysed():
    """Every group but the image input and the logits is prunable; BN spatial=1 folded; the
    residual Sums couple the stage's channels into one group."""
    info = _groups(resnet(8))
    assert "11 BatchNormalization folded into Conv/Gemm" in info["normalize"]
    frozen = [g["frozen"] for g in info["groups"] if not g["prunable"]]
    assert sorted(frozen) == sorted(["graph input [x]", f"graph output [{resnet(8).graph.output[0].name}]"])
    assert info["prunable_mac_share"] == 1.0
    widths = sorted(g["width"] for g in info["groups"] if g["prunable"])
    assert 32 in widths  # the residual stream: one group over the three blocks


def test_classic_export_from_a_file(tmp_path):
    """The IR-3 file as a zoo download gives it: inspect and compress read it from disk."""
    path = tmp_path / "resnet_ir3.onnx"
    onnx.save(resnet(8), path)
    assert onnxfuse.inspect(str(path))["prunable_mac_share"] == 1.0
    compressed, report = onnxfuse.compress(str(path), 0.5, quiet=True)
    assert report["params_after"] < report["params_before"] and compressed.ir_version == 3


def test_constant_subgraphs_fold_to_initializers():
    info = _groups(constant_subgraph_weights())
    assert any("Constant nodes turned into initializers" in line for line in info["normalize"])
    assert any("constant inputs folded" in line for line in info["normalize"])
    assert info["prunable_mac_share"] == 1.0


def test_batchnorm_spatial_0_is_frozen_never_folded():
    """spatial=0 keeps statistics per channel and position ((C, H, W) parameters): neither
    folded nor pruned, with the reason; the rest of the model still shrinks."""
    n = Net(SHAPE, opset=7)
    y = n.conv("x", 3, 8)
    params = [n.const(n.rng.uniform(0.5, 1.5, (8, 16, 16)).astype(np.float32)) for _ in range(4)]
    y = n.relu(n.op("BatchNormalization", [y, *params], spatial=0, epsilon=1e-3))
    model = n.classic_model(n.conv(n.relu(n.conv(y, 8, 8)), 8, 4))
    info = _groups(model)
    assert not any("BatchNormalization folded" in line for line in info["normalize"])
    reasons = [g.get("frozen", "") for g in info["groups"] if g["width"] == 8 and not g["prunable"]]
    assert reasons and all("spatial=0" in r for r in reasons)
    assert any(g["prunable"] for g in info["groups"])
    compressed, report = onnxfuse.compress(model, 0.5, quiet=True)
    assert report["params_after"] < report["params_before"]
    bn = next(node for node in compressed.graph.node if node.op_type == "BatchNormalization")
    kept = {t.name: numpy_helper.to_array(t).shape for t in compressed.graph.initializer}
    assert all(kept[p] == (8, 16, 16) for p in bn.input[1:])
    assert [a.shape for a in _run(compressed)] == [a.shape for a in _run(model)]


def test_upsample_over_channels_is_frozen():
    """An Upsample whose scales touch the channel axis is not guessed at."""
    n = Net(SHAPE, opset=8)
    y = n.relu(n.conv("x", 3, 8))
    y = n.op("Upsample", [y], scales=[1.0, 2.0, 1.0, 1.0], mode="nearest")
    model = n.classic_model(n.conv(y, 16, 4))
    info = _groups(model)
    reasons = [g.get("frozen", "") for g in info["groups"] if not g["prunable"]]
    assert any("scales the channel axis by 2" in r for r in reasons), reasons


def test_channel_shuffle_prunes_whole_shuffle_groups():
    """(N, 8) → (N, 2, 4) → transpose → (N, 8): shuffle group g is input channels 4g … 4g+3 and output
    channels g, g+2, …; a group of width 2 keeps or drops them whole (the 4 inside stay whole), and
    both Reshape targets follow."""
    model = shufflenet()
    info = _groups(model)
    assert [g["frozen"] for g in info["groups"] if not g["prunable"]] == ["graph input [x]", "graph output [gemm75]"]
    assert any(g["prunable"] and g["width"] == 2 for g in info["groups"])
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    same, _ = onnxfuse.compress(model, 0.0, validate=False, quiet=True)
    np.testing.assert_allclose(run(same, x)[0], run(model, x)[0], atol=1e-5)
    small, report = onnxfuse.compress(model, 0.5, validate=False, quiet=True)
    onnx.checker.check_model(small, full_check=True)
    assert [g["kept"] for g in report["groups"] if g["prunable"] and g["width"] == 2] == [1]
    assert run(small, x)[0].shape == (1, 10)
