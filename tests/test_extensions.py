"""Extension points used from user code (tests/user_extensions.py, outside the package): an op rule,
an importance and a repair each change what `compress` does, through the API and the CLI."""

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxfuse
from onnxfuse.analysis.rules import OP_RULES
from onnxfuse.methods.importance import IMPORTANCES
from onnxfuse.registry import Registry
from onnxfuse.repair import REPAIRS
from tests.helpers import run_cli
from tests.netbuilder import Net

PLUGIN = Path(__file__).with_name("user_extensions.py")


@pytest.fixture
def plugin():
    spec = importlib.util.spec_from_file_location("user_extensions", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    for registry, name in ((OP_RULES, "Shrink"), (IMPORTANCES, "first_channels"), (REPAIRS, "halve_biases")):
        if name in registry:
            registry.remove(name)


def _shrink_model() -> onnx.ModelProto:
    """Conv_4 (8 channels) → Shrink → Conv_10 (4) → graph output."""
    n = Net(input_shape=("N", 3, 8, 8))
    y = n.op("Shrink", [n.conv("x", 3, 8)], lambd=0.1)
    return n.model(n.conv(y, 8, 4))


def _weight(model: onnx.ModelProto, node_name: str, index: int = 1) -> np.ndarray:
    node = next(n for n in model.graph.node if n.name == node_name)
    init = next(t for t in model.graph.initializer if t.name == node.input[index])
    return numpy_helper.to_array(init)


def test_an_op_rule_from_user_code_unfreezes_its_op(plugin):
    model = _shrink_model()
    rule = OP_RULES.remove("Shrink")
    groups = onnxfuse.inspect(model)["groups"]
    assert not any(g["prunable"] for g in groups)
    assert any("unsupported op Shrink" in g["frozen"] for g in groups)
    OP_RULES.add("Shrink", rule)
    result, report = onnxfuse.compress(model, 0.5, quiet=True)
    assert [g.get("kept") for g in report["groups"] if g["prunable"]] == [4]
    assert report["validation"]["outputs"]  # ONNX Runtime ran the shrunk model with the Shrink node
    assert _weight(result, "Conv_4").shape[0] == 4


def test_an_importance_from_user_code_chooses_the_channels(plugin):
    model = _shrink_model()
    result, _ = onnxfuse.compress(model, 0.5, importance="first_channels", quiet=True, validate=False)
    np.testing.assert_array_equal(_weight(result, "Conv_4"), _weight(model, "Conv_4")[:4])


def test_a_repair_from_user_code_runs_on_the_calibration_data(plugin, tmp_path):
    model = _shrink_model()
    np.savez(tmp_path / "calib.npz", x=Net().input(batch=4))
    calib = str(tmp_path / "calib.npz")
    plain, _ = onnxfuse.compress(model, 0.5, importance="first_channels", method="prune", quiet=True, validate=False)
    repaired, report = onnxfuse.compress(model, 0.5, importance="first_channels", method="prune", calib=calib,
                                         repair="halve_biases", quiet=True, validate=False)
    assert report["repair"] and all("tensor" in row for row in report["repair"])
    np.testing.assert_allclose(_weight(repaired, "Conv_4", 2), 0.5 * _weight(plain, "Conv_4", 2))


def test_the_cli_offers_what_user_code_registered(plugin, tmp_path, capsys):
    onnx.save(_shrink_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=Net().input(batch=4))
    code, _, err = run_cli(["compress", tmp_path / "m.onnx", "-o", tmp_path / "out.onnx", "--importance",
                            "first_channels", "--calib", tmp_path / "calib.npz", "--repair", "halve_biases"], capsys)
    assert code == 0, err
    assert onnx.load(tmp_path / "out.onnx").graph.node


def test_registering_a_name_twice_is_refused(plugin):
    with pytest.raises(ValueError, match="already registered"):
        onnxfuse.register_importance("first_channels")(lambda group, tensors, **_: None)
    with pytest.raises(ValueError, match="already registered"):
        onnxfuse.register_op_rule("Conv")(plugin.shrink)
    registry = Registry("thing")
    registry.add("a", 1)
    assert registry.add("a", 2, replace=True) == 2 and registry.get("a") == 2
    with pytest.raises(onnxfuse.OnnxfuseError, match="unknown thing 'b'; choose from a"):
        registry.get("b")
