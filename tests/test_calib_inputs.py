"""Calibration inputs: an .npz or a folder of images (preprocessing), `--calib-samples` with `--seed`,
and `onnxfuse calib make`, on tiny in-memory models and the committed tinyres Fashion-MNIST model."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from onnxfuse import api
from onnxfuse.calibration.data import load_calibration
from onnxfuse.calibration.images import Preprocess
from onnxfuse.cli import main
from onnxfuse.errors import OnnxfuseError
from onnxfuse.pipeline import Options
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
TINYRES = ROOT / "models" / "tinyres_fmnist_folded.onnx"  # input `input` float32 (N,1,28,28), raw 0..255


def identity(shape, name="x", dtype=TensorProto.FLOAT) -> onnx.ModelProto:
    """A one-node model whose only role is its input: name, shape, dtype."""
    graph = helper.make_graph([helper.make_node("Identity", [name], ["y"], name="id")], "id",
                              [helper.make_tensor_value_info(name, dtype, shape)],
                              [helper.make_tensor_value_info("y", dtype, shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def pattern(h=4, w=6) -> np.ndarray:
    """A known RGB pattern (H, W, 3) uint8: R = 10y + x, G = 100 + 20y, B = 200 - 7x."""
    y, x = np.mgrid[:h, :w]
    return np.stack([10 * y + x, 100 + 20 * y, 200 - 7 * x], axis=-1).astype(np.uint8)


def save_png(folder: Path, name: str, pixels: np.ndarray) -> Path:
    path = folder / name
    Image.fromarray(pixels).save(path)
    return path


def _tree(root: Path) -> dict[str, str | None]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """10 images of different sizes and kinds (RGB/grey, PNG/JPEG) plus two files that are not images."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(10):
        h, w = 20 + 3 * i, 40 - 2 * i
        rgb = i % 3 != 0
        pixels = rng.integers(0, 256, (h, w, 3) if rgb else (h, w), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:02d}.{'jpg' if i % 2 else 'png'}")
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "labels.csv").write_text("a,b\n")
    return folder


# ---------------------------------------------------------------------------------------------
# preprocessing, numerically on a known pattern


def _one(folder: Path, model: onnx.ModelProto, **pre) -> np.ndarray:
    data = load_calibration(folder, model, preprocess=Preprocess(**pre))
    (array,) = data.feeds.values()
    return array


def test_rgb_nchw_raw_pixels(tmp_path):
    save_png(tmp_path, "a.png", pattern())
    x = _one(tmp_path, identity(["N", 3, 4, 6]))
    assert x.shape == (1, 3, 4, 6) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0], pattern().transpose(2, 0, 1).astype(np.float32))


def test_nhwc_from_the_model_shape_and_forced(tmp_path):
    save_png(tmp_path, "a.png", pattern())
    x = _one(tmp_path, identity(["N", 4, 6, 3]))
    assert x.shape == (1, 4, 6, 3)
    np.testing.assert_array_equal(x[0], pattern().astype(np.float32))
    y = _one(tmp_path, identity(["N", "H", "W", "C"]), layout="NHWC", size=(4, 6))  # nothing static
    np.testing.assert_array_equal(y, x)


def test_scale_mean_std(tmp_path):
    save_png(tmp_path, "a.png", pattern())
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = _one(tmp_path, identity(["N", 3, 4, 6]), scale=1 / 255, mean=mean, std=std)
    want = (pattern().astype(np.float32) / 255 - np.float32(mean)) / np.float32(std)
    np.testing.assert_allclose(x[0], want.transpose(2, 0, 1), rtol=1e-6, atol=1e-6)
    one = _one(tmp_path, identity(["N", 3, 4, 6]), mean=(100,), std=(2,))  # one value for every channel
    np.testing.assert_allclose(one[0], (pattern().transpose(2, 0, 1) - 100.0) / 2)


def test_grey_and_rgb_conversion(tmp_path):
    save_png(tmp_path, "a.png", pattern())
    grey = _one(tmp_path, identity(["N", 1, 4, 6]))  # 1 channel: RGB image -> luma (ITU-R 601-2)
    r, g, b = (pattern().astype(np.float64)[..., c] for c in range(3))
    assert grey.shape == (1, 1, 4, 6)
    assert np.abs(grey[0, 0] - (0.299 * r + 0.587 * g + 0.114 * b)).max() <= 1.0
    (tmp_path / "a.png").unlink()
    save_png(tmp_path, "b.png", pattern()[..., 0])  # grey image into a 3-channel model: channels equal
    rgb = _one(tmp_path, identity(["N", 3, 4, 6]))
    for c in range(3):
        np.testing.assert_array_equal(rgb[0, c], pattern()[..., 0])
    forced = _one(tmp_path, identity(["N", "C", 4, 6]), color="grey", layout="NCHW")
    assert forced.shape == (1, 1, 4, 6)


def test_resize_to_the_model_size_and_to_preprocess_size(tmp_path):
    save_png(tmp_path, "a.png", np.full((13, 17, 3), (30, 60, 90), np.uint8))
    x = _one(tmp_path, identity(["N", 3, 4, 6]))
    assert x.shape == (1, 3, 4, 6)
    np.testing.assert_array_equal(x[0, :, 0, 0], [30, 60, 90])
    assert np.all(x[0] == x[0, :, :1, :1])  # a uniform image stays uniform
    gradient = np.tile(np.arange(0, 250, 10, dtype=np.uint8)[None, :, None], (8, 1, 3))  # 8×25, along x
    (tmp_path / "a.png").unlink()
    save_png(tmp_path, "g.png", gradient)
    y = _one(tmp_path, identity(["N", 3, "H", "W"]), size=(5, 7))  # H=5, W=7: not swapped
    assert y.shape == (1, 3, 5, 7)
    want = np.asarray(Image.fromarray(gradient).resize((7, 5), Image.Resampling.BILINEAR), np.float32)
    np.testing.assert_array_equal(y[0], want.transpose(2, 0, 1))
    assert np.all(np.diff(y[0, 0, 0]) > 0)


def test_uint8_model_input(tmp_path):
    save_png(tmp_path, "a.png", pattern())
    x = _one(tmp_path, identity(["N", 4, 6, 3], dtype=TensorProto.UINT8))
    assert x.dtype == np.uint8
    np.testing.assert_array_equal(x[0], pattern())
    with pytest.raises(OnnxfuseError, match="float"):
        _one(tmp_path, identity(["N", 4, 6, 3], dtype=TensorProto.UINT8), scale=1 / 255)


@pytest.mark.parametrize("shape,pre,match", [
    (["N", 3, "H", "W"], {}, "preprocess-size"),
    (["N", 3, 4, 6], {"size": (5, 6)}, "5×6"),
    (["N", 5, 4, 6], {}, "channel"),
    (["N", 3, 4, 6], {"color": "grey"}, "channel"),
    (["N", 8, 8], {}, "rank"),
    (["N", 3, 4, 6], {"mean": (1.0, 2.0)}, "mean"),
    (["N", 3, 4, 6], {"std": (1.0, 0.0, 1.0)}, "std"),
    (["N", 3, 4, 6], {"scale": 0}, "scale"),
    (["N", 3, 4, 6], {"layout": "CHWN"}, "layout"),
], ids=["dynamic-hw", "size-mismatch", "five-channels", "grey-for-rgb", "rank-3", "mean-2", "std-0",
        "scale-0", "layout"])
def test_preprocess_errors(tmp_path, shape, pre, match):
    save_png(tmp_path, "a.png", pattern())
    with pytest.raises(OnnxfuseError, match=match):
        _one(tmp_path, identity(shape), **pre)


def test_folder_reading_order_and_skipped_files(images, capsys):
    data = load_calibration(images, onnx.load(TINYRES))
    messages = capsys.readouterr().err.splitlines()
    x = data.feeds["input"]
    assert x.shape == (10, 1, 28, 28) and x.dtype == np.float32
    assert messages == [f"warning: {images}: skipped 2 file(s) that are not images"]
    first = np.asarray(Image.open(images / "img00.png").convert("L").resize((28, 28), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(x[0, 0], first)  # sorted order; raw 0..255 values (scale 1)
    assert 200 < x.max() <= 255 and x.min() >= 0


# ---------------------------------------------------------------------------------------------
# bounded, seeded selection


def test_calib_samples_bound_and_seed(images, tmp_path):
    model = onnx.load(TINYRES)
    full = load_calibration(images, model).feeds["input"]

    def rows(samples, seed):
        x = load_calibration(images, model, samples=samples, seed=seed).feeds["input"]
        return [next(i for i in range(len(full)) if np.array_equal(full[i], row)) for row in x]

    a, b, c = rows(4, 0), rows(4, 0), rows(4, 1)
    assert len(a) == 4 and a == sorted(set(a))  # without replacement, in folder order
    assert a == b and a != c
    assert rows(100, 3) == list(range(10))  # all when fewer
    # the same draw from an .npz (labels follow their rows)
    np.savez(tmp_path / "all.npz", input=full, labels=np.arange(10))
    npz = load_calibration(tmp_path / "all.npz", model, samples=4, seed=1)
    np.testing.assert_array_equal(npz.labels, c)
    np.testing.assert_array_equal(npz.feeds["input"], full[c])


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_calib_samples_must_be_a_positive_int(bad):
    with pytest.raises(OnnxfuseError, match="calib-samples"):
        Options(calib_samples=bad).check()


# ---------------------------------------------------------------------------------------------
# calib make and compress --calib DIR


@pytest.fixture(scope="module")
def made(images, tmp_path_factory):
    """`calib make` (8 of the 10 images) and `compress` with that npz and with the folder itself."""
    out = tmp_path_factory.mktemp("made")
    npz = out / "calib.npz"
    assert main(["calib", "make", str(images), "-o", str(npz), "--model", str(TINYRES),
                 "--calib-samples", "8", "--seed", "5"]) == 0
    results = {}
    for name, source in (("npz", npz), ("dir", images)):
        model = out / f"{name}.onnx"
        report = out / f"{name}.json"
        code = main(["compress", str(TINYRES), "-o", str(model), "--calib", str(source), "--calib-samples", "8",
                     "--seed", "5", "--sparsity", "0.5", "--report", str(report)])
        assert code == 0
        results[f"{name}_run"] = (model, report)
    return {"folder": out, "npz": npz, **results}


def test_calib_make_writes_the_cli_contract(made, images):
    with np.load(made["npz"]) as f:
        assert f.files == ["input"]
        x = f["input"]
    assert x.shape == (8, 1, 28, 28) and x.dtype == np.float32
    assert x.max() > 1.5  # raw pixel values, not scaled
    full = load_calibration(images, onnx.load(TINYRES)).feeds["input"]
    np.testing.assert_array_equal(x, full[np.sort(np.random.default_rng(5).choice(10, 8, replace=False))])
    assert not [p for p in made["folder"].iterdir() if p.name.startswith(".")]  # no temp file left


def test_compress_accepts_the_npz_and_the_folder_alike(made):
    import json

    (npz_model, npz_report), (dir_model, dir_report) = made["npz_run"], made["dir_run"]
    assert Path(npz_model).read_bytes() == Path(dir_model).read_bytes()
    a, b = json.loads(Path(npz_report).read_text()), json.loads(Path(dir_report).read_text())
    assert a["options"]["calib_samples"] == 8 and a["options"]["preprocess"]["scale"] == 1.0
    assert a["repair"] and a["repair"] == b["repair"]
    va, vb = a["validation"], b["validation"]
    assert va["samples"] == vb["samples"] == 8 and va["outputs"] == vb["outputs"]


def test_calib_make_messages(images, tmp_path, capsys):
    code, out, err = run_cli(["calib", "make", images, "-o", tmp_path / "c.npz", "--model", TINYRES,
                              "--calib-samples", "3"], capsys)
    assert code == 0 and out == ""
    assert err.splitlines() == [f"warning: {images}: skipped 2 file(s) that are not images",
                                f"wrote {tmp_path / 'c.npz'}: 3 samples, 'input' float32 (3, 1, 28, 28)"]


def test_calib_make_preprocess_options(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    save_png(folder, "a.png", pattern())
    onnx.save(identity(["N", "H", "W", 3]), tmp_path / "nhwc.onnx")
    code, _, err = run_cli(["calib", "make", folder, "-o", tmp_path / "c.npz", "--model", tmp_path / "nhwc.onnx",
                            "--preprocess-size", "4,6", "--scale", "1/255", "--mean", "0.5", "--std", "0.25,0.5,1"],
                           capsys)
    assert code == 0, err
    with np.load(tmp_path / "c.npz") as f:
        want = (pattern() / 255.0 - 0.5) / np.array([0.25, 0.5, 1.0])
        np.testing.assert_allclose(f["x"][0], want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# errors: one line, exit 2, nothing written


@pytest.fixture
def work(tmp_path, monkeypatch, images):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imgs").mkdir()
    for p in sorted(images.iterdir())[:3]:
        (tmp_path / "imgs" / p.name).write_bytes(p.read_bytes())
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    onnx.save(onnx.load(TINYRES), tmp_path / "model.onnx")
    two = identity(["N", 1, 28, 28])
    two.graph.input.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 1, 28, 28]))
    two.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 1, 28, 28]))
    onnx.save(two, tmp_path / "two.onnx")
    (tmp_path / "afile").write_text("x")
    return tmp_path


def assert_user_error(argv, capsys, root: Path, match: str) -> None:
    before = _tree(root)
    code, out, err = run_cli(argv, capsys)
    assert code == 2, err
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert match in err, err
    assert _tree(root) == before  # no output, no temporary file


MAKE = ["calib", "make"]


@pytest.mark.parametrize("argv,match", [
    (MAKE + ["nope", "-o", "c.npz", "--model", "model.onnx"], "no such folder"),
    (MAKE + ["afile", "-o", "c.npz", "--model", "model.onnx"], "not a folder"),
    (MAKE + ["empty", "-o", "c.npz", "--model", "model.onnx"], "no image"),
    (MAKE + ["imgs", "-o", "nodir/c.npz", "--model", "model.onnx"], "does not exist"),
    (MAKE + ["imgs", "-o", "afile/c.npz", "--model", "model.onnx"], "is a file"),
    (MAKE + ["imgs", "-o", "empty", "--model", "model.onnx"], "directory"),
    (MAKE + ["imgs", "-o", "model.onnx", "--model", "model.onnx"], "input"),
    (MAKE + ["imgs", "-o", "c.npz", "--model", "two.onnx"], "one image input"),
    (MAKE + ["imgs", "-o", "c.npz", "--model", "missing.onnx"], "no such file"),
    (MAKE + ["imgs", "-o", "c.npz"], "--model"),
    (MAKE + ["imgs", "-o", "c.npz", "--model", "model.onnx", "--calib-samples", "0"], "positive integer"),
    (MAKE + ["imgs", "-o", "c.npz", "--model", "model.onnx", "--scale", "1/0"], "--scale"),
    (MAKE + ["imgs", "-o", "c.npz", "--model", "model.onnx", "--preprocess-size", "28"], "H,W"),
    (MAKE + ["imgs", "-o", "c.npz", "--model", "model.onnx", "--preprocess-size", "32,32"], "32×32"),
    (MAKE + ["imgs", "-o", "c.npz", "--model", "model.onnx", "--mean", "a,b"], "--mean"),
    (MAKE + ["imgs", "-o", "c.npz", "--model", "model.onnx", "--color", "rgb"], "channel"),
    (["calib"], "make"),
    (["compress", "model.onnx", "-o", "out.onnx", "--calib", "empty"], "no image"),
    (["compress", "model.onnx", "-o", "out.onnx", "--calib", "imgs", "--calib-samples", "-1"], "positive"),
    (["compress", "model.onnx", "-o", "out.onnx", "--calib", "imgs", "--std", "0"], "std"),
    (["compress", "two.onnx", "-o", "out.onnx", "--calib", "imgs"], "one image input"),
], ids=["missing-dir", "file-not-dir", "no-images", "out-dir-missing", "out-parent-file", "out-is-dir",
        "out-is-model", "two-inputs", "missing-model", "no-model", "samples-0", "scale-1/0", "size-one-number",
        "size-mismatch", "mean-text", "rgb-for-grey", "calib-no-sub", "compress-no-images",
        "compress-samples", "compress-std-0", "compress-two-inputs"])
def test_bad_input(work, capsys, argv, match):
    assert_user_error(argv, capsys, work, match)


def test_unwritable_output_folder(work, capsys, monkeypatch):
    """Simulated (the tests may run as root, for whom every folder is writable)."""
    real, ro = os.access, (work / "ro").resolve()
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p).resolve() != ro and real(p, mode, **kw))
    (work / "ro").mkdir()
    assert_user_error(MAKE + ["imgs", "-o", "ro/c.npz", "--model", "model.onnx"], capsys, work, "not writable")


def test_corrupt_image_is_one_line(work, capsys):
    jpeg = next(p for p in sorted((work / "imgs").iterdir()) if p.suffix == ".jpg")
    jpeg.write_bytes(jpeg.read_bytes()[:-300])  # a valid header, truncated data
    assert_user_error(MAKE + ["imgs", "-o", "c.npz", "--model", "model.onnx"], capsys, work, jpeg.name)


def test_api_make_calibration_without_output(images):
    data = api.make_calibration(images, TINYRES, samples=2, seed=0)
    assert data.feeds["input"].shape == (2, 1, 28, 28)


def test_preprocess_options_on_an_npz_warn(tmp_path, capsys):
    np.savez(tmp_path / "d.npz", input=np.zeros((3, 1, 28, 28), np.float32))
    data = load_calibration(tmp_path / "d.npz", onnx.load(TINYRES), preprocess=Preprocess(scale=0.5))
    messages = capsys.readouterr().err.splitlines()
    assert len(data) == 3 and messages and "ignored" in messages[0]
