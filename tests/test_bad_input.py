"""Bad input never crashes: one line `error: ...` on stderr, exit status 2, no traceback, no output
file (not even a partial or temporary one) and the input files untouched.

The CLI runs in-process (`onnxfuse.cli.main`) for speed; one test runs it as a real subprocess to
prove that nothing but the one line reaches the terminal.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from tests.helpers import run_cli
from tests.tiny_models import assert_user_error, conv_relu_conv, digest, single_conv, single_relu, snapshot

ROOT = Path(__file__).resolve().parents[1]
TINYRES = ROOT / "models" / "tinyres_fmnist_folded.onnx"
EVAL = ROOT / "models" / "data" / "fmnist_eval2000.npz"


# ---------------------------------------------------------------------------------------------
# tiny models


# ---------------------------------------------------------------------------------------------
# fixtures and the common assertion


# ---------------------------------------------------------------------------------------------
# files that are not (valid) ONNX models


def _bad_files(root: Path) -> dict[str, str]:
    valid = (root / "model.onnx").read_bytes()
    tinyres = TINYRES.read_bytes()
    (root / "folder.onnx").mkdir()
    (root / "empty.onnx").write_bytes(b"")
    (root / "random.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "text.onnx").write_text("this is not a model\n")
    (root / "half.onnx").write_bytes(valid[: len(valid) // 2])
    (root / "half_tinyres.onnx").write_bytes(tinyres[: len(tinyres) // 2])
    (root / "tensor.onnx").write_bytes(numpy_helper.from_array(np.ones((2, 3), np.float32), "t")
                                       .SerializeToString())
    (root / "graph.onnx").write_bytes(conv_relu_conv().graph.SerializeToString())
    (root / "nograph.onnx").write_bytes(helper.make_model(helper.make_graph([], "g", [], []))
                                        .SerializeToString())
    broken = conv_relu_conv()
    broken.graph.node[1].input[0] = "undefined"
    (root / "invalid.onnx").write_bytes(broken.SerializeToString())
    external = conv_relu_conv()
    onnx.external_data_helper.convert_model_to_external_data(external, location="missing.bin",
                                                             size_threshold=0)
    (root / "external.onnx").write_bytes(external.SerializeToString())
    return {
        "missing": "does_not_exist.onnx",
        "directory": "folder.onnx",
        "empty": "empty.onnx",
        "random-bytes": "random.onnx",
        "text": "text.onnx",
        "truncated": "half.onnx",
        "truncated-tinyres": "half_tinyres.onnx",
        "tensorproto": "tensor.onnx",
        "graphproto": "graph.onnx",
        "no-nodes": "nograph.onnx",
        "invalid-graph": "invalid.onnx",
        "missing-external-data": "external.onnx",
    }


BAD_FILES = ["missing", "directory", "empty", "random-bytes", "text", "truncated", "truncated-tinyres",
             "tensorproto", "graphproto", "no-nodes", "invalid-graph", "missing-external-data"]


@pytest.mark.parametrize("kind", BAD_FILES)
def test_compress_bad_model_file(work, capsys, kind):
    bad = _bad_files(work)[kind]
    assert_user_error(["compress", bad, "-o", "out.onnx", "--sparsity", "0.5", "--report", "r.json"],
                      capsys, work)


@pytest.mark.parametrize("kind", BAD_FILES)
def test_inspect_bad_model_file(work, capsys, kind):
    bad = _bad_files(work)[kind]
    assert_user_error(["inspect", bad], capsys, work)
    assert_user_error(["inspect", bad, "--json"], capsys, work)


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "random-bytes", "truncated",
                                  "tensorproto", "graphproto"])
def test_validate_bad_model_file(work, capsys, kind):
    bad = _bad_files(work)[kind]
    assert_user_error(["validate", bad, "model.onnx"], capsys, work)
    assert_user_error(["validate", "model.onnx", bad], capsys, work)


def test_validate_missing_file(work, capsys):
    assert_user_error(["validate", "model.onnx", "nope.onnx"], capsys, work, match="nope.onnx")
    assert_user_error(["validate", "nope.onnx", "model.onnx"], capsys, work, match="nope.onnx")
    assert_user_error(["validate", "model.onnx", "model.onnx", "--data", "nope.npz"], capsys, work,
                      match="nope.npz")


# ---------------------------------------------------------------------------------------------
# options


@pytest.mark.parametrize("sparsity", ["-0.1", "1.0", "1", "1.5", "abc", "nan", "inf", ""])
def test_bad_sparsity(work, capsys, sparsity):
    assert_user_error(["compress", "model.onnx", "-o", "out.onnx", f"--sparsity={sparsity}"], capsys, work)


@pytest.mark.parametrize("round_to", ["0", "-4", "2.5", "x"])
def test_bad_round_to(work, capsys, round_to):
    assert_user_error(["compress", "model.onnx", "-o", "out.onnx", f"--round-to={round_to}"], capsys, work)


def test_unknown_importance(work, capsys):
    assert_user_error(["compress", "model.onnx", "-o", "out.onnx", "--importance", "taylor"], capsys, work,
                      match="taylor")


def test_unknown_method_and_device(work, capsys):
    assert_user_error(["compress", "model.onnx", "-o", "out.onnx", "--method", "magic"], capsys, work)
    assert_user_error(["compress", "model.onnx", "-o", "out.onnx", "--device", "tpu"], capsys, work)


def test_usage_errors(work, capsys):
    assert_user_error([], capsys, work)
    assert_user_error(["shrink", "model.onnx"], capsys, work)
    assert_user_error(["compress", "model.onnx"], capsys, work)  # -o is required
    assert_user_error(["compress", "model.onnx", "-o", "out.onnx", "--no-such-flag"], capsys, work)
    assert_user_error(["validate", "model.onnx"], capsys, work)


# ---------------------------------------------------------------------------------------------
# output paths


@pytest.mark.parametrize("spelling", ["model.onnx", "./model.onnx", "sub/../model.onnx", "absolute",
                                      "symlink", "hardlink"])
def test_output_is_the_input(work, capsys, spelling):
    (work / "sub").mkdir()
    if spelling == "absolute":
        spelling = str(work / "model.onnx")
    elif spelling == "symlink":
        os.symlink(work / "model.onnx", work / "link.onnx")
        spelling = "link.onnx"
    elif spelling == "hardlink":
        os.link(work / "model.onnx", work / "hard.onnx")
        spelling = "hard.onnx"
    assert_user_error(["compress", "model.onnx", "-o", spelling], capsys, work, match="input")
    assert_user_error(["compress", "model.onnx", "-o", "out.onnx", "--report", spelling], capsys, work,
                      match="input")


def test_input_through_symlink_output_is_the_target(work, capsys):
    os.symlink(work / "model.onnx", work / "link.onnx")
    assert_user_error(["compress", "link.onnx", "-o", "model.onnx"], capsys, work, match="input")


def test_report_is_the_output(work, capsys):
    assert_user_error(["compress", "model.onnx", "-o", "out.onnx", "--report", "./out.onnx"], capsys, work,
                      match="report")


@pytest.mark.parametrize("option", ["--calib", "--data"])
def test_output_is_the_data_file(work, capsys, option):
    """The data read is an input too: neither the model nor the report may replace it."""
    _npz(work / "data.npz", x=_x())
    assert_user_error(["compress", "model.onnx", "-o", "data.npz", option, "data.npz"], capsys, work,
                      match="input")
    assert_user_error(["compress", "model.onnx", "-o", "out.onnx", option, "data.npz", "--report",
                       "./data.npz"], capsys, work, match="input")


def test_unreadable_model(work, capsys, monkeypatch):
    """A permission problem (simulated: the tests may run as root) is a one-line error too."""
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(onnx, "load", denied)
    assert_user_error(["inspect", "model.onnx"], capsys, work, match="Permission denied")


def test_output_directory_missing(work, capsys):
    assert_user_error(["compress", "model.onnx", "-o", "no/such/dir/out.onnx"], capsys, work,
                      match="does not exist")
    assert_user_error(["compress", "model.onnx", "-o", "out.onnx", "--report", "nodir/r.json"], capsys,
                      work, match="does not exist")


def test_output_is_a_directory(work, capsys):
    (work / "outdir").mkdir()
    assert_user_error(["compress", "model.onnx", "-o", "outdir"], capsys, work, match="directory")


def test_output_parent_is_a_file(work, capsys):
    (work / "afile").write_text("x")
    assert_user_error(["compress", "model.onnx", "-o", "afile/out.onnx"], capsys, work)


# ---------------------------------------------------------------------------------------------
# data files (.npz for --calib and --data)


def _npz(path: Path, **arrays) -> str:
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path.name


def _x(n=4, shape=(3, 8, 8), dtype=np.float32):
    return np.random.default_rng(0).standard_normal((n, *shape)).astype(dtype)


def _ids(n=4):
    return np.zeros((n, 4), np.int64)


def _bad_data(root: Path, case: str) -> tuple[str, str]:
    """(model, data file) for one kind of bad data."""
    single, multi = "model.onnx", "two.onnx"
    if case == "missing-file":
        return single, "nope.npz"
    if case == "not-npz":
        (root / "data.npz").write_text("not a zip archive")
        return single, "data.npz"
    if case == "npy-not-npz":
        np.save(root / "data.npy", _x())
        return single, "data.npy"
    if case == "directory":
        (root / "data.npz").mkdir()
        return single, "data.npz"
    if case == "empty-archive":
        return single, _npz(root / "data.npz")
    if case == "object-array":
        return single, _npz(root / "data.npz", x=np.array([{"a": 1}] * 4, dtype=object))
    if case == "missing-input":
        return multi, _npz(root / "data.npz", a=_x())
    if case == "wrong-key-multi":
        return multi, _npz(root / "data.npz", image=_x(), ids=_ids())
    if case == "two-arrays-for-one-input":
        return single, _npz(root / "data.npz", p=_x(), q=_x())
    if case == "wrong-rank":
        return single, _npz(root / "data.npz", x=_x(shape=(3, 8)))
    if case == "scalar":
        return single, _npz(root / "data.npz", x=np.float32(1.0))
    if case == "wrong-channels":
        return single, _npz(root / "data.npz", x=_x(shape=(2, 8, 8)))
    if case == "wrong-width":
        return single, _npz(root / "data.npz", x=_x(shape=(3, 8, 9)))
    if case == "float-for-int64":
        return multi, _npz(root / "data.npz", a=_x(), ids=_ids().astype(np.float32))
    if case == "string-array":
        return single, _npz(root / "data.npz", x=np.full((4, 3, 8, 8), "a"))
    if case == "complex-array":
        return single, _npz(root / "data.npz", x=_x().astype(np.complex64))
    if case == "zero-samples":
        return single, _npz(root / "data.npz", x=_x(n=0))
    if case == "different-lengths":
        return multi, _npz(root / "data.npz", a=_x(n=4), ids=_ids(n=3))
    if case == "labels-wrong-length":
        return single, _npz(root / "data.npz", x=_x(), labels=np.zeros(3, np.int64))
    if case == "labels-float":
        return single, _npz(root / "data.npz", x=_x(), labels=np.zeros(4, np.float32))
    if case == "labels-2d":
        return single, _npz(root / "data.npz", x=_x(), labels=np.zeros((4, 1), np.int64))
    raise AssertionError(case)


DATA_CASES = ["missing-file", "not-npz", "npy-not-npz", "directory", "empty-archive", "object-array",
              "missing-input", "wrong-key-multi", "two-arrays-for-one-input", "wrong-rank", "scalar",
              "wrong-channels", "wrong-width", "float-for-int64", "string-array", "complex-array",
              "zero-samples", "different-lengths", "labels-wrong-length", "labels-float", "labels-2d"]


@pytest.mark.parametrize("option", ["--calib", "--data"])
@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_compress_data(work, capsys, case, option):
    model, data = _bad_data(work, case)
    assert_user_error(["compress", model, "-o", "out.onnx", option, data, "--report", "r.json"],
                      capsys, work)


@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_validate_data(work, capsys, case):
    model, data = _bad_data(work, case)
    assert_user_error(["validate", model, model, "--data", data], capsys, work)


def test_missing_input_names_the_input(work, capsys):
    _npz(work / "data.npz", a=_x())
    line = assert_user_error(["validate", "two.onnx", "two.onnx", "--data", "data.npz"], capsys, work)
    assert "ids" in line


def test_good_data_is_accepted(work, capsys):
    """The counterpart of the cases above: uint8 images, any key for a single input, int labels."""
    _npz(work / "one.npz", images=(_x() * 40 + 100).clip(0, 255).astype(np.uint8),
         labels=np.array([0, 1, 2, 3]))
    _npz(work / "two.npz", a=_x(), ids=_ids().astype(np.int32))
    code, out, err = run_cli(["validate", "model.onnx", "model.onnx", "--data", "one.npz"], capsys)
    assert code == 0, err
    assert "top-1 agreement: 100.00%" in out
    code, out, err = run_cli(["validate", "two.onnx", "two.onnx", "--data", "two.npz"], capsys)
    assert code == 0, err


def test_validate_models_with_different_interfaces(work, capsys):
    """Two unrelated models: a clear error, not an ONNX Runtime traceback."""
    assert_user_error(["validate", "model.onnx", "two.onnx"], capsys, work)


def test_dynamic_dimensions_the_model_runs_at_no_tried_size(work, capsys):
    """A dynamic H, W but a head that needs 5×5 (not a size we try): say so, name --input-shape."""
    from tests.netbuilder import Net

    net = Net(("N", 3, "H", "W"))
    flat = net.op("Flatten", [net.conv("x", 3, 4, k=3)])
    onnx.save(net.model(net.gemm(flat, 4 * 5 * 5, 2)), work / "dyn.onnx")
    assert_user_error(["compress", "dyn.onnx", "-o", "out.onnx"], capsys, work, match="--input-shape")


# ---------------------------------------------------------------------------------------------
# models without anything to prune are fine


@pytest.mark.parametrize("build", [
    pytest.param(single_relu, id="relu"),
    pytest.param(single_conv, id="conv"),
])
def test_model_without_prunable_group_is_copied(tmp_path, capsys, build):
    model = build()
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    before = digest(src)
    code, _, err = run_cli(["compress", src, "-o", dst, "--sparsity", "0.5", "--report", tmp_path / "r.json"],
                           capsys)
    assert code == 0, err
    assert "Traceback" not in err
    assert digest(src) == before
    out = onnx.load(dst)
    onnx.checker.check_model(out, full_check=True)
    assert [i.name for i in out.graph.input] == [i.name for i in model.graph.input]
    assert [o.name for o in out.graph.output] == [o.name for o in model.graph.output]
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
           for m in (model, out)]
    np.testing.assert_allclose(run[1], run[0], rtol=1e-5, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "out.onnx", "r.json", "r.md"]


# ---------------------------------------------------------------------------------------------
# the real terminal


def test_subprocess_prints_one_line_and_exits_2(work):
    (work / "random.onnx").write_bytes(np.random.default_rng(0).bytes(2048))
    before = snapshot(work)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "onnxfuse.cli", "compress", "random.onnx", "-o", "out.onnx",
                           "--sparsity", "0.5"], cwd=work, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: random.onnx"), proc.stderr
    assert snapshot(work) == before
