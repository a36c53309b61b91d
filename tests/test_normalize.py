"""Normalisation: Constant-node weights, Identity removal, bias-Add and BN folding (with eps),
external data, and what emit keeps (names, opset, interface)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

import onnxfuse
from onnxfuse import pipeline
from tests.helpers import run
from tests.netbuilder import Net


def _normalized(model, **options):
    return pipeline.run(pipeline.Context.for_model(pipeline.Options(**options), model), stop_after="analyze")


def _constant_node_weights() -> onnx.ModelProto:
    """Conv weights behind Constant nodes and an Identity, as some exporters write them."""
    n = Net()
    y = n.relu(n.conv("x", 3, 8))
    model = n.model(n.conv(y, 8, 4))
    graph = model.graph
    for init in list(graph.initializer):
        if init.name.startswith("w"):
            graph.initializer.remove(init)
            graph.node.insert(0, helper.make_node("Constant", [], [init.name + "_c"], value=init,
                                                  name="const_" + init.name))
            graph.node.insert(1, helper.make_node("Identity", [init.name + "_c"], [init.name],
                                                  name="id_" + init.name))
    return model


def test_constant_nodes_become_initializers_and_identities_go():
    model = _constant_node_weights()
    ctx = _normalized(model)
    ops = [n.op for n in ctx.model.graph.nodes]
    assert "Constant" not in ops and "Identity" not in ops
    assert [g.width for g in ctx.model.analysis.prunable] == [8]
    x = Net().input()
    compressed, _ = onnxfuse.compress(model, 0.0, validate=False, quiet=True)
    np.testing.assert_allclose(run(compressed, x)[0], run(model, x)[0], atol=1e-5)


def test_bias_add_and_batchnorm_fold_into_the_conv_with_eps():
    n = Net()
    y = n.conv("x", 3, 8, bias=False)
    y = n.op("Add", [y, n.rand(1, 8, 1, 1)])
    y = n.relu(n.bn(y, 8))  # epsilon 1e-3, not the default
    model = n.model(n.conv(y, 8, 4))
    ctx = _normalized(model)
    assert [node.op for node in ctx.model.graph.nodes] == ["Conv", "Relu", "Conv"]
    assert ctx.report["normalize"] == ["1 bias Adds folded into Conv", "1 BatchNormalization folded into Conv/Gemm"]
    compressed, _ = onnxfuse.compress(model, 0.0, validate=False, quiet=True)
    x = n.input()
    np.testing.assert_allclose(run(compressed, x)[0], run(model, x)[0], atol=1e-5)
    kept, _ = onnxfuse.compress(model, 0.0, fold_bn=False, validate=False, quiet=True)
    assert "BatchNormalization" in [node.op_type for node in kept.graph.node]


def test_emit_keeps_names_opset_and_interface(tmp_path):
    n = Net(opset=13)
    y = n.relu(n.conv("x", 3, 8))
    model = n.model(n.conv(y, 8, 4))
    compressed, _ = onnxfuse.compress(model, 0.5, validate=False, quiet=True)
    assert [o.version for o in compressed.opset_import] == [13]
    assert [node.name for node in compressed.graph.node] == [node.name for node in model.graph.node]
    assert compressed.graph.input[0] == model.graph.input[0]
    assert compressed.graph.output[0] == model.graph.output[0]


def test_external_data_models_load(tmp_path):
    n = Net()
    model = n.model(n.conv(n.relu(n.conv("x", 3, 8)), 8, 4))
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="ext.bin", size_threshold=0)
    assert (tmp_path / "ext.bin").exists()
    compressed, report = onnxfuse.compress(str(path), 0.5, validate=False, quiet=True)
    assert report["params_after"] < report["params_before"]
    weights = {t.name: numpy_helper.to_array(t) for t in compressed.graph.initializer}
    assert all(w.size for w in weights.values())


def test_constant_subgraphs_fold():
    """A bias reshaped at run time from a constant (as PaddlePaddle exports write it) folds away,
    so the group stays prunable."""
    n = Net()
    y = n.conv("x", 3, 8, bias=False)
    bias = n.op("Reshape", [n.rand(8, scale=0.1), n.const(np.array([1, 8, 1, 1], np.int64))])
    y = n.relu(n.op("Add", [y, bias]))
    model = n.model(n.conv(y, 8, 4))
    ctx = _normalized(model)
    assert [node.op for node in ctx.model.graph.nodes] == ["Conv", "Relu", "Conv"]
    assert [g.width for g in ctx.model.analysis.prunable] == [8]


def test_external_data_models_are_written_as_external_data(tmp_path, capsys):
    """`compress` of a model whose weights are external data writes OUT.onnx + OUT.onnx.data;
    validation (ONNX Runtime reads the original from its file) reproduces it at sparsity 0."""
    from tests.helpers import run, run_cli

    n = Net()
    model = n.model(n.conv(n.relu(n.conv("x", 3, 8)), 8, 4))
    path, out = tmp_path / "ext.onnx", tmp_path / "out.onnx"
    onnx.save_model(onnx.ModelProto.FromString(model.SerializeToString()), str(path), save_as_external_data=True,
                    location="ext.bin", size_threshold=0)  # (saving moves the weights out of the proto)
    code, _, err = run_cli(["compress", path, "-o", out, "--sparsity", "0", "--report", tmp_path / "r.json"], capsys)
    assert code == 0, err
    assert (tmp_path / "out.onnx.data").stat().st_size > 0
    stored = onnx.load(str(out), load_external_data=False)
    big = [t for t in stored.graph.initializer if np.prod(t.dims) * 4 >= 1024]  # onnx's size threshold
    assert big and all(t.data_location == onnx.TensorProto.EXTERNAL for t in big)
    x = n.input()
    np.testing.assert_allclose(run(onnx.load(str(out)), x)[0], run(model, x)[0], atol=1e-6)
    code, _, err = run_cli(["compress", path, "-o", out, "--sparsity", "0.5"], capsys)  # again, over it
    assert code == 0, err
    assert run(onnx.load(str(out)), x)[0].shape == run(model, x)[0].shape
