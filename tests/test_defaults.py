"""The recipe behind options left at "auto" (pipeline/defaults.py): what each becomes with and
without calibration data and a MAC budget, that a user's own choice always wins, and that the
report and the summary say what was chosen."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import onnxfuse
from onnxfuse import pipeline
from onnxfuse.methods.intra_fusion import FusionOptions
from onnxfuse.pipeline.defaults import CALIBRATED, DATA_FREE
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
TINYRES = ROOT / "models" / "tinyres_fmnist_folded.onnx"
CALIB = ROOT / "models" / "data" / "fmnist_calib512.npz"


def _recipe(options: pipeline.Options) -> dict:
    o = options.with_defaults()
    return {"method": o.method, "importance": o.importance, "allocate": o.allocate, "repair": o.repair,
            "normalization": o.fusion.normalization, "features": o.fusion.features}


def test_without_calibration_data_the_defaults_are_data_free():
    assert _recipe(pipeline.Options()) == DATA_FREE
    assert _recipe(pipeline.Options(target_macs=0.5)) == DATA_FREE  # no data: nothing to allocate by


def test_with_calibration_data_and_a_mac_budget_the_defaults_are_the_calibrated_recipe():
    assert _recipe(pipeline.Options(calib="c.npz", target_macs=0.25)) == CALIBRATED
    assert CALIBRATED["allocate"] == "sensitivity" and CALIBRATED["repair"] == "lsq"
    plain = _recipe(pipeline.Options(calib="c.npz", sparsity=0.3))  # a fixed sparsity: nothing to share out
    assert plain == {**CALIBRATED, "allocate": "uniform"}
    latency = _recipe(pipeline.Options(calib="c.npz", target_latency=0.5))  # latency plans its own allocation
    assert latency["allocate"] == "uniform"
    pipeline.Options(calib="c.npz", target_latency=0.5).check()  # and that is not an error


def test_a_choice_the_user_makes_is_kept():
    options = pipeline.Options(calib="c.npz", target_macs=0.5, method="fuse", importance="lamp", allocate="uniform",
                               repair="stats", fusion=FusionOptions(normalization="average"))
    assert _recipe(options) == {"method": "fuse", "importance": "lamp", "allocate": "uniform", "repair": "stats",
                                "normalization": "average", "features": CALIBRATED["features"]}
    assert _recipe(pipeline.Options(method="fuse"))["features"] == "weights"  # fuse without data: weights only


def test_the_report_and_summary_say_what_auto_became(tmp_path, capsys):
    calib = np.load(CALIB)["input"][:24]
    np.savez(tmp_path / "calib.npz", input=calib)
    code, _, err = run_cli(["compress", TINYRES, "-o", tmp_path / "out.onnx", "--sparsity", "0.3", "--calib",
                            tmp_path / "calib.npz", "--importance", "l2", "--report", tmp_path / "r.json"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["defaults"] == {"method": CALIBRATED["method"], "allocate": "uniform", "repair": "lsq"}
    assert report["options"]["importance"] == "l2" and report["options"]["repair"] == "lsq"
    assert "defaults (auto): method" in err
    assert all({"rows", "columns", "ridge", "refit"} <= set(row) for row in report["repair"])


def test_auto_is_offered_on_the_command_line(capsys):
    code, out, _ = run_cli(["compress", "--help"], capsys)
    assert code == 0
    for flag in ("--method", "--importance", "--allocate", "--repair", "--normalization", "--ot-features"):
        line = out[out.index(flag):]
        assert "auto" in line[:line.index("\n  --", 2) if "\n  --" in line else None], flag


@pytest.mark.parametrize("bad", ["automatic", "Auto"])
def test_auto_is_the_only_new_word(bad):
    with pytest.raises(onnxfuse.OnnxfuseError):
        pipeline.Options(method=bad).check()


def _dynamic_spatial(model):
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    return model


def test_dynamic_input_dimensions_take_the_first_size_the_model_runs_at():
    """tinyres flattens a 7×7 map into its classifier, so only 28×28 inputs run: 224 and 32 are
    tried and refused, 28 is taken, and the MACs are those of the static model."""
    import onnx

    static = onnxfuse.inspect(str(TINYRES))
    _, report = onnxfuse.compress(_dynamic_spatial(onnx.load(TINYRES)), 0.3, quiet=True)
    assert report["assumed_input_shapes"] == {"input": [1, 1, 28, 28]}
    assert report["macs_before"] == static["macs"] and report["validation"]["samples"] == 8


def test_the_models_own_image_size_comes_first():
    """Ultralytics exports write `imgsz` into the metadata: a fully convolutional model takes it."""
    import onnx

    from tests.tiny_models import thin_mobile

    model = thin_mobile()
    _dynamic_spatial(model)
    onnx.helper.set_model_props(model, {"imgsz": "[64, 96]"})
    _, report = onnxfuse.compress(model, 0.3, quiet=True, validate=False)
    assert report["assumed_input_shapes"] == {"x": [1, 3, 64, 96]}
    del model.metadata_props[:]
    _, report = onnxfuse.compress(onnx.load_from_string(model.SerializeToString()), 0.3, quiet=True, validate=False)
    assert report["assumed_input_shapes"] == {"x": [1, 3, 224, 224]}


def _quality_files(tmp_path, n_calib=64, n_data=300):
    np.savez(tmp_path / "calib.npz", input=np.load(CALIB)["input"][:n_calib])
    with np.load(ROOT / "models" / "data" / "fmnist_eval2000.npz") as data:
        np.savez(tmp_path / "data.npz", input=data["input"][:n_data], labels=data["labels"][:n_data])
    return str(tmp_path / "calib.npz"), str(tmp_path / "data.npz")


def test_min_agreement_finds_the_smallest_ratio_that_meets_it_and_reports_every_point(tmp_path):
    from onnxfuse.planning.quality import STEPS

    calib, data = _quality_files(tmp_path)
    _, report = onnxfuse.compress(str(TINYRES), calib=calib, data=data, min_agreement=0.9, allocate="uniform",
                                  quiet=True)
    search = report["quality_search"]
    assert len(search["points"]) == STEPS
    met = [p for p in search["points"] if p["meets"]]
    assert met and search["chosen_mac_ratio"] == min(p["mac_ratio"] for p in met)
    missed = [p["mac_ratio"] for p in search["points"] if not p["meets"]]
    assert all(m < search["chosen_mac_ratio"] for m in missed)  # bisection: every miss lies below the choice
    chosen = next(p for p in met if p["mac_ratio"] == search["chosen_mac_ratio"])
    assert report["validation"]["top1_agreement"] == pytest.approx(chosen["top1_agreement"], abs=1e-4)
    assert report["validation"]["top1_agreement"] >= 0.9


def test_an_unmeetable_quality_target_exits_2_with_the_best_point(tmp_path, capsys, monkeypatch):
    from onnxfuse.planning import quality

    monkeypatch.setattr(quality, "STEPS", 2)  # 0.5 and 0.75 of the MACs: neither keeps every prediction
    calib, data = _quality_files(tmp_path)
    out = tmp_path / "out.onnx"
    code, _, err = run_cli(["compress", TINYRES, "-o", out, "--calib", calib, "--data", data, "--min-agreement", "1",
                            "--allocate", "uniform"], capsys)
    assert code == 2 and not out.exists()
    assert "cannot meet top-1 agreement 1.0: the best point tried is top-1 agreement" in err
    assert "at 0.750 of the MACs" in err and err.count("\n") <= 8


@pytest.mark.parametrize("argv, match", [
    (["--min-agreement", "0.9"], "give --data"),
    (["--min-agreement", "0.9", "--target-macs", "0.5", "--data", "D"], "chooses the MACs itself"),
    (["--min-agreement", "0.9", "--max-accuracy-drop", "0.01", "--data", "D"], "one of"),
    (["--min-agreement", "1.5", "--data", "D"], "min-agreement must be"),
])
def test_quality_targets_refuse_what_they_cannot_use(argv, match):
    options = {"min_agreement": None, "max_accuracy_drop": None, "target_macs": None, "data": None}
    keys = {"--min-agreement": "min_agreement", "--max-accuracy-drop": "max_accuracy_drop",
            "--target-macs": "target_macs", "--data": "data"}
    for flag, value in zip(argv[::2], argv[1::2]):
        options[keys[flag]] = value if flag == "--data" else float(value)
    with pytest.raises(onnxfuse.OnnxfuseError, match=match):
        pipeline.Options(**options).check()
