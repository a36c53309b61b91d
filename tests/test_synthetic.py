"""Data-free calibration data (`onnxfuse calib synth`): the BN-statistics mismatch that picks the
generator, the generators themselves, the CLI contract and its errors, and the gain it brings to a
data-free fusion of the committed tinyres model on real Fashion-MNIST images."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models import fmnist
from onnxfuse import pipeline
from onnxfuse.calibration.data import Dataset
from onnxfuse.calibration.synthetic import GENERATORS, Generator, bn_statistics, mismatch, synthesize
from onnxfuse.graph.io import load_model
from onnxfuse.runtime.sessions import run, session
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
TINYRES_BN = ROOT / "models" / "tinyres_fmnist_bn.onnx"
TINYRES_FOLDED = ROOT / "models" / "tinyres_fmnist_folded.onnx"


@pytest.fixture(scope="module")
def eval_images() -> Dataset:
    images, labels = fmnist.load_eval_sample()
    return Dataset({"input": images.astype(np.float32)}, labels)


def conv_bn(mean: np.ndarray, var: np.ndarray, weight: np.ndarray) -> onnx.ModelProto:
    """x (N,2,5,5) → 1×1 Conv (3 channels) → BatchNormalization with the given running statistics."""
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in
             (("w", weight), ("scale", np.ones(3)), ("bias", np.zeros(3)), ("mean", mean), ("var", var))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["y"], name="bn",
                              epsilon=1e-5)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 5, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_mismatch_is_zero_for_the_data_the_statistics_came_from():
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(3, 2, 1, 1))
    x = rng.normal(2.0, 3.0, size=(16, 2, 5, 5)).astype(np.float32)
    conv = np.einsum("oi,nihw->nohw", weight[:, :, 0, 0], x)
    mean, var = conv.mean((0, 2, 3)), conv.var((0, 2, 3))
    model = conv_bn(mean, var - 1e-5, weight)  # the stored variance excludes epsilon
    stats = bn_statistics(model)
    assert list(stats) == ["c"]
    assert mismatch(model, Dataset({"x": x}), stats) < 1e-8
    assert mismatch(model, Dataset({"x": x * 2}), stats) > 1.0  # a 4× variance: log² 4 ≈ 1.9


def test_bn_statistics_behind_constant_nodes_are_read():
    model = conv_bn(np.zeros(3), np.ones(3), np.ones((3, 2, 1, 1)))
    mean = model.graph.initializer.pop(3)
    model.graph.node.insert(0, helper.make_node("Constant", [], ["mean"], name="m", value=mean))
    assert np.array_equal(bn_statistics(model)["c"][0], np.zeros(3))


def test_real_images_match_the_stored_statistics_far_better_than_any_generator(eval_images):
    model = load_model(TINYRES_BN)
    stats = bn_statistics(model)
    assert len(stats) == 7  # one per BN node
    real = mismatch(model, Dataset({"input": eval_images.feeds["input"][:32]}), stats)
    generated = [mismatch(model, Dataset({"input": g.sample(32, (1, 28, 28), seed=1)}), stats) for g in GENERATORS]
    assert real < min(generated) / 3
    assert max(generated) > 10 * min(generated)  # the choice matters


@pytest.mark.parametrize("generator", [GENERATORS[0], Generator(0.6, True, 0.0, 255.0),
                                       Generator(1.0, True, -2.5, 2.5)])
def test_generators_stay_in_their_range_and_are_seeded(generator):
    shape = (3, 12, 20)
    x = generator.sample(40, shape, seed=4)
    assert x.shape == (40, *shape) and x.dtype == np.float32
    background = generator.low if generator.low >= 0 else 0.0
    assert x.min() >= min(generator.low, background) and x.max() <= generator.high
    assert np.array_equal(x, generator.sample(40, shape, seed=4))
    assert not np.array_equal(x, generator.sample(40, shape, seed=5))
    if generator.centred:  # the corners are outside every centred box
        assert np.all(x[:, :, 0, 0] == background) and np.all(x[:, :, -1, -1] == background)


def test_synthetic_calibration_lifts_a_data_free_fusion(eval_images, tmp_path):
    data, summary = synthesize(load_model(TINYRES_BN), samples=256)
    assert "mismatch" in summary
    np.savez(tmp_path / "synth.npz", **data.feeds)
    folded = load_model(TINYRES_FOLDED)

    def accuracy(**options) -> float:  # the stats repair: lsq fitted on synthetic inputs does worse (27.3 % at 0.5)
        options = pipeline.Options(method="fuse", repair="stats" if "calib" in options else "none", validate=False,
                                   **options)
        result = pipeline.run(pipeline.Context.for_model(options, folded))
        logits = run(session(result.model.result, "cpu"), eval_images, 500)[0]
        return float((logits.argmax(1) == eval_images.labels).mean())

    for sparsity, margin in ((0.3, 0.08), (0.5, 0.0)):  # measured here: 43.1 → 56.2 and 29.2 → 34.8 %
        assert accuracy(sparsity=sparsity, calib=str(tmp_path / "synth.npz")) > accuracy(sparsity=sparsity) + margin


def test_calib_synth_writes_the_cli_contract(tmp_path, capsys):
    before = hashlib.sha256(TINYRES_BN.read_bytes()).hexdigest()
    out = tmp_path / "s.npz"
    code, stdout, err = run_cli(["calib", "synth", TINYRES_BN, "-o", out, "--calib-samples", "20"], capsys)
    assert code == 0 and stdout == ""
    lines = err.splitlines()
    assert lines[0].startswith("synthetic data: 20 samples of random blocks")
    assert lines[1] == f"wrote {out}: 20 samples, 'input' float32 (20, 1, 28, 28)"
    with np.load(out) as f:
        assert f.files == ["input"]
        first = f["input"]
    run_cli(["calib", "synth", TINYRES_BN, "-o", tmp_path / "again.npz", "--calib-samples", "20"], capsys)
    run_cli(["calib", "synth", TINYRES_BN, "-o", tmp_path / "seed.npz", "--calib-samples", "20", "--seed", "1"],
            capsys)
    with np.load(tmp_path / "again.npz") as again, np.load(tmp_path / "seed.npz") as seeded:
        assert np.array_equal(first, again["input"]) and not np.array_equal(first, seeded["input"])
    assert hashlib.sha256(TINYRES_BN.read_bytes()).hexdigest() == before


def two_inputs() -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"], name="add")], "g",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, 4, 4]) for n in "ab"],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def dynamic_size() -> onnx.ModelProto:
    model = conv_bn(np.zeros(3), np.ones(3), np.ones((3, 2, 1, 1)))
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    return model


@pytest.mark.parametrize("make, message", [
    (lambda: load_model(TINYRES_FOLDED), "needs BatchNormalization statistics and the model has none"),
    (two_inputs, "one image input; this model has 2 inputs (a, b)"),
    (dynamic_size, "needs a float32 input of shape (N, C, H, W) with fixed C, H, W"),
])
def test_calib_synth_errors_are_one_line_and_write_nothing(make, message, tmp_path, capsys):
    onnx.save(make(), tmp_path / "m.onnx")
    code, _, err = run_cli(["calib", "synth", tmp_path / "m.onnx", "-o", tmp_path / "s.npz"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_calib_synth_never_writes_over_its_model(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    model.write_bytes(TINYRES_BN.read_bytes())
    code, _, err = run_cli(["calib", "synth", model, "-o", model], capsys)
    assert code == 2 and err.startswith("error:")
    assert model.read_bytes() == TINYRES_BN.read_bytes()
