"""Checks on the committed Fashion-MNIST reference models and data samples.

Runs on committed files only (no training, no full dataset needed):
  * sample files have the right keys / shapes / dtypes / class balance;
  * each `*_fmnist_bn.onnx` has inference-mode BatchNormalization nodes and its
    `*_fmnist_folded.onnx` twin has none;
  * both agree with each other (ONNX Runtime, max abs diff <= 1e-4);
  * input `input` (N,1,28,28) float32 with a dynamic batch, output `logits` (N,10);
  * accuracy on the committed 2000-image sample is above a per-model threshold.
"""
from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
DATA = MODELS / "data"
CALIB = DATA / "fmnist_calib512.npz"
EVAL = DATA / "fmnist_eval2000.npz"

# minimum accuracy on the 2000-image sample (targets on the full test split are
# tinyres >= 85 %, resnet18 / vgg11bn >= 92 %, mobilenetv2 >= 90 %).
MIN_ACC = {
    "tinyres": 0.85,
    "resnet18": 0.915,
    "vgg11bn": 0.915,
    "mobilenetv2": 0.895,
    "resnet50s": 0.89,
}
DEFAULT_MIN_ACC = 0.85
EXPECTED_ARCHS = ["tinyres", "resnet18", "vgg11bn", "mobilenetv2", "resnet50s"]
N_DIFF = 256  # images used for the bn-vs-folded comparison


def _archs() -> list[str]:
    return sorted({p.name[: -len("_fmnist_bn.onnx")] for p in MODELS.glob("*_fmnist_bn.onnx")},
                  key=lambda a: (EXPECTED_ARCHS.index(a) if a in EXPECTED_ARCHS else 99, a))


ARCHS = _archs()


@cache
def _npz(path: Path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@cache
def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _run(path: Path, images: np.ndarray, batch: int = 500) -> np.ndarray:
    sess = _session(path)
    return np.concatenate([sess.run(["logits"], {"input": images[i:i + batch].astype(np.float32)})[0]
                           for i in range(0, len(images), batch)])


@cache
def _eval_logits(path: Path) -> np.ndarray:
    return _run(path, _npz(EVAL)["input"])


# --------------------------------------------------------------------------- samples
@pytest.mark.parametrize("path,n", [(CALIB, 512), (EVAL, 2000)])
def test_sample_file(path, n):
    z = _npz(path)
    assert {"input", "labels"} <= set(z)
    x, y = z["input"], z["labels"]
    assert x.shape == (n, 1, 28, 28) and x.dtype == np.uint8
    assert y.shape == (n,) and y.dtype == np.int64
    assert y.min() >= 0 and y.max() <= 9
    assert x.max() > 200 and x.min() == 0  # raw pixels, not normalised
    assert len(np.unique(x.reshape(n, -1), axis=0)) == n  # no duplicates


def test_eval_sample_balanced():
    y = _npz(EVAL)["labels"]
    assert np.bincount(y, minlength=10).tolist() == [200] * 10


def test_calib_sample_has_all_classes():
    y = _npz(CALIB)["labels"]
    assert (np.bincount(y, minlength=10) >= 20).all()


def test_models_committed():
    assert "tinyres" in ARCHS, "models/tinyres_fmnist_bn.onnx is missing"
    for arch in ARCHS:
        assert (MODELS / f"{arch}_fmnist_folded.onnx").exists(), f"{arch}: folded twin missing"


# --------------------------------------------------------------------------- models
@pytest.mark.parametrize("arch", ARCHS)
def test_bn_and_folded_structure(arch):
    bn = onnx.load(str(MODELS / f"{arch}_fmnist_bn.onnx"))
    folded = onnx.load(str(MODELS / f"{arch}_fmnist_folded.onnx"))
    bns = [n for n in bn.graph.node if n.op_type == "BatchNormalization"]
    assert bns, "bn model has no BatchNormalization nodes"
    for n in bns:
        attrs = {a.name: a for a in n.attribute}
        assert "training_mode" not in attrs or attrs["training_mode"].i == 0
        assert len([o for o in n.output if o]) == 1
    assert not [n for n in folded.graph.node if n.op_type == "BatchNormalization"]
    n_conv = sum(n.op_type == "Conv" for n in bn.graph.node)
    assert n_conv == sum(n.op_type == "Conv" for n in folded.graph.node)
    assert len(bns) == n_conv  # every Conv is followed by a BN in these models
    for m in (bn, folded):
        onnx.checker.check_model(m)
        assert any(o.domain in ("", "ai.onnx") and o.version == 17 for o in m.opset_import)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["bn", "folded"])
def test_io_signature_dynamic_batch(arch, kind):
    path = MODELS / f"{arch}_fmnist_{kind}.onnx"
    sess = _session(path)
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.name == "input" and inp.type == "tensor(float)"
    assert out.name == "logits"
    assert list(inp.shape[1:]) == [1, 28, 28] and not isinstance(inp.shape[0], int)
    x = _npz(EVAL)["input"][:3].astype(np.float32)
    for b in (1, 3):
        y = sess.run(None, {"input": x[:b]})[0]
        assert y.shape == (b, 10) and y.dtype == np.float32


@pytest.mark.parametrize("arch", ARCHS)
def test_bn_matches_folded(arch):
    x = _npz(EVAL)["input"][:N_DIFF]
    a = _run(MODELS / f"{arch}_fmnist_bn.onnx", x)
    b = _eval_logits(MODELS / f"{arch}_fmnist_folded.onnx")[:N_DIFF]
    assert np.isfinite(a).all()
    assert float(np.abs(a - b).max()) <= 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_accuracy_on_sample(arch):
    z = _npz(EVAL)
    acc = float((_eval_logits(MODELS / f"{arch}_fmnist_folded.onnx").argmax(1) == z["labels"]).mean())
    assert acc >= MIN_ACC.get(arch, DEFAULT_MIN_ACC), f"{arch}: accuracy {acc:.4f}"
