"""One tiny model per op rule of the op table. For each: the groups `inspect` finds, sparsity 0
reproduces the outputs, pruning channels whose weights are exactly zero reproduces the outputs,
and sparsity 0.5 gives a checked model with the same output shape."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

import onnxfuse
from onnxfuse.errors import OnnxfuseError
from tests.helpers import run, zero_dropped_channels
from tests.netbuilder import Net


def conv_chain():
    n = Net()
    y = n.relu(n.conv("x", 3, 8))
    y = n.relu(n.conv(y, 8, 8, k=1))
    return n, n.conv(y, 8, 4), [8, 8]


def residual():
    n = Net()
    a = n.relu(n.conv("x", 3, 8))
    b = n.conv(n.relu(n.conv(a, 8, 8)), 8, 8)
    y = n.relu(n.op("Add", [a, b]))
    return n, n.conv(y, 8, 4), [8, 8]


def depthwise():
    n = Net()
    y = n.relu(n.conv("x", 3, 8))
    y = n.relu(n.conv(y, 8, 8, group=8))
    return n, n.conv(y, 8, 4), [8]


def depthwise_multiplier():
    n = Net()
    y = n.conv("x", 3, 4)
    y = n.relu(n.conv(y, 4, 8, group=4))
    return n, n.conv(y, 8, 4), [4]


def batchnorm():
    n = Net()
    y = n.relu(n.bn(n.conv("x", 3, 8, bias=False), 8))
    return n, n.conv(y, 8, 4), [8]


def gemm_trans_b():
    n = Net(input_shape=("N", 16))
    y = n.relu(n.gemm("x", 16, 12, trans_b=1))
    return n, n.gemm(y, 12, 4, trans_b=0), [12]


def matmul_add():
    n = Net(input_shape=("N", 5, 16))
    y = n.op("MatMul", ["x", n.rand(16, 12)])
    y = n.relu(n.op("Add", [y, n.rand(12, scale=0.1)]))
    return n, n.op("MatMul", [y, n.rand(12, 4)]), [12]


def activations():
    n = Net()
    y = n.conv("x", 3, 8)
    y = n.op("Clip", [y, n.const(np.float32(-2)), n.const(np.float32(2))])
    y = n.op("Sigmoid", [y])
    y = n.op("HardSigmoid", [n.conv(y, 8, 8)])
    y = n.op("HardSwish", [n.conv(y, 8, 8)])
    y = n.op("LeakyRelu", [y], alpha=0.1)
    y = n.op("Tanh", [y])
    y = n.op("PRelu", [n.conv(y, 8, 8), n.rand(8, 1, 1)])
    return n, n.conv(y, 8, 4), [8, 8, 8, 8]


def broadcast_constants():
    n = Net()
    y = n.conv("x", 3, 8)
    y = n.op("Add", [y, n.rand(1, 8, 1, 1)])
    y = n.op("Mul", [y, n.const(np.float32(1.5))])
    y = n.op("Sub", [y, n.rand(8, 1, 1)])
    y = n.op("Div", [y, n.const(np.full((1, 8, 1, 1), 2.0, np.float32))])
    return n, n.conv(n.relu(y), 8, 4), [8]


def squeeze_excite():
    n = Net()
    s = n.relu(n.conv("x", 3, 8))
    g = n.op("GlobalAveragePool", [s])
    g = n.op("Sigmoid", [n.conv(n.relu(n.conv(g, 8, 2, k=1)), 2, 8, k=1)])
    return n, n.conv(n.op("Mul", [s, g]), 8, 4), [2, 8]


def squeeze_excite_reduce_mean():
    n = Net()
    s = n.relu(n.conv("x", 3, 8))
    g = n.op("ReduceMean", [s], axes=[2, 3], keepdims=1)
    g = n.op("HardSigmoid", [n.conv(n.relu(n.conv(g, 8, 4, k=1)), 4, 8, k=1)])
    return n, n.conv(n.op("Mul", [g, s]), 8, 4), [4, 8]


def pools_and_gap_head():
    n = Net()
    y = n.op("MaxPool", [n.relu(n.conv("x", 3, 8))], kernel_shape=[2, 2], strides=[2, 2])
    y = n.op("AveragePool", [y], kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 1, 1])
    y = n.op("GlobalAveragePool", [n.relu(n.conv(y, 8, 8))])
    y = n.op("Flatten", [y], axis=1)
    return n, n.gemm(y, 8, 10), [8, 8]


def flatten_head():
    n = Net()
    y = n.op("MaxPool", [n.relu(n.conv("x", 3, 8))], kernel_shape=[2, 2], strides=[2, 2])
    return n, n.gemm(n.op("Flatten", [y], axis=1), 8 * 16, 10), [8]


def reshape_head():
    n = Net()
    y = n.op("MaxPool", [n.relu(n.conv("x", 3, 8))], kernel_shape=[2, 2], strides=[2, 2])
    y = n.op("Reshape", [y, n.const(np.array([-1, 128], np.int64))])
    return n, n.gemm(y, 128, 10), [8]


def transpose_reshape_head():
    n = Net()
    y = n.op("MaxPool", [n.relu(n.conv("x", 3, 8))], kernel_shape=[2, 2], strides=[2, 2])
    y = n.op("Transpose", [y], perm=[0, 2, 3, 1])
    y = n.op("Reshape", [y, n.const(np.array([0, -1], np.int64))])
    return n, n.gemm(y, 128, 10), [8]


def squeeze_head():
    n = Net()
    y = n.op("GlobalAveragePool", [n.relu(n.conv("x", 3, 8))])
    y = n.op("Squeeze", [y, n.const(np.array([2, 3], np.int64))])
    y = n.op("Unsqueeze", [y, n.const(np.array([1], np.int64))])
    y = n.op("Squeeze", [y, n.const(np.array([1], np.int64))])
    return n, n.gemm(y, 8, 10), [8]


def concat():
    n = Net()
    a = n.relu(n.conv("x", 3, 4))
    b = n.relu(n.conv("x", 3, 6))
    y = n.op("Concat", [a, b], axis=1)
    return n, n.conv(n.relu(y), 10, 4), [4, 6]


def split():
    n = Net()
    a, b = n.op("Split", [n.conv("x", 3, 8), n.const(np.array([3, 5], np.int64))], n_out=2, axis=1)
    y = n.op("Add", [n.conv(n.relu(a), 3, 4), n.conv(n.relu(b), 5, 4)])
    return n, y, [3, 5]


def split_equal_opset18():
    n = Net(opset=18)
    a, b = n.op("Split", [n.conv("x", 3, 8)], n_out=2, axis=1, num_outputs=2)
    y = n.op("Add", [n.conv(n.relu(a), 4, 4), n.conv(n.relu(b), 4, 4)])
    return n, y, [4, 4]


def slice_channels():
    n = Net()
    y = n.relu(n.conv("x", 3, 8))
    s = n.op("Slice", [y, n.const(np.array([2], np.int64)), n.const(np.array([6], np.int64)),
                       n.const(np.array([1], np.int64))])
    out = n.op("Add", [n.conv(s, 4, 4), n.conv(y, 8, 4)])
    return n, out, [4, 4]  # channels 2..5 and the others (0, 1, 6, 7), which are interchangeable


def pad_resize_dropout():
    n = Net()
    y = n.relu(n.conv("x", 3, 8))
    y = n.op("Pad", [y, n.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))])
    y = n.op("Resize", [y, "", n.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    y = n.op("Dropout", [y])
    return n, n.conv(y, 8, 4), [8]


def grouped_conv():
    """group=2: input channels l and l + 4 go together (the weight's per-group input axis), and so
    do output channels m and m + 6; the group count stays 2."""
    n = Net()
    y = n.relu(n.conv("x", 3, 8))
    y = n.relu(n.conv(y, 8, 12, group=2))
    return n, n.conv(y, 12, 4), [4, 6]


def resize_to_sizes():
    n = Net()
    y = n.relu(n.conv("x", 3, 8))
    y = n.op("Resize", [y, "", "", n.const(np.array([1, 8, 16, 16], np.int64))], mode="nearest")
    return n, n.conv(y, 8, 4), [8]


def conv_transpose():
    n = Net()
    y = n.relu(n.conv("x", 3, 8))
    y = n.op("ConvTranspose", [y, n.rand(8, 6, 2, 2), n.rand(6, scale=0.1)], strides=[2, 2])
    return n, n.conv(n.relu(y), 6, 4), [6, 8]


def cast_weights():
    """fp16 weights stored with a Cast to float (mixed-precision exports): folded, then pruned."""
    n = Net()
    w = n.op("Cast", [n.const((n.rng.standard_normal((8, 3, 3, 3)) * 0.5).astype(np.float16))], to=1)
    y = n.relu(n.op("Conv", ["x", w, n.rand(8, scale=0.1)], pads=[1, 1, 1, 1]))
    return n, n.conv(y, 8, 4), [8]


CASES = [conv_chain, residual, depthwise, depthwise_multiplier, batchnorm, gemm_trans_b, matmul_add,
         activations, broadcast_constants, squeeze_excite, squeeze_excite_reduce_mean, pools_and_gap_head,
         flatten_head, reshape_head, transpose_reshape_head, squeeze_head, concat, split, split_equal_opset18,
         slice_channels, pad_resize_dropout, resize_to_sizes, grouped_conv, conv_transpose, cast_weights]


def _prunable_widths(model, fold_bn=True):
    return sorted(g["width"] for g in onnxfuse.inspect(model, fold_bn=fold_bn)["groups"] if g["prunable"])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_groups(case):
    net, out, widths = case()
    assert _prunable_widths(net.model(out)) == sorted(widths)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_sparsity_zero_reproduces_outputs(case):
    net, out, _ = case()
    model, x = net.model(out), net.input()
    compressed, _ = onnxfuse.compress(model, 0.0, validate=False, quiet=True)
    np.testing.assert_allclose(run(compressed, x)[0], run(model, x)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fold_bn", [True, False])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_pruning_zero_channels_is_exact(case, fold_bn):
    net, out, _ = case()
    oracle = zero_dropped_channels(net.model(out), 0.5, fold_bn=fold_bn)
    x = net.input()
    compressed, report = onnxfuse.compress(oracle, 0.5, fold_bn=fold_bn, validate=False, quiet=True)
    assert report["macs_after"] < report["macs_before"]
    np.testing.assert_allclose(run(compressed, x)[0], run(oracle, x)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_half_sparsity_gives_a_valid_model(case):
    net, out, _ = case()
    model, x = net.model(out), net.input(batch=3)
    compressed, _ = onnxfuse.compress(model, 0.5, validate=False, quiet=True)
    onnx.checker.check_model(compressed, full_check=True)
    assert run(compressed, x)[0].shape == run(model, x)[0].shape


# --- structures that must stay frozen -------------------------------------------------------


def unknown_op():
    n = Net()
    y = n.op("LRN", [n.relu(n.conv("x", 3, 8))], size=3)
    return n, n.conv(y, 8, 4), "unsupported op LRN"


def softmax_over_channels():
    n = Net()
    y = n.op("Softmax", [n.conv("x", 3, 8)], axis=1)
    return n, n.conv(y, 8, 4), "Softmax normalises over axis 1"


def pad_on_channels():
    n = Net()
    y = n.op("Pad", [n.conv("x", 3, 8), n.const(np.array([0, 1, 0, 0, 0, 1, 0, 0], np.int64))])
    return n, n.conv(y, 10, 4), "Pad pads the channel axis"


def pad_computed():
    """Pads computed at run time (here from the dynamic batch size): which axes they pad is unknown."""
    n = Net()
    batch = n.op("Gather", [n.op("Shape", ["x"]), n.const(np.int64(0))])
    pads = n.op("Add", [n.op("Mul", [batch, n.const(np.zeros(8, np.int64))]),
                        n.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))])
    y = n.op("Pad", [n.relu(n.conv("x", 3, 8)), pads])
    return n, n.conv(y, 8, 4, k=1), "Pad with computed pads"


@pytest.mark.parametrize("case", [unknown_op, softmax_over_channels, pad_on_channels, pad_computed],
                         ids=lambda c: c.__name__)
def test_unknown_structure_is_frozen_and_untouched(case):
    net, out, reason = case()
    model, x = net.model(out), net.input()
    groups = onnxfuse.inspect(model)["groups"]
    frozen = [g for g in groups if not g["prunable"] and reason in g["frozen"]]
    assert frozen, [g.get("frozen") for g in groups]
    compressed, _ = onnxfuse.compress(model, 0.5, validate=False, quiet=True)
    before = {t.name: t.dims for t in model.graph.initializer}
    after = {t.name: t.dims for t in compressed.graph.initializer}
    for g in frozen:  # the frozen producers keep every output channel
        for node in model.graph.node:
            if node.name in g["producers"] and node.input[1] in after:
                assert after[node.input[1]][0] == before[node.input[1]][0]
    assert run(compressed, x)[0].shape == run(model, x)[0].shape


def test_layernorm_over_channels_prunes_with_its_parameters():
    """A channels-last MLP block: MatMul → LayerNormalization(axis=-1) → MatMul. LayerNorm's
    statistics change when channels go (not exact, as for any activation); it must stay valid
    and sparsity 0 must reproduce the outputs."""
    n = Net(input_shape=("N", 5, 16), opset=17)
    y = n.op("MatMul", ["x", n.rand(16, 12)])
    y = n.op("LayerNormalization", [y, n.const(np.ones(12, np.float32)), n.rand(12, scale=0.1)], axis=-1)
    model = n.model(n.op("MatMul", [n.relu(y), n.rand(12, 4)]))
    assert [g["width"] for g in onnxfuse.inspect(model)["groups"] if g["prunable"]] == [12]
    x = n.input()
    same, _ = onnxfuse.compress(model, 0.0, validate=False, quiet=True)
    np.testing.assert_allclose(run(same, x)[0], run(model, x)[0], atol=1e-5)
    half, _ = onnxfuse.compress(model, 0.5, method="fuse", validate=False, quiet=True)
    onnx.checker.check_model(half, full_check=True)
    assert run(half, x)[0].shape == run(model, x)[0].shape


def test_quantized_weights_stay_frozen_and_the_model_unchanged():
    """QDQ: a Conv whose weights come out of DequantizeLinear (and activations through Q/DQ) is
    never shrunk; with nothing else to prune the output is the input model, unchanged."""
    n = Net(opset=13)
    weights = n.const(np.random.default_rng(0).integers(-100, 100, (8, 3, 3, 3)).astype(np.int8))
    w = n.op("DequantizeLinear", [weights, n.const(np.float32(0.01))])
    q = n.op("QuantizeLinear", ["x", n.const(np.float32(0.05)), n.const(np.uint8(128))])
    x = n.op("DequantizeLinear", [q, n.const(np.float32(0.05)), n.const(np.uint8(128))])
    y = n.relu(n.op("Conv", [x, w], pads=[1, 1, 1, 1]))
    model = n.model(n.conv(y, 8, 4))
    groups = onnxfuse.inspect(model)["groups"]
    assert not any(g["prunable"] for g in groups)
    assert any("DequantizeLinear" in g["frozen"] or "computed weights" in g["frozen"] for g in groups)
    compressed, report = onnxfuse.compress(model, 0.5, validate=False, quiet=True)
    assert compressed.SerializeToString() == model.SerializeToString()


@pytest.mark.parametrize("integer_op", ["QLinearConv", "ConvInteger"])
def test_integer_convolutions_freeze_the_groups_they_touch(integer_op):
    """A float model with one integer convolution in the middle: the groups that feed or read it
    are frozen with the op named, the others still shrink, and the result runs."""
    n = Net(opset=13)
    a = n.relu(n.conv(n.relu(n.conv("x", 3, 8)), 8, 8))  # groups: conv1 → conv2 (free), conv2 → integer op
    q = n.op("QuantizeLinear", [a, n.const(np.float32(0.05)), n.const(np.uint8(0))])
    w = n.const(np.random.default_rng(0).integers(-100, 100, (8, 8, 3, 3)).astype(np.int8))
    if integer_op == "QLinearConv":
        y = n.op("QLinearConv", [q, n.const(np.float32(0.05)), n.const(np.uint8(0)), w, n.const(np.float32(0.01)),
                                 n.const(np.int8(0)), n.const(np.float32(0.1)), n.const(np.uint8(128))], pads=[1] * 4)
        y = n.op("DequantizeLinear", [y, n.const(np.float32(0.1)), n.const(np.uint8(128))])
    else:
        y = n.op("Cast", [n.op("ConvInteger", [q, w, n.const(np.uint8(0))], pads=[1] * 4)], to=TensorProto.FLOAT)
    model = n.model(n.conv(n.relu(y), 8, 4))
    groups = onnxfuse.inspect(model)["groups"]
    frozen = " ".join(g["frozen"] for g in groups if not g["prunable"])
    assert integer_op in frozen or "QuantizeLinear" in frozen, frozen
    assert [g["width"] for g in groups if g["prunable"]] == [8]  # only conv1 → conv2
    half, report = onnxfuse.compress(model, 0.5, validate=False, quiet=True)
    onnx.checker.check_model(half, full_check=True)
    x = n.input(batch=2)
    assert run(half, x)[0].shape == run(model, x)[0].shape
    assert report["macs_after"] < report["macs_before"]


# --- group normalisation: pruned per group (channel l of every group), the group count stays ---
# Its statistics cover the remaining channels, so the zero-channel oracle does not apply; the
# oracle is the same network built directly with the kept channels.

KEPT = [2, 3, 6, 7]  # of 8 channels in 2 groups: per-group channels 0 and 1 (zero weights) go


def _group_norm_net(opset, w1, b1, scale, bias, w2):
    n = Net(opset=opset)
    y = n.op("Conv", ["x", n.const(w1), n.const(b1)], pads=[1, 1, 1, 1])
    y = n.op("GroupNormalization", [y, n.const(scale), n.const(bias)], num_groups=2, epsilon=1e-5)
    return n, _declared_model(n, n.op("Conv", [n.relu(y), n.const(w2)], pads=[1, 1, 1, 1]), ["N", 4, 8, 8])


def _declared_model(n: Net, out: str, shape, domains=()) -> onnx.ModelProto:
    """Net's graph with the output's shape declared (ONNX infers none through GroupNormalization-21
    or com.microsoft ops) and extra opset domains."""
    graph = onnx.helper.make_graph(
        n.nodes, "net", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(n.input_shape))],
        [onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, shape)], n.inits)
    opsets = [onnx.helper.make_opsetid("", n.opset)] + [onnx.helper.make_opsetid(d, 1) for d in domains]
    model = onnx.helper.make_model(graph, opset_imports=opsets, ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_group_normalization_opset_18_is_refused_as_the_checker_refuses_it():
    """GroupNormalization-18 (scale and bias per group) is deprecated: onnx.checker rejects it
    (ONNX Runtime still runs it), so onnxfuse reports an invalid model instead of guessing."""
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=2)], "gn",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, 4, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 4, 4])],
        [onnx.numpy_helper.from_array(np.ones(2, np.float32), "s"),
         onnx.numpy_helper.from_array(np.zeros(2, np.float32), "b")]),
        opset_imports=[onnx.helper.make_opsetid("", 18)], ir_version=10)
    with pytest.raises(OnnxfuseError, match="deprecated"):
        onnxfuse.compress(model, 0.5, quiet=True)


@pytest.mark.parametrize("opset", [21])  # scale and bias per channel
def test_group_normalization_op_prunes_per_group(opset):
    rng = np.random.default_rng(0)
    w1, b1, w2 = (rng.standard_normal(s).astype(np.float32) for s in ((8, 3, 3, 3), (8,), (4, 8, 3, 3)))
    affine = 8 if opset >= 21 else 2
    scale, bias = rng.uniform(0.5, 1.5, affine).astype(np.float32), rng.standard_normal(affine).astype(np.float32)
    dropped = np.setdiff1d(np.arange(8), KEPT)
    w1[dropped], w2[:, dropped] = 0, 0
    if opset >= 21:
        scale[dropped] = 0
    net, model = _group_norm_net(opset, w1, b1, scale, bias, w2)
    assert _prunable_widths(model) == [4]
    x = net.input()
    same, _ = onnxfuse.compress(model, 0.0, validate=False, quiet=True)
    np.testing.assert_allclose(run(same, x)[0], run(model, x)[0], atol=1e-5)
    pruned, report = onnxfuse.compress(model, 0.5, validate=False, quiet=True)
    onnx.checker.check_model(pruned, full_check=True)
    assert report["macs_after"] < 0.6 * report["macs_before"]
    sliced = (scale[KEPT], bias[KEPT]) if opset >= 21 else (scale, bias)
    _, oracle = _group_norm_net(opset, w1[KEPT], b1[KEPT], *sliced, w2[:, KEPT])
    np.testing.assert_allclose(run(pruned, x)[0], run(oracle, x)[0], atol=1e-5)
    fused, _ = onnxfuse.compress(model, 0.5, method="fuse", validate=False, quiet=True)
    assert run(fused, x)[0].shape == run(model, x)[0].shape


def _torch_group_norm_net(width):
    import torch

    return torch.nn.Sequential(torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.GroupNorm(2, width),
                               torch.nn.ReLU(), torch.nn.Conv2d(width, 4, 3, padding=1))


def test_torchscript_group_norm_prunes_per_group():
    """nn.GroupNorm as the TorchScript exporter writes it: Reshape (N, G, -1) →
    InstanceNormalization → Reshape back → per-channel Mul and Add."""
    import torch

    from tests.helpers import export

    torch.manual_seed(0)
    full, small = _torch_group_norm_net(8), _torch_group_norm_net(4)
    dropped = np.setdiff1d(np.arange(8), KEPT)
    with torch.no_grad():
        full[1].weight.uniform_(0.5, 1.5)
        full[1].bias.normal_()
        full[0].weight[dropped], full[1].weight[dropped], full[3].weight[:, dropped] = 0, 0, 0
        for a, b in ((full[0].weight, small[0].weight), (full[0].bias, small[0].bias),
                     (full[1].weight, small[1].weight), (full[1].bias, small[1].bias)):
            b.copy_(a[KEPT])
        small[3].weight.copy_(full[3].weight[:, KEPT])
        small[3].bias.copy_(full[3].bias)
    x = torch.randn(2, 3, 8, 8)
    model = export(full, x)
    assert "InstanceNormalization" in {n.op_type for n in model.graph.node}
    assert _prunable_widths(model) == [4]
    same, _ = onnxfuse.compress(model, 0.0, validate=False, quiet=True)
    np.testing.assert_allclose(run(same, x.numpy())[0], run(model, x.numpy())[0], atol=1e-5)
    pruned, _ = onnxfuse.compress(model, 0.5, validate=False, quiet=True)
    onnx.checker.check_model(pruned, full_check=True)
    np.testing.assert_allclose(run(pruned, x.numpy())[0], small.eval()(x).detach().numpy(), atol=1e-5)
    fused, _ = onnxfuse.compress(model, 0.5, method="fuse", validate=False, quiet=True)
    assert run(fused, x.numpy())[0].shape == (2, 4, 8, 8)


# --- ONNX Runtime's fused ops (com.microsoft FusedConv / FusedGemm), as its optimiser saves them ---


def _ort_optimized(model: onnx.ModelProto, tmp_path) -> onnx.ModelProto:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return onnx.load(options.optimized_model_filepath)


def test_ort_fused_conv_and_gemm_prune_like_conv_and_gemm(tmp_path):
    import torch

    from tests.helpers import export

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = (torch.nn.Conv2d(i, 8, 3, padding=1) for i in (3, 8, 8))
            self.fc, self.head = torch.nn.Linear(8, 6), torch.nn.Linear(6, 4)

        def forward(self, x):
            a = torch.relu(self.a(x))
            y = torch.relu(self.c(torch.relu(self.b(a))) + a)
            return self.head(torch.relu(self.fc(y.mean((2, 3)))))

    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    model = _ort_optimized(export(Net(), torch.from_numpy(x)), tmp_path)
    ops = {n.op_type for n in model.graph.node if n.domain == "com.microsoft"}
    assert ops == {"FusedConv", "FusedGemm"}
    report = onnxfuse.inspect(model)
    assert sorted(g["width"] for g in report["groups"] if g["prunable"]) == [6, 8, 8]
    assert report["prunable_mac_share"] == 1.0
    same, _ = onnxfuse.compress(model, 0.0, validate=False, quiet=True)
    np.testing.assert_allclose(run(same, x)[0], run(model, x)[0], atol=1e-4)
    oracle = zero_dropped_channels(model, 0.5)
    pruned, report = onnxfuse.compress(oracle, 0.5, validate=False, quiet=True)
    assert report["macs_after"] < 0.5 * report["macs_before"]
    assert {n.op_type for n in pruned.graph.node if n.domain == "com.microsoft"} == ops
    np.testing.assert_allclose(run(pruned, x)[0], run(oracle, x)[0], atol=1e-5)
    fused, _ = onnxfuse.compress(model, 0.5, method="fuse", validate=False, quiet=True)
    onnx.checker.check_model(fused, full_check=True)
    assert run(fused, x)[0].shape == (2, 4)


def test_fused_conv_with_z_couples_it_like_a_residual():
    """FusedConv(x, W, B, Z) = activation(conv(x) + B + Z): Z's channels are the output's."""
    n = Net()
    a = n.relu(n.conv("x", 3, 8))
    y = n.op("FusedConv", [n.relu(n.conv(a, 8, 8)), n.rand(8, 8, 3, 3), n.rand(8, scale=0.1), a],
             domain="com.microsoft", activation="Relu", pads=[1, 1, 1, 1])
    model = _declared_model(n, n.conv(y, 8, 4), ["N", 4, 8, 8], ["com.microsoft"])
    assert _prunable_widths(model) == [8, 8]  # the residual group (a, Z, y) and the inner conv's
    x = n.input()
    same, _ = onnxfuse.compress(model, 0.0, validate=False, quiet=True)
    np.testing.assert_allclose(run(same, x)[0], run(model, x)[0], atol=1e-5)
    oracle = zero_dropped_channels(model, 0.5)
    pruned, _ = onnxfuse.compress(oracle, 0.5, validate=False, quiet=True)
    np.testing.assert_allclose(run(pruned, x)[0], run(oracle, x)[0], atol=1e-5)
