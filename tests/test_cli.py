"""Happy paths of the command line (`compress`, `inspect`, `validate`) and of the Python API,
on the committed Fashion-MNIST tinyres model and its 2000-image sample."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxfuse
from onnxfuse.cli import main
from onnxfuse.errors import OnnxfuseError
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
FOLDED = ROOT / "models" / "tinyres_fmnist_folded.onnx"
WITH_BN = ROOT / "models" / "tinyres_fmnist_bn.onnx"
EVAL = ROOT / "models" / "data" / "fmnist_eval2000.npz"
GROUP_KEYS = {"id", "width", "producers", "consumers", "mac_share", "prunable"}


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _session(path_or_model) -> ort.InferenceSession:
    model = path_or_model if isinstance(path_or_model, onnx.ModelProto) else onnx.load(path_or_model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _images(n: int = 5) -> np.ndarray:
    with np.load(EVAL) as data:
        return data["input"][:n].astype(np.float32)


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    """`onnxfuse compress tinyres -o out.onnx --sparsity 0.5 --calib eval2000.npz --calib-samples 2000
    --report r.json`, once (validation then runs on all 2000 calibration images)."""
    folder = tmp_path_factory.mktemp("compress")
    out, report = folder / "out.onnx", folder / "r.json"
    before = _sha(FOLDED), _sha(EVAL)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()) as stdout:
        code = main(["compress", str(FOLDED), "-o", str(out), "--sparsity", "0.5", "--calib", str(EVAL),
                     "--calib-samples", "2000", "--report", str(report)])
    assert code == 0, stderr.getvalue()
    assert (_sha(FOLDED), _sha(EVAL)) == before
    return {"out": out, "report": report, "stderr": stderr.getvalue(), "stdout": stdout.getvalue(),
            "folder": folder}


# ---------------------------------------------------------------------------------------------
# compress


def test_compress_writes_a_runnable_model(compressed):
    assert f"wrote {compressed['out']}" in compressed["stderr"]
    assert "Traceback" not in compressed["stderr"]
    assert sorted(p.name for p in compressed["folder"].iterdir()) == ["out.onnx", "r.json", "r.md"]  # no temp files
    model = onnx.load(compressed["out"])
    onnx.checker.check_model(model, full_check=True)
    old, new = _session(FOLDED), _session(model)
    assert [i.name for i in new.get_inputs()] == [i.name for i in old.get_inputs()] == ["input"]
    assert [o.name for o in new.get_outputs()] == [o.name for o in old.get_outputs()] == ["logits"]
    (logits,) = new.run(None, {"input": _images(5)})
    assert logits.shape == (5, 10) and logits.dtype == np.float32
    assert np.isfinite(logits).all()
    assert model.graph.ByteSize() < onnx.load(FOLDED).graph.ByteSize()


def test_compress_report(compressed):
    report = json.loads(compressed["report"].read_text())
    for key in ("params_before", "params_after", "macs_before", "macs_after", "groups", "validation"):
        assert key in report, key
    assert 0 < report["params_after"] < report["params_before"]
    assert 0 < report["macs_after"] < report["macs_before"]
    assert report["options"]["sparsity"] == 0.5
    groups = report["groups"]
    assert groups and all(set(g) >= GROUP_KEYS for g in groups)
    shrunk = [g for g in groups if g["prunable"]]
    assert shrunk and all(g["kept"] == g["width"] // 2 for g in shrunk)
    assert all("frozen" in g and "kept" not in g for g in groups if not g["prunable"])


def test_compress_validation_on_calibration_data(compressed):
    val = json.loads(compressed["report"].read_text())["validation"]
    assert val["samples"] == 2000
    assert 0.85 <= val["accuracy_original"] <= 1.0
    assert 0.0 <= val["accuracy_compressed"] <= 1.0
    assert 0.0 <= val["top1_agreement"] <= 1.0
    assert "logits" in val["outputs"]


@pytest.mark.parametrize("options", [["--importance", "l2"], ["--round-to", "8"], ["--ignore", "/b1/*"]],
                         ids=["l2", "round-to", "ignore"])
def test_compress_options(tmp_path, capsys, options):
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    code, _, err = run_cli(["compress", FOLDED, "-o", out, "--sparsity", "0.3", "--no-validate",
                            "--report", report, *options], capsys)
    assert code == 0, err
    groups = json.loads(report.read_text())["groups"]
    _session(out)
    if "--round-to" in options:
        assert all(g["kept"] % 8 == 0 for g in groups if g["prunable"])
    if "--ignore" in options:
        b1 = [g for g in groups if any(p.startswith("/b1/") for p in g["producers"])]
        assert b1 and all(not g["prunable"] and "ignored" in g["frozen"] for g in b1)


def test_compress_keep_bn(tmp_path, capsys):
    out = tmp_path / "out.onnx"
    code, _, err = run_cli(["compress", WITH_BN, "-o", out, "--keep-bn", "--no-validate"], capsys)
    assert code == 0, err
    ops = [n.op_type for n in onnx.load(out).graph.node]
    assert ops.count("BatchNormalization") == [n.op_type for n in onnx.load(WITH_BN).graph.node].count(
        "BatchNormalization") > 0


def test_compress_fuse_method_writes_a_model(tmp_path, capsys):
    out = tmp_path / "out.onnx"
    code, _, err = run_cli(["compress", FOLDED, "-o", out, "--method", "fuse", "--sparsity", "0.3",
                            "--normalization", "average", "--no-validate"], capsys)
    assert code == 0, err
    onnx.checker.check_model(onnx.load(out), full_check=True)


# ---------------------------------------------------------------------------------------------
# inspect


def test_inspect_text(capsys):
    code, out, err = run_cli(["inspect", FOLDED], capsys)
    assert code == 0, err
    code, js, _ = run_cli(["inspect", FOLDED, "--json"], capsys)
    groups = json.loads(js)["groups"]
    lines = out.splitlines()
    assert lines[0].startswith(f"{FOLDED}: ") and f"{len(groups)} groups" in lines[0]
    group_lines = [line for line in lines if line.startswith("group ")]
    assert len(group_lines) == len(groups)
    for line, g in zip(group_lines, groups):
        assert f"width {g['width']:>5}" in line
        assert ("prunable" if g["prunable"] else f"frozen: {g['frozen']}") in line


def test_inspect_json(capsys):
    code, out, err = run_cli(["inspect", FOLDED, "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["params"] > 0 and report["macs"] > 0
    groups = report["groups"]
    assert isinstance(groups, list) and groups
    assert sorted(g["id"] for g in groups) == list(range(len(groups)))
    for g in groups:
        assert set(g) >= GROUP_KEYS
        assert g["width"] > 0 and 0.0 <= g["mac_share"] <= 1.0
        assert isinstance(g["producers"], list) and isinstance(g["consumers"], list)
        assert ("frozen" in g) == (not g["prunable"])
        if not g["prunable"]:
            assert isinstance(g["frozen"], str) and g["frozen"]
    frozen = {g["frozen"].split(" [")[0] for g in groups if not g["prunable"]}
    assert {"graph input", "graph output"} <= frozen
    assert any(g["prunable"] for g in groups)


# ---------------------------------------------------------------------------------------------
# validate


def test_validate_text(compressed, capsys):
    code, out, err = run_cli(["validate", FOLDED, compressed["out"], "--data", EVAL], capsys)
    assert code == 0, err
    assert "2000 samples" in out
    assert "top-1 agreement: " in out
    assert "accuracy: " in out and "% -> " in out
    assert "output logits: max |error|" in out


def test_validate_json_agrees_with_compress_report(compressed, capsys):
    code, out, err = run_cli(["validate", FOLDED, compressed["out"], "--data", EVAL, "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    val = json.loads(compressed["report"].read_text())["validation"]
    assert report["accuracy_original"] == pytest.approx(val["accuracy_original"])
    assert report["accuracy_compressed"] == pytest.approx(val["accuracy_compressed"])
    assert report["top1_agreement"] == pytest.approx(val["top1_agreement"])


def test_validate_model_against_itself(capsys):
    code, out, err = run_cli(["validate", FOLDED, FOLDED, "--data", EVAL, "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["top1_agreement"] == 1.0
    assert report["accuracy_original"] == report["accuracy_compressed"]
    assert report["outputs"]["logits"]["max_abs_error"] == 0.0
    assert report["params_before"] == report["params_after"]


def test_validate_random_inputs(compressed, capsys):
    code, out, err = run_cli(["validate", FOLDED, compressed["out"]], capsys)
    assert code == 0, err
    assert "random inputs" in out and "accuracy" not in out


# ---------------------------------------------------------------------------------------------
# Python API


def test_api_compress_path(capsys):
    model, report = onnxfuse.compress(str(FOLDED), sparsity=0.5, quiet=True)
    assert isinstance(model, onnx.ModelProto) and isinstance(report, dict)
    assert report["params_after"] < report["params_before"]
    assert report["validation"]["samples"] > 0
    assert capsys.readouterr().err == ""  # quiet
    (logits,) = _session(model).run(None, {"input": _images(3)})
    assert logits.shape == (3, 10)


def test_api_compress_does_not_modify_the_model_proto():
    original = onnx.load(FOLDED)
    before = original.SerializeToString()
    model, report = onnxfuse.compress(original, sparsity=0.5, validate=False, quiet=True)
    assert original.SerializeToString() == before
    assert model is not original
    assert report["params_after"] < report["params_before"]
    by_path, _ = onnxfuse.compress(FOLDED, sparsity=0.5, validate=False, quiet=True)
    assert len(model.graph.node) == len(by_path.graph.node)


def test_api_rejects_other_types():
    with pytest.raises(OnnxfuseError):
        onnxfuse.compress(b"not a model", sparsity=0.5, quiet=True)
    with pytest.raises(OnnxfuseError):
        onnxfuse.compress(str(FOLDED), sparsity=1.0, quiet=True)
