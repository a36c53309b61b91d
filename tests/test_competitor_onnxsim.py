"""The onnxsim 0.8.1 structured-pruning adapter (benchmarks/competitor_onnxsim.py) on tinyres."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("onnxsim")
ort = pytest.importorskip("onnxruntime")

from benchmarks.competitor_onnxsim import (  # noqa: E402
    VARIANTS,
    mac_count,
    onnxsim_prune,
    pruning_info,
)

MODELS = Path(__file__).resolve().parents[1] / "models"
TINYRES = MODELS / "tinyres_fmnist_folded.onnx"
CALIB = MODELS / "data" / "fmnist_calib512.npz"


@pytest.fixture(scope="module")
def tinyres() -> onnx.ModelProto:
    if not TINYRES.exists():
        pytest.skip(f"{TINYRES} missing")
    return onnx.load(str(TINYRES))


@pytest.fixture(scope="module")
def calib() -> dict[str, np.ndarray]:
    data = np.load(CALIB)
    return {"input": data["input"][:128]}


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_hits_half_the_macs(tinyres, calib, variant):
    pruned = onnxsim_prune(tinyres, variant, target_macs=0.5, calib=calib)
    onnx.checker.check_model(pruned, full_check=True)
    ratio = mac_count(pruned) / mac_count(tinyres)
    assert 0.45 <= ratio <= 0.5
    info = pruning_info(pruned)
    assert info["variant"] == variant and info["mac_ratio"] == pytest.approx(ratio)
    x = calib["input"][:16].astype(np.float32)
    y = _run(pruned, x)
    assert y.shape == (16, 10) and np.isfinite(y).all()


def test_fixed_sparsity_and_argument_checks(tinyres, calib):
    pruned = onnxsim_prune(tinyres, "magnitude", sparsity=0.0)
    assert mac_count(pruned) == mac_count(tinyres)
    with pytest.raises(ValueError):
        onnxsim_prune(tinyres, "magnitude")
    with pytest.raises(ValueError):
        onnxsim_prune(tinyres, "wanda", target_macs=0.5)  # needs calibration data
    with pytest.raises(ValueError):
        onnxsim_prune(tinyres, "slimming", target_macs=0.5, calib=calib)


def test_ridge_refit_is_a_no_op_on_a_cnn(tinyres, calib):
    """Documented in the adapter: onnxsim's refit only touches MatMul/Gemm, and the classifier's
    inputs are not pruned here, so its ridge fit returns the original weights."""
    x = calib["input"][:32].astype(np.float32)
    plain = onnxsim_prune(tinyres, "wanda", sparsity=0.3, calib=calib)
    refit = onnxsim_prune(tinyres, "wanda+refit", sparsity=0.3, calib=calib)
    np.testing.assert_array_equal(_run(plain, x), _run(refit, x))
