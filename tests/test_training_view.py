"""The torch view (onnxfuse/training/view.py): it reproduces ONNX Runtime on the zoo and on one small
graph per op, ties shared weights, follows BN and Dropout modes, refuses unknown ops when built, and
writes trained values back by name (untrained: byte-identical)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxfuse.errors import OnnxfuseError
from tests.netbuilder import Net

torch = pytest.importorskip("torch")
from onnxfuse.training.view import TorchView, write_back  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ZOO = sorted((ROOT / "models").glob("*_fmnist_*.onnx"))
EVAL = ROOT / "models" / "data" / "fmnist_eval2000.npz"
TOL = 1e-5  # of the output's max |value|; ORT's own noise between optimisation levels is ~3e-7 here


def _images(n: int = 8) -> np.ndarray:
    with np.load(EVAL) as z:
        return z["input"][:n].astype(np.float32)  # uint8 pixels: the models normalise inside


def _ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _view_out(view: TorchView, feeds: dict) -> list[np.ndarray]:
    with torch.no_grad():
        return [y.numpy() for y in view(**{k: torch.from_numpy(v) for k, v in feeds.items()})]


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    if a.dtype.kind != "f":
        return 0.0 if np.array_equal(a, b) else np.inf
    return float(np.abs(a.astype(np.float64) - b).max() / max(np.abs(b).max(), 1e-12)) if a.size else 0.0


def _assert_matches_ort(view: TorchView, model: onnx.ModelProto, feeds: dict, tol: float = TOL) -> None:
    expected = _ort(model, feeds)
    got = _view_out(view, feeds)
    assert [g.shape for g in got] == [e.shape for e in expected]
    errors = [_rel(g, e) for g, e in zip(got, expected)]
    assert max(errors) <= tol, errors


def _sgd_step(view: TorchView, feeds: dict, lr: float = 0.05) -> None:
    params = [p for p in view.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr)
    outputs = view(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    sum(y.float().square().mean() for y in outputs).backward()
    opt.step()


def _same_graph_but_values(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    assert a.ir_version == b.ir_version and a.opset_import == b.opset_import
    assert [(n.name, n.op_type, list(n.input), list(n.output)) for n in a.graph.node] == \
           [(n.name, n.op_type, list(n.input), list(n.output)) for n in b.graph.node]
    assert [(t.name, t.data_type, list(t.dims)) for t in a.graph.initializer] == \
           [(t.name, t.data_type, list(t.dims)) for t in b.graph.initializer]
    assert a.graph.input == b.graph.input and a.graph.output == b.graph.output


# --------------------------------------------------------------------------- the zoo
@pytest.mark.parametrize("path", ZOO, ids=[p.stem for p in ZOO])
def test_the_view_reproduces_onnx_runtime_on_the_zoo(path):
    model = onnx.load(path)
    _assert_matches_ort(TorchView(model).eval(), model, {"input": _images()})


@pytest.mark.parametrize("path", ZOO, ids=[p.stem for p in ZOO])
def test_zero_steps_write_back_a_byte_identical_model(path):
    model = onnx.load(path)
    view = TorchView(model)
    assert write_back(view, model).SerializeToString() == model.SerializeToString()


@pytest.mark.parametrize("form", ["attention", "mha", "onnx"])
def test_the_view_reproduces_fused_attention_ops(form):
    """ONNX Runtime's Attention / MultiHeadAttention / EmbedLayerNormalization in the optimised BERT
    (a right-padded row included) and ai.onnx Attention-23 with 4 query heads over 2 KV heads."""
    from tests.test_fused_attention import BERT, feeds, grouped_query_graph

    model = onnx.load(BERT[form]) if form in BERT else grouped_query_graph(form)
    _assert_matches_ort(TorchView(model).eval(), model, feeds(form))


@pytest.mark.parametrize("name,bn", [("tinyres_fmnist_bn", "frozen"), ("tinyres_fmnist_bn", "train"),
                                     ("mobilenetv2_fmnist_folded", "frozen")])
def test_one_step_written_back_runs_in_onnx_runtime_like_the_view(name, bn):
    model = onnx.load(ROOT / "models" / f"{name}.onnx")
    view = TorchView(model, bn=bn).train()
    feeds = {"input": _images(16)}
    _sgd_step(view, feeds, lr=1e-3)
    trained = write_back(view.eval(), model)
    _same_graph_but_values(trained, model)
    changed = {t.name for t, o in zip(trained.graph.initializer, model.graph.initializer) if t != o}
    assert len(changed) > len(model.graph.initializer) // 3
    if bn == "train":
        assert any(n.endswith("running_mean") for n in changed)
    _assert_matches_ort(view, trained, feeds)


# --------------------------------------------------------------------------- parameters
def test_a_shared_initializer_is_one_parameter_and_stays_shared():
    n = Net(input_shape=("N", 4, 6, 6))
    w = n.rand(4, 4, 3, 3)
    h = n.relu(n.op("Conv", ["x", w], pads=[1, 1, 1, 1]))
    y = n.op("Conv", [h, w], pads=[1, 1, 1, 1])
    model = n.model(y)
    view = TorchView(model)
    assert len(list(view.parameters())) == 1 and view.parameter(w) is view.weights[view.param_keys[w]]
    feeds = {"x": n.input()}
    _sgd_step(view, feeds)
    trained = write_back(view, model)
    _same_graph_but_values(trained, model)
    assert [list(node.input) for node in trained.graph.node if node.op_type == "Conv"] == [["x", w], [h, w]]
    new_w = numpy_helper.to_array(trained.graph.initializer[0])
    assert not np.array_equal(new_w, numpy_helper.to_array(model.graph.initializer[0]))
    np.testing.assert_array_equal(new_w, view.parameter(w).detach().numpy())
    _assert_matches_ort(view, trained, feeds)


def _constant_weight_model() -> onnx.ModelProto:
    """Conv weight in a Constant node's tensor, a scale in value_floats, a shape as value_ints."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    nodes = [helper.make_node("Constant", [], ["w"], name="cw", value=w),
             helper.make_node("Constant", [], ["s"], name="cs", value_floats=[0.5, 1.0, 1.5, 2.0]),
             helper.make_node("Constant", [], ["shape"], name="cshape", value_ints=[1, 4, 1, 1]),
             helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["s", "shape"], ["s4"], name="reshape"),
             helper.make_node("Mul", ["c", "s4"], ["y"], name="mul")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_constant_node_weights_are_parameters_and_are_written_back():
    model = _constant_weight_model()
    view = TorchView(model)
    assert set(view.param_keys) == {"w", "s"} and set(view.buffer_keys) == {"shape"}
    assert write_back(view, model).SerializeToString() == model.SerializeToString()
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 3, 5, 5)).astype(np.float32)}
    _assert_matches_ort(view, model, feeds)
    _sgd_step(view, feeds)
    trained = write_back(view, model)
    _same_graph_but_values(trained, model)
    assert trained.graph.node[0] != model.graph.node[0] and trained.graph.node[1] != model.graph.node[1]
    assert trained.graph.node[2] == model.graph.node[2]
    _assert_matches_ort(view, trained, feeds)


def test_write_back_keeps_each_tensor_encoding():
    """A float_data initializer stays float_data; an untouched raw_data one stays byte-identical."""
    n = Net(input_shape=("N", 3, 6, 6))
    y = n.conv("x", 3, 4)
    model = n.model(y)
    w = model.graph.initializer[0]
    w.float_data[:] = numpy_helper.to_array(w).ravel().tolist()
    w.ClearField("raw_data")
    view = TorchView(model)
    bias = model.graph.initializer[1].name
    view.parameter(bias).requires_grad_(False)
    _sgd_step(view, {"x": n.input()})
    trained = write_back(view, model)
    assert not trained.graph.initializer[0].HasField("raw_data") and len(trained.graph.initializer[0].float_data)
    assert trained.graph.initializer[0] != model.graph.initializer[0]
    assert trained.graph.initializer[1] == model.graph.initializer[1]


def test_names_that_sanitise_alike_stay_distinct_parameters():
    n = Net(input_shape=("N", 4))
    n.inits += [numpy_helper.from_array(np.full(4, v, np.float32), name)
                for v, name in ((1, "a.b"), (2, "a_b"), (3, "training"))]
    model = n.model(n.op("Mul", [n.op("Add", ["x", "a.b"]), n.op("Sub", ["a_b", "training"])]))
    view = TorchView(model)
    assert len(set(view.param_keys.values())) == 3
    assert view.parameter("a_b").detach().numpy().tolist() == [2.0] * 4
    _assert_matches_ort(view, model, {"x": n.input()})


def test_statistics_and_bounds_do_not_require_gradients():
    model = onnx.load(ROOT / "models" / "mobilenetv2_fmnist_bn.onnx")
    view = TorchView(model)
    assert not view.parameter("features.1.running_mean").requires_grad
    assert not view.parameter("/features/features.2/Constant_1_output_0").requires_grad  # Clip max
    assert view.parameter("features.1.weight").requires_grad and view.parameter("features.0.weight").requires_grad


# --------------------------------------------------------------------------- modes
def _bn_model(momentum: float = 0.7) -> tuple[Net, onnx.ModelProto]:
    n = Net(input_shape=("N", 3, 6, 6))
    c = n.conv("x", 3, 4)
    scale, shift = n.const(np.linspace(0.5, 1.5, 4, dtype=np.float32)), n.const(np.zeros(4, np.float32) + 0.1)
    mean, var = n.const(np.full(4, 0.2, np.float32)), n.const(np.full(4, 2.0, np.float32))
    return n, n.model(n.op("BatchNormalization", [c, scale, shift, mean, var], epsilon=1e-3, momentum=momentum))


def test_frozen_bn_uses_running_statistics_even_in_train_mode():
    n, model = _bn_model()
    view = TorchView(model, bn="frozen").train()
    feeds = {"x": n.input(batch=8)}
    before = {k: p.detach().clone() for k, p in view.onnx_parameters()}
    _assert_matches_ort(view, model, feeds)
    assert all(torch.equal(before[k], p) for k, p in view.onnx_parameters())
    assert write_back(view, model).SerializeToString() == model.SerializeToString()


def test_train_bn_normalises_by_the_batch_and_updates_running_statistics():
    n, model = _bn_model(momentum=0.7)
    view = TorchView(model, bn="train").train()
    x = torch.from_numpy(n.input(batch=8))
    mean_name, var_name = model.graph.node[-1].input[3:5]
    conv = torch.nn.functional.conv2d(x, view.parameter(model.graph.node[0].input[1]),
                                      view.parameter(model.graph.node[0].input[2]), padding=1).detach()
    y = view(x)[0].detach()
    np.testing.assert_allclose(y.mean(dim=(0, 2, 3)).numpy(), np.full(4, 0.1), atol=1e-5)
    batch_var, batch_mean = torch.var_mean(conv, dim=(0, 2, 3), unbiased=False)
    np.testing.assert_allclose(view.parameter(mean_name).detach(), 0.7 * 0.2 + 0.3 * batch_mean, rtol=1e-5)
    np.testing.assert_allclose(view.parameter(var_name).detach(), 0.7 * 2.0 + 0.3 * batch_var, rtol=1e-5)
    trained = write_back(view.eval(), model)  # eval: running statistics, as ONNX Runtime runs it
    _assert_matches_ort(view, trained, {"x": x.numpy()})


def test_dropout_follows_train_and_eval():
    n = Net(input_shape=("N", 64))
    model = n.model(n.op("Dropout", [n.op("Relu", ["x"]), n.const(np.float32(0.5))]))
    view = TorchView(model)
    x = torch.ones(4, 64)
    assert torch.equal(view.eval()(x)[0], x)
    torch.manual_seed(0)
    y = view.train()(x)[0]
    assert set(y.unique().tolist()) == {0.0, 2.0}


# --------------------------------------------------------------------------- refusals
def test_an_unsupported_op_is_refused_at_construction_naming_it():
    n = Net(input_shape=("N", 3, 3))
    model = n.model(n.op("Det", [n.relu("x")]))
    with pytest.raises(OnnxfuseError, match=rf"no op Det \(node '{model.graph.node[1].name}'\)"):
        TorchView(model)


def test_an_unsupported_attribute_is_refused_at_construction():
    n = Net(input_shape=("N", 3, 4, 4))
    scales = n.const(np.array([1, 1, 2, 2], np.float32))
    model = n.model(n.op("Resize", ["x", "", scales], mode="cubic"))
    with pytest.raises(OnnxfuseError, match=rf"Resize node '{model.graph.node[0].name}'.*mode=cubic"):
        TorchView(model)


def test_bad_bn_mode_and_missing_input_are_user_errors():
    _, model = _bn_model()
    with pytest.raises(OnnxfuseError, match="bn must be one of frozen, train"):
        TorchView(model, bn="learn")
    with pytest.raises(OnnxfuseError, match="graph inputs missing"):
        TorchView(model)(y=torch.ones(1))


TORCH_FREE = ("onnxfuse.training.options", "onnxfuse.training.data")  # the compress options and data checks


def test_import_onnxfuse_does_not_import_the_view():
    """(torch itself may arrive through onnxruntime.tools, which graph/shapes.py imports.)"""
    code = ("import sys, onnxfuse; loaded = {m for m in sys.modules if m.startswith('onnxfuse.training.')}; "
            f"assert loaded <= {set(TORCH_FREE)}, loaded")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --------------------------------------------------------------------------- one graph per op
def _i64(*v):
    return np.array(v, np.int64)


def _f32(*v):
    return np.array(v, np.float32)


IMG, VEC, SEQ = ("N", 3, 7, 7), ("N", 6), ("N", 4, 6)
CASES = [
    # convolutions and pooling: pads, auto_pad, strides, dilations, group
    ("conv_asymmetric_pads", IMG, 17, lambda n: n.op("Conv", ["x", n.rand(4, 3, 3, 3)], pads=[0, 1, 2, 1])),
    ("conv_same_upper_s2", IMG, 17, lambda n: n.op("Conv", ["x", n.rand(4, 3, 4, 4), n.rand(4)],
                                                   auto_pad="SAME_UPPER", strides=[2, 2])),
    ("conv_same_lower", IMG, 17, lambda n: n.op("Conv", ["x", n.rand(4, 3, 2, 3)], auto_pad="SAME_LOWER")),
    ("conv_dilated", IMG, 17, lambda n: n.op("Conv", ["x", n.rand(4, 3, 2, 3)], pads=[1, 2, 1, 2], dilations=[2, 3])),
    ("conv_valid_group", ("N", 4, 7, 7), 17, lambda n: n.op("Conv", ["x", n.rand(6, 2, 3, 3)], auto_pad="VALID",
                                                             group=2, strides=[2, 1])),
    ("conv_1d", SEQ, 17, lambda n: n.op("Conv", ["x", n.rand(5, 4, 3), n.rand(5)], pads=[1, 1])),
    ("conv_transpose", ("N", 3, 4, 4), 17, lambda n: n.op("ConvTranspose", ["x", n.rand(3, 4, 3, 3), n.rand(4)],
                                                          strides=[2, 2], pads=[1, 0, 0, 1], output_padding=[1, 1])),
    ("conv_transpose_group", ("N", 4, 4, 4), 17, lambda n: n.op("ConvTranspose", ["x", n.rand(4, 1, 2, 2)],
                                                                strides=[2, 2], group=2)),
    ("maxpool_ceil", IMG, 17, lambda n: n.op("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2],
                                             pads=[1, 1, 1, 1], ceil_mode=1)),
    ("maxpool_asymmetric_dilated", IMG, 17, lambda n: n.op("MaxPool", ["x"], kernel_shape=[2, 2], pads=[0, 0, 1, 1],
                                                           dilations=[2, 1])),
    ("maxpool_same_upper", IMG, 17, lambda n: n.op("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2],
                                                   auto_pad="SAME_UPPER")),
    ("avgpool_exclude_pad", IMG, 17, lambda n: n.op("AveragePool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])),
    ("avgpool_include_pad_s2", IMG, 17, lambda n: n.op("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2],
                                                       pads=[1, 1, 1, 1], count_include_pad=1)),
    ("avgpool_asymmetric", IMG, 17, lambda n: n.op("AveragePool", ["x"], kernel_shape=[2, 3], pads=[1, 0, 0, 2])),
    ("avgpool_ceil", IMG, 17, lambda n: n.op("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
    ("global_pools", IMG, 17, lambda n: [n.op("GlobalAveragePool", ["x"]), n.op("GlobalMaxPool", ["x"])]),
    # normalisation, dense layers
    ("batchnorm", IMG, 17, lambda n: n.bn("x", 3)),
    ("batchnorm_opset9", IMG, 9, lambda n: n.bn("x", 3)),
    ("instancenorm", IMG, 17, lambda n: n.op("InstanceNormalization", ["x", n.rand(3), n.rand(3)])),
    ("layernorm", SEQ, 17, lambda n: n.op("LayerNormalization", ["x", n.rand(6), n.rand(6)], epsilon=1e-3)),
    ("layernorm_axis1", SEQ, 17, lambda n: n.op("LayerNormalization", ["x", n.rand(4, 6)], axis=1)),
    ("gemm_trans_alpha_beta", VEC, 17, lambda n: n.op("Gemm", [n.op("Transpose", ["x"]), n.rand(5, 6), n.rand(5)],
                                                      transA=1, transB=1, alpha=0.5, beta=2.0)),
    ("gemm_no_bias", VEC, 17, lambda n: n.op("Gemm", ["x", n.rand(6, 3)])),
    ("gemm_opset9_matrix_c", ("N", 6), 9, lambda n: n.op("Gemm", [n.op("Slice", ["x"], starts=[0], ends=[2], axes=[0]),
                                                                  n.rand(6, 3), n.rand(2, 3)])),
    ("matmul", SEQ, 17, lambda n: n.op("MatMul", ["x", n.rand(6, 3)])),
    ("softmax_13", IMG, 13, lambda n: [n.op("Softmax", ["x"], axis=1), n.op("LogSoftmax", ["x"])]),
    ("softmax_11_coerced", IMG, 11, lambda n: [n.op("Softmax", ["x"]), n.op("LogSoftmax", ["x"], axis=2)]),
    # activations and elementwise
    ("activations", VEC, 17, lambda n: [n.op(op, ["x"]) for op in (
        "Relu", "Sigmoid", "Tanh", "HardSwish", "Elu", "Selu", "Softplus", "Abs", "Neg", "Erf", "Floor", "Ceil",
        "Softsign", "Celu", "Sin")]),
    ("activations_with_attributes", VEC, 17, lambda n: [
        n.op("HardSigmoid", ["x"], alpha=0.3, beta=0.4), n.op("LeakyRelu", ["x"], alpha=0.2),
        n.op("Elu", ["x"], alpha=0.5), n.op("ThresholdedRelu", ["x"], alpha=0.3),
        n.op("Selu", ["x"], alpha=1.5, gamma=1.1)]),
    ("gelu_20", VEC, 20, lambda n: [n.op("Gelu", ["x"]), n.op("Gelu", ["x"], approximate="tanh")]),
    ("prelu", IMG, 17, lambda n: n.op("PRelu", ["x", n.rand(3, 1, 1)])),
    ("positive_math", VEC, 17, lambda n: [n.op(op, [n.op("Abs", ["x"])]) for op in ("Sqrt", "Log", "Exp",
                                                                                 "Reciprocal")]),
    ("binary", VEC, 17, lambda n: [n.op(op, ["x", n.rand(6)]) for op in ("Add", "Sub", "Mul", "Div")]),
    ("pow_where_compare", VEC, 17, lambda n: [
        n.op("Pow", [n.op("Abs", ["x"]), n.const(np.float32(1.5))]),
        n.op("Where", [n.op("Greater", ["x", n.const(np.float32(0.1))]), "x", n.rand(6)]),
        n.op("Cast", [n.op("LessOrEqual", ["x", n.rand(6)])], to=TensorProto.FLOAT)]),
    ("variadic", VEC, 17, lambda n: [n.op(op, ["x", n.rand(6), n.rand(1, 6)]) for op in ("Sum", "Mean", "Max",
                                                                                        "Min")]),
    ("clip_11_inputs", VEC, 17, lambda n: [n.op("Clip", ["x", n.const(np.float32(-0.2)), n.const(np.float32(0.3))]),
                                           n.op("Clip", ["x", "", n.const(np.float32(0.1))])]),
    ("clip_6_attributes", VEC, 6, lambda n: [n.op("Clip", ["x"], min=-0.2, max=0.3), n.op("Clip", ["x"], max=0.1)]),
    # shapes, indexing
    ("shape_gather_concat_reshape", IMG, 17, lambda n: n.op("Reshape", ["x", n.op("Concat", [
        n.op("Unsqueeze", [n.op("Gather", [n.op("Shape", ["x"]), n.const(np.int64(0))]), n.const(_i64(0))]),
        n.const(_i64(-1))], axis=0)])),
    ("reshape_zero_and_flatten", IMG, 17, lambda n: [n.op("Reshape", ["x", n.const(_i64(0, 3, -1))]),
                                                     n.op("Flatten", ["x"], axis=2), n.op("Flatten", ["x"], axis=-1)]),
    ("transpose", IMG, 17, lambda n: [n.op("Transpose", ["x"], perm=[0, 2, 3, 1]), n.op("Transpose", ["x"])]),
    ("split_13", ("N", 6, 4), 13, lambda n: n.op("Split", ["x", n.const(_i64(1, 2, 3))], n_out=3, axis=1)),
    ("split_18_uneven", ("N", 7, 4), 18, lambda n: n.op("Split", ["x"], n_out=3, axis=1, num_outputs=3)),
    ("split_11_attribute", ("N", 6, 4), 11, lambda n: n.op("Split", ["x"], n_out=2, axis=1, split=[4, 2])),
    ("slice_steps_and_clamps", IMG, 17, lambda n: [
        n.op("Slice", ["x", n.const(_i64(-1, 1)), n.const(_i64(-100, 1000)), n.const(_i64(2, 3)),
                       n.const(_i64(-2, 2))]),
        n.op("Slice", ["x", n.const(_i64(1)), n.const(_i64(-1))])]),
    ("slice_9_attributes", IMG, 9, lambda n: n.op("Slice", ["x"], starts=[1, 0], ends=[3, 100], axes=[1, 3])),
    ("squeeze_unsqueeze_13", ("N", 1, 5, 1), 13, lambda n: [
        n.op("Squeeze", ["x", n.const(_i64(1, -1))]), n.op("Unsqueeze", ["x", n.const(_i64(-1, 0))])]),
    ("squeeze_all", (2, 1, 5, 1), 13, lambda n: n.op("Squeeze", ["x"])),
    ("squeeze_unsqueeze_11", ("N", 1, 5, 1), 11, lambda n: [
        n.op("Squeeze", ["x"], axes=[3]), n.op("Unsqueeze", ["x"], axes=[1, 5])]),
    ("gather_negative_and_elements", ("N", 5, 3), 17, lambda n: [
        n.op("Gather", ["x", n.const(_i64(-1, 0, 2))], axis=1), n.op("Gather", ["x", n.const(np.int64(-2))], axis=1),
        n.op("GatherElements", ["x", n.const(np.array([[[0, 4, -1]]], np.int64))], axis=1)]),
    ("expand_tile", ("N", 1, 3), 17, lambda n: [n.op("Expand", ["x", n.const(_i64(4, 3))]),
                                                n.op("Tile", ["x", n.const(_i64(1, 2, 2))])]),
    ("constant_of_shape_range", VEC, 17, lambda n: [
        n.op("Add", ["x", n.op("ConstantOfShape", [n.op("Shape", ["x"])], value=numpy_helper.from_array(_f32(0.5)))]),
        n.op("Add", ["x", n.op("Cast", [n.op("Range", [n.const(np.int64(0)), n.const(np.int64(6)),
                                                      n.const(np.int64(1))])], to=TensorProto.FLOAT)])]),
    ("pad_constant_reflect_edge", IMG, 17, lambda n: [
        n.op("Pad", ["x", n.const(_i64(0, 0, 1, 2, 0, 0, 2, 0)), n.const(np.float32(0.7))]),
        n.op("Pad", ["x", n.const(_i64(0, 0, 1, 2, 0, 0, 2, 0))], mode="reflect"),
        n.op("Pad", ["x", n.const(_i64(0, 0, -1, 2, 0, 0, 2, 1))], mode="edge")]),
    ("pad_18_axes", IMG, 18, lambda n: n.op("Pad", ["x", n.const(_i64(1, 2, 3, 0)), n.const(np.float32(0)),
                                                    n.const(_i64(3, 1))])),
    ("pad_2_attributes", IMG, 2, lambda n: n.op("Pad", ["x"], pads=[0, 0, 1, 1, 0, 1, 0, 1], value=1.5)),
    # reductions
    ("reduce_13_attributes", IMG, 13, lambda n: [
        n.op("ReduceMean", ["x"], axes=[2, 3]), n.op("ReduceMax", ["x"], axes=[1], keepdims=0),
        n.op("ReduceSum", ["x", n.const(_i64(-1))], keepdims=0), n.op("ReduceMin", ["x"]),
        n.op("ReduceL2", ["x"], axes=[1]), n.op("ReduceProd", ["x"], axes=[1, 3])]),
    ("reduce_18_inputs", IMG, 18, lambda n: [
        n.op("ReduceMean", ["x", n.const(_i64(2, 3))]), n.op("ReduceSumSquare", ["x", n.const(_i64(1))]),
        n.op("ReduceLogSumExp", ["x", n.const(_i64(1))], keepdims=0), n.op("ReduceL1", ["x"])]),
    ("argmax", ("N", 5, 3), 17, lambda n: [n.op("Cast", [y], to=TensorProto.FLOAT) for y in (
        n.op("ArgMax", ["x"], axis=1), n.op("ArgMin", ["x"], axis=-1, keepdims=0),
        n.op("ArgMax", [n.op("Round", ["x"])], axis=1, select_last_index=1))]),
    # resize
    ("resize_nearest_scales", ("N", 2, 3, 4), 13, lambda n: n.op("Resize", ["x", "", n.const(_f32(1, 1, 2, 3))])),
    ("resize_nearest_sizes_odd", ("N", 2, 3, 4), 13, lambda n: [
        n.op("Resize", ["x", "", "", n.const(_i64(2, 2, 7, 5))], nearest_mode=mode, coordinate_transformation_mode=t)
        for mode, t in (("round_prefer_floor", "half_pixel"), ("floor", "asymmetric"), ("ceil", "align_corners"),
                        ("round_prefer_ceil", "pytorch_half_pixel"), ("floor", "tf_half_pixel_for_nn"))]),
    ("resize_nearest_down", ("N", 2, 6, 8), 13, lambda n: n.op("Resize", ["x", "", n.const(_f32(1, 1, 0.5, 0.7))])),
    ("resize_linear", ("N", 2, 3, 4), 13, lambda n: [
        n.op("Resize", ["x", "", n.const(_f32(1, 1, 2, 1.5))], mode="linear"),
        n.op("Resize", ["x", "", "", n.const(_i64(2, 2, 5, 7))], mode="linear",
             coordinate_transformation_mode="align_corners")]),
    ("resize_10", ("N", 2, 3, 4), 10, lambda n: n.op("Resize", ["x", n.const(_f32(1, 1, 2, 2))])),
    ("upsample_9", ("N", 2, 3, 4), 9, lambda n: n.op("Upsample", ["x", n.const(_f32(1, 1, 2, 3))])),
    ("identity_dropout_eval", VEC, 17, lambda n: [n.op("Identity", ["x"]), n.op("Dropout", ["x"])]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_each_op_matches_onnx_runtime(case):
    _, shape, opset, build = case
    n = Net(input_shape=shape, opset=opset)
    model = n.model(*np.atleast_1d(build(n)))
    _assert_matches_ort(TorchView(model).eval(), model, {"x": n.input(batch=2)})
