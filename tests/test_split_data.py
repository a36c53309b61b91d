"""Split-data Prune-and-Fuse (`compress --split-data K`): K students distilled on disjoint parts,
merged with OT, the merged one distilled on all inputs."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

pytest.importorskip("torch")

from tests.helpers import run_cli  # noqa: E402
from tests.tiny_models import assert_user_error  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINYRES = ROOT / "models" / "tinyres_fmnist_folded.onnx"
CALIB = ROOT / "models" / "data" / "fmnist_calib512.npz"
TRAIN = ROOT / "models" / "data" / "fmnist_train2000.npz"


def test_two_students_are_merged_and_the_budget_is_shared(tmp_path, capsys):
    out = tmp_path / "small.onnx"
    code, _, err = run_cli(["compress", TINYRES, "-o", out, "--target-macs", "0.5", "--allocate", "uniform",
                            "--method", "fuse", "--calib", CALIB, "--calib-samples", "64", "--split-data", "2",
                            "--train-data", TRAIN, "--train-steps", "8", "--batch", "16", "--val-every", "2",
                            "--val-samples", "32", "--report", tmp_path / "r.json"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    split = report["split_data"]
    assert split["parts"] == 2 and split["steps_per_part"] == 2
    assert [s["steps"] for s in split["students"]] == [2, 2]
    # each student saw its own half: the held-out slices are disjoint parts of the data
    assert all(s["samples"] + s["validation_samples"] <= 1000 for s in split["students"])
    # students of one parent stay aligned: the OT maps are near the identity
    assert min(split["merge"]["unmoved_share"].values()) > 0.5
    assert report["train"]["steps"] == 4  # the other half, on all inputs
    onnx.checker.check_model(str(out), full_check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.md", "small.onnx"]


def test_split_data_refusals(tmp_path, capsys):
    common = ["compress", TINYRES, "-o", tmp_path / "o.onnx", "--split-data", "2"]
    assert_user_error(common, capsys, tmp_path, "give --train-data")
    assert_user_error([*common, "--train-data", TRAIN, "--method", "tpp"], capsys, tmp_path, "not method tpp")
    assert_user_error([*common, "--train-data", TRAIN, "--train-steps", "3"], capsys, tmp_path, "a step each")


def test_students_as_ray_tasks_give_the_serial_result_byte_for_byte():
    """A real local Ray cluster (started by the run, two workers on this machine) against no Ray."""
    pytest.importorskip("ray")
    import ray

    import onnxfuse

    options = dict(target_macs=0.5, allocate="uniform", method="fuse", calib=str(CALIB), calib_samples=32,
                   split_data=2, train_data=str(TRAIN), train_steps=4, batch=16, val_every=2, val_samples=32,
                   validate=False, quiet=True)
    serial, serial_report = onnxfuse.compress(str(TINYRES), **options)
    try:
        parallel, parallel_report = onnxfuse.compress(str(TINYRES), **options, ray="auto")
        assert ray.is_initialized() and ray.cluster_resources().get("CPU", 0) >= 1
    finally:
        ray.shutdown()
    assert parallel_report["split_data"]["ray"] == "auto"
    assert parallel.SerializeToString() == serial.SerializeToString()


def test_sweep_compresses_as_ray_tasks_with_the_serial_results(tmp_path):
    """`sweep --ray auto`: the compress runs are Ray tasks on a real local cluster; every row but the
    timings equals the serial sweep's."""
    pytest.importorskip("ray")
    import ray

    import onnxfuse

    runs = {}
    try:
        for name, extra in (("serial", {}), ("ray", {"ray": "auto"})):
            runs[name] = onnxfuse.sweep(str(TINYRES), tmp_path / name, (0.3, 0.5), ("prune",), batch=2, runs=1,
                                        threads=1, quiet=True, calib=str(CALIB), calib_samples=32, **extra)
        assert ray.is_initialized()
    finally:
        ray.shutdown()
    timing = {"latency_ms", "speedup", "latency_original_ms", "latency_compressed_ms", "speed_up"}

    def untimed(result):
        return [{k: v for k, v in row.items() if k not in timing and "latency" not in k and "speed" not in k}
                for row in result["rows"]]

    assert len(runs["ray"]["rows"]) == 2 and untimed(runs["ray"]) == untimed(runs["serial"])
