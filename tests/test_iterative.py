"""--iterative K with --stop fixed|icp, and ICP's information-flow criterion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

pytest.importorskip("torch")

import onnxfuse  # noqa: E402
from onnxfuse.calibration.data import Dataset  # noqa: E402
from onnxfuse.planning import information_flow as flow  # noqa: E402
from onnxfuse.training.icp import ICPStop  # noqa: E402
from tests.helpers import run_cli  # noqa: E402
from tests.tiny_models import assert_user_error, conv_relu_conv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINYRES = ROOT / "models" / "tinyres_fmnist_folded.onnx"
CALIB = ROOT / "models" / "data" / "fmnist_calib512.npz"
TRAIN = ROOT / "models" / "data" / "fmnist_train2000.npz"


def _data(n=64):
    return Dataset({"x": np.random.default_rng(0).standard_normal((n, 3, 8, 8)).astype(np.float32)})


def _weights(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _with(model, **arrays):
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name in arrays:
            t.CopyFrom(numpy_helper.from_array(arrays[t.name], t.name))
    return out


def test_the_criterion_is_zero_against_itself_and_blind_to_a_channel_permutation():
    model, data = conv_relu_conv(), _data()
    names = flow.layers(model)
    assert names == ["h", "y"]
    v = flow.flow_vector(model, data, names)
    assert flow.distance(v, flow.flow_vector(model, data, names)) == 0.0
    w = _weights(model)
    order = np.random.default_rng(1).permutation(8)
    permuted = _with(model, **{"conv1.w": w["conv1.w"][order], "conv1.b": w["conv1.b"][order],
                               "conv2.w": w["conv2.w"][:, order]})
    assert flow.distance(v, flow.flow_vector(permuted, data, names)) < 1e-6


def test_a_zeroed_channel_gives_no_nan_and_a_changed_flow_fires_only_when_it_recovers():
    model, data = conv_relu_conv(), _data()
    w = _weights(model)
    zeroed = _with(model, **{"conv1.w": np.where(np.arange(8)[:, None, None, None] == 0, 0, w["conv1.w"]),
                             "conv1.b": np.where(np.arange(8) == 0, 0, w["conv1.b"]).astype(np.float32)})
    assert np.isfinite(flow.flow_vector(zeroed, data, flow.layers(model))).all()
    damaged = _with(model, **{"conv2.w": -w["conv2.w"]})  # every correlation with y changes sign
    gap = flow.distance(flow.flow_vector(model, data, ["h", "y"]), flow.flow_vector(damaged, data, ["h", "y"]))
    assert gap > 0 and ICPStop(model, damaged, data, steps=100, epsilon=None).epsilon > 0
    stop = ICPStop(model, damaged, data, steps=100, epsilon=gap / 2)
    assert stop.stop_every == 10
    assert not stop.stop(10, damaged)  # the flow is off
    assert stop.stop(20, model)  # and recovered
    assert [s for s, _ in stop.distances] == [10, 20]


@pytest.mark.parametrize("method", ["prune", "fuse"])
def test_two_rounds_share_the_budget_and_end_at_the_target(tmp_path, capsys, method):
    out = tmp_path / "small.onnx"
    code, _, err = run_cli(["compress", TINYRES, "-o", out, "--target-macs", "0.5", "--allocate", "uniform",
                            "--method", method,
                            "--iterative", "2", "--train-data", TRAIN, "--train-steps", "6", "--batch", "16",
                            "--val-every", "3", "--val-samples", "32", "--report", tmp_path / "r.json"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    rounds = report["iterative"]
    assert [r["round"] for r in rounds] == [1, 2] and sum(r["steps"] for r in rounds) == 6
    assert rounds[0]["kept"] == 0.75 and rounds[1]["kept"] == 0.5
    assert report["macs_before"] == onnxfuse.inspect(str(TINYRES))["macs"]  # the original's, not round 2's input
    assert rounds[0]["macs_after"] > report["macs_after"] and report["macs_after"] <= 0.5 * report["macs_before"]
    onnx.checker.check_model(str(out), full_check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.md", "small.onnx"]


def test_iterative_and_icp_refusals(tmp_path, capsys):
    common = ["compress", TINYRES, "-o", tmp_path / "o.onnx"]
    assert_user_error([*common, "--iterative", "3"], capsys, tmp_path, "give --train-data")
    assert_user_error([*common, "--stop", "icp", "--train-data", TRAIN], capsys, tmp_path, "give --calib")
    assert_user_error([*common, "--iterative", "2", "--train-data", TRAIN, "--method", "tpp"], capsys, tmp_path,
                      "does not take iterative")
    assert_user_error([*common, "--iterative", "4", "--train-data", TRAIN, "--train-steps", "3"], capsys, tmp_path,
                      "cannot be shared")
