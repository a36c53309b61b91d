"""Split-data Prune-and-Fuse (`compress --split-data K`): K students distilled on disjoint parts,
merged with OT, the merged one distilled on all inputs; Fuse-and-Prune (`--fuse-first B.onnx`): the
models merged, distilled from their ensemble, then compressed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")

from onnxfuse.graph.ensemble import ensemble  # noqa: E402
from tests.helpers import run, run_cli  # noqa: E402
from tests.test_merge import permuted_copy  # noqa: E402
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


def test_split_data_iteratively_spends_the_budget_once(tmp_path):
    import onnxfuse

    _, report = onnxfuse.compress(str(TINYRES), target_macs=0.5, allocate="uniform", method="fuse", calib=str(CALIB),
                                  calib_samples=32, split_data=2, iterative=2, train_data=str(TRAIN), train_steps=16,
                                  batch=16, val_every=2, val_samples=32, validate=False, quiet=True)
    rounds = report["iterative"]
    assert [r["budget"] for r in rounds] == [8, 8] and [r["steps"] for r in rounds] == [8, 8]
    assert report["split_data"]["steps_per_part"] == 2 and report["train"]["steps"] == 4  # the last round's
    assert report["macs_after"] <= 0.55 * report["macs_before"]


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


def test_sensitivity_probes_as_ray_tasks_give_the_serial_model_byte_for_byte():
    """`--allocate sensitivity --ray auto`: every damage probe a Ray task on a real local cluster, the
    context sent once (the graph as ONNX bytes); the plan and the model equal the serial run's."""
    pytest.importorskip("ray")
    import ray

    import onnxfuse

    options = dict(target_macs=0.25, allocate="sensitivity", calib=str(CALIB), calib_samples=64, validate=False,
                   quiet=True)
    serial, serial_report = onnxfuse.compress(str(TINYRES), **options)
    try:
        parallel, parallel_report = onnxfuse.compress(str(TINYRES), **options, ray="auto")
        assert ray.is_initialized()
    finally:
        ray.shutdown()
    assert parallel_report["allocation"] == serial_report["allocation"]
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


def test_the_ensemble_averages_the_members_outputs():
    members = [onnx.load(TINYRES), permuted_copy(0.2, seed=1)]
    images = np.load(CALIB)["input"][:64].astype(np.float32)
    want = np.mean([run(m, images)[0] for m in members], axis=0)
    assert np.abs(run(members[1], images)[0] - run(members[0], images)[0]).max() > 0.1  # they do differ
    joined = ensemble(members)
    onnx.checker.check_model(joined, full_check=True)
    np.testing.assert_allclose(run(joined, images)[0], want, rtol=1e-5, atol=1e-5)


def test_fuse_first_merges_distils_then_compresses(tmp_path, capsys):
    other = tmp_path / "other.onnx"
    onnx.save(permuted_copy(0.05, seed=2), other)
    out = tmp_path / "small.onnx"
    code, _, err = run_cli(["compress", TINYRES, "--fuse-first", other, "-o", out, "--target-macs", "0.5",
                            "--allocate", "uniform", "--method", "fuse", "--calib", CALIB, "--calib-samples", "64",
                            "--train-data", TRAIN, "--train-steps", "6", "--batch", "16", "--val-every", "2",
                            "--val-samples", "32", "--report", tmp_path / "r.json"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    first = report["fuse_first"]
    assert first["models"][1] == str(other) and first["train"]["steps"] == 3 and report["train"]["steps"] == 3
    # the other model's channels were permuted: OT had to move nearly all of them to match the input's
    assert max(first["merge"]["unmoved_share"].values()) < 0.5
    assert "fuse-first: 2 models merged" in err
    assert report["macs_after"] <= 0.55 * report["macs_before"]
    onnx.checker.check_model(str(out), full_check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.onnx", "r.json", "r.md", "small.onnx"]


def test_fuse_first_refusals(tmp_path, capsys):
    common = ["compress", TINYRES, "-o", tmp_path / "o.onnx", "--fuse-first", TINYRES]
    assert_user_error(common, capsys, tmp_path, "give --train-data")
    assert_user_error([*common, "--train-data", TRAIN, "--split-data", "2"], capsys, tmp_path,
                      "neither iterative nor split-data")
