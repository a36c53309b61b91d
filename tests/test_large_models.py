"""Models with external data: the weights stay in their file until used, are held once, the input
files are never modified, and the output's .data file is written atomically."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx_graphsurgeon.ir.tensor import LazyValues

import onnxfuse
from onnxfuse import pipeline
from onnxfuse.graph import io as graphio
from onnxfuse.graph.convert import ExternalValues
from onnxfuse.planning.latency import LatencyProbe
from tests.helpers import run, run_cli
from tests.netbuilder import Net


def _model() -> onnx.ModelProto:
    n = Net()
    y = n.relu(n.bn(n.conv("x", 3, 32), 32))
    y = n.relu(n.conv(y, 32, 32))
    return n.model(n.conv(y, 32, 4))


def _save_external(model: onnx.ModelProto, path) -> None:
    copy = onnx.ModelProto.FromString(model.SerializeToString())  # saving moves the weights out of the proto
    onnx.save_model(copy, str(path), save_as_external_data=True, location=path.name + ".data", size_threshold=0)


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_weights_stay_in_their_file_until_used(tmp_path):
    path = tmp_path / "ext.onnx"
    _save_external(_model(), path)
    ctx = pipeline.run(pipeline.Context.for_model(pipeline.Options(), str(path)), stop_after="analyze")
    assert ctx.model.weights_dir == str(tmp_path)
    assert not any(t.HasField("raw_data") for t in ctx.model.original.graph.initializer)  # the proto holds no copy
    convs = [n for n in ctx.model.graph.nodes if n.op == "Conv"]
    assert all(isinstance(n.inputs[1]._values, ExternalValues) for n in convs[1:])  # not read yet (BN folded the first)


def test_result_holds_the_weights_once(tmp_path):
    """After emit the graph's constants read their values from the result proto: no second copy."""
    path = tmp_path / "ext.onnx"
    _save_external(_model(), path)
    ctx = pipeline.run(pipeline.Context.for_model(pipeline.Options(validate=False), str(path)))
    initializers = {t.name: t for t in ctx.model.result.graph.initializer}
    constants = [t for t in ctx.model.graph.tensors().values() if isinstance(t, gs.Constant) and t.name in initializers]
    large = [t for t in constants if np.prod(t.shape) * 4 > 4096]
    assert large and all(isinstance(t._values, LazyValues) and not isinstance(t._values, ExternalValues)
                         for t in large)


def test_external_and_inline_models_give_the_same_result(tmp_path):
    model = _model()
    path = tmp_path / "ext.onnx"
    _save_external(model, path)
    for method in ("prune", "fuse"):
        inline, _ = onnxfuse.compress(model, 0.5, method=method, validate=False, quiet=True)
        external, _ = onnxfuse.compress(str(path), 0.5, method=method, validate=False, quiet=True)
        assert external.SerializeToString() == inline.SerializeToString()


def test_compress_never_modifies_the_input_files(tmp_path, capsys):
    model = _model()
    path, out = tmp_path / "ext.onnx", tmp_path / "out.onnx"
    _save_external(model, path)
    data = tmp_path / "ext.onnx.data"
    before = {p: _digest(p) for p in (path, data)}
    for method in ("prune", "fuse"):
        code, _, err = run_cli(["compress", path, "-o", out, "--sparsity", "0.5", "--method", method], capsys)
        assert code == 0, err
    assert {p: _digest(p) for p in (path, data)} == before
    x = Net().input()
    assert run(onnx.load(str(out)), x)[0].shape == run(model, x)[0].shape


def test_nothing_to_prune_writes_a_full_copy(tmp_path, capsys):
    n = Net()
    model = n.model(n.conv("x", 3, 16))  # its only group is the graph output: frozen
    path, out = tmp_path / "ext.onnx", tmp_path / "out.onnx"
    _save_external(model, path)
    code, _, err = run_cli(["compress", path, "-o", out, "--sparsity", "0.5"], capsys)
    assert code == 0, err
    x = n.input()
    np.testing.assert_array_equal(run(onnx.load(str(out)), x)[0], run(model, x)[0])


def test_external_data_is_written_atomically(tmp_path, monkeypatch):
    """A failed write leaves an earlier output and its .data file as they were, and no temp files."""
    model = _model()
    path, out = tmp_path / "ext.onnx", tmp_path / "out.onnx"
    _save_external(model, path)
    graphio.save_model(onnxfuse.compress(str(path), 0.5, validate=False, quiet=True)[0], out, input_path=path)
    before = {p.name: _digest(p) for p in tmp_path.iterdir()}

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save_model", fail)  # after the .data temp file is written
    with pytest.raises(OSError):
        graphio.save_model(onnxfuse.compress(str(path), 0.3, validate=False, quiet=True)[0], out, input_path=path)
    assert {p.name: _digest(p) for p in tmp_path.iterdir()} == before


def test_output_data_file_layout(tmp_path):
    """Tensors of at least 1 KiB go to OUT.onnx.data, back to back; smaller ones stay inline."""
    model = _model()
    path, out = tmp_path / "ext.onnx", tmp_path / "out.onnx"
    _save_external(model, path)
    result, _ = onnxfuse.compress(str(path), 0.5, validate=False, quiet=True)
    expected = {t.name: onnx.numpy_helper.to_array(t) for t in result.graph.initializer}
    graphio.save_model(result, out, input_path=path)
    stored = onnx.load(str(out), load_external_data=False)
    external = [t for t in stored.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    inline = [t for t in stored.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
    assert external and all(expected[t.name].nbytes >= 1024 for t in external)
    assert all(expected[t.name].nbytes < 1024 for t in inline)
    loaded = onnx.load(str(out))
    for tensor in loaded.graph.initializer:
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(tensor), expected[tensor.name])


def test_latency_target_and_calibration_on_an_external_data_model(tmp_path):
    """Every path that runs the original in ONNX Runtime (latency probes, capture, repair,
    sensitivity probes, validation) reads the weights that stayed in the external-data file."""
    n = Net(input_shape=("N", 3, 48, 48))
    y = n.relu(n.conv(n.relu(n.conv("x", 3, 64)), 64, 64))
    model = n.model(n.conv(y, 64, 4))
    path = tmp_path / "ext.onnx"
    _save_external(model, path)
    np.savez(tmp_path / "calib.npz", x=n.input(batch=8))
    calib = str(tmp_path / "calib.npz")
    ctx = pipeline.run(pipeline.Context.for_model(pipeline.Options(), str(path)), stop_after="analyze")
    probe = LatencyProbe(ctx.model.original, "cpu", 2, source=ctx.model.model_source)
    assert probe.ratio(ctx.probes.pruned(sparsity=0.5, only_groups=(ctx.model.analysis.prunable[0].id,)), runs=3) > 0
    _, report = onnxfuse.compress(str(path), target_macs=0.5, allocate="sensitivity", calib=calib, repair="lsq",
                                  quiet=True)
    assert report["macs_after"] <= 0.5 * report["macs_before"]
