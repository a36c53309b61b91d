"""Model fusion (`onnxfuse merge`): the OTFusion oracles on the zoo's TinyRes (residual groups and a
flatten head) and a refusal of models that do not share the architecture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxfuse
from onnxfuse import pipeline
from onnxfuse.errors import OnnxfuseError
from onnxfuse.graph.convert import runnable
from onnxfuse.methods.channelmap import GroupMap, apply_maps
from tests.helpers import run, run_cli

ROOT = Path(__file__).resolve().parents[1]
FOLDED = ROOT / "models" / "tinyres_fmnist_folded.onnx"
CALIB = ROOT / "models" / "data" / "fmnist_calib512.npz"
EVAL = ROOT / "models" / "data" / "fmnist_eval2000.npz"


def _images(n=256):
    return np.load(EVAL)["input"][:n].astype(np.float32)


def permuted_copy(noise: float, seed: int = 0) -> onnx.ModelProto:
    """TinyRes with the channels of every prunable group permuted at random (through the apply path,
    so the function is unchanged), then every float weight perturbed by `noise` × its std."""
    ctx = pipeline.run(pipeline.Context.for_model(pipeline.Options(), str(FOLDED)), stop_after="analyze")
    rng = np.random.default_rng(seed)
    maps = {}
    for group in ctx.model.analysis.prunable:
        p = np.eye(group.width)[rng.permutation(group.width)]
        maps[group.id] = GroupMap(np.arange(group.width), p, p, p)
    apply_maps(ctx.model.graph, ctx.model.analysis, maps)
    for tensor in ctx.model.graph.tensors().values():
        values = getattr(tensor, "values", None)
        if isinstance(values, np.ndarray) and values.dtype == np.float32 and values.size > 1:
            tensor.values = (values + noise * values.std() * rng.standard_normal(values.shape)).astype(np.float32)
    return runnable(ctx.model.graph, ctx.model.original)


def _relative(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_the_permuted_copy_computes_the_same_function():
    np.testing.assert_allclose(run(permuted_copy(0.0), _images())[0], run(onnx.load(FOLDED), _images())[0],
                               rtol=1e-4, atol=1e-4)


def test_merging_with_itself_is_exact():
    merged, report = onnxfuse.merge([str(FOLDED), str(FOLDED)], calib=str(CALIB))
    np.testing.assert_allclose(run(merged, _images())[0], run(onnx.load(FOLDED), _images())[0], rtol=1e-5, atol=1e-5)
    assert set(report["unmoved_share"].values()) == {1.0}


@pytest.mark.parametrize("align", ["activations", "weights"])
def test_merging_a_permuted_perturbed_copy_recovers_the_original(align):
    noise = 0.01
    copy = permuted_copy(noise)
    want = run(onnx.load(FOLDED), _images())[0]
    merged, report = onnxfuse.merge([str(FOLDED), copy], calib=str(CALIB), align=align, data=str(EVAL))
    copy_error = _relative(run(copy, _images())[0], want)
    merged_error = _relative(run(merged, _images())[0], want)
    assert merged_error <= copy_error  # the average of the original and its aligned copy: within the noise
    assert max(report["unmoved_share"].values()) < 0.5  # it really had to undo the permutation
    assert report["scores"]["merged"] >= report["scores"]["plain average"] + 0.2
    plain, _ = onnxfuse.merge([str(FOLDED), copy], calib=str(CALIB), align=align)  # merge is deterministic
    assert plain.SerializeToString() == merged.SerializeToString()


def test_plain_averaging_without_alignment_breaks_the_model():
    copy = permuted_copy(0.0)
    _, report = onnxfuse.merge([str(FOLDED), copy], calib=str(CALIB), data=str(EVAL))
    scores = report["scores"]
    assert scores["merged"] > 0.85 and scores["plain average"] < scores["merged"] - 0.2


def test_models_of_another_architecture_are_refused(tmp_path, capsys):
    other = ROOT / "models" / "vgg11bn_fmnist_folded.onnx"
    with pytest.raises(OnnxfuseError, match="does not share the architecture"):
        onnxfuse.merge([str(FOLDED), str(other)], calib=str(CALIB))
    out = tmp_path / "m.onnx"
    code, _, err = run_cli(["merge", str(FOLDED), str(other), "-o", str(out), "--calib", str(CALIB)], capsys)
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1 and not out.exists()


def test_cli_merge_writes_a_checked_model(tmp_path, capsys):
    copy_path = tmp_path / "copy.onnx"
    onnx.save(permuted_copy(0.01), copy_path)
    out = tmp_path / "merged.onnx"
    code, stdout, err = run_cli(["merge", str(FOLDED), str(copy_path), "-o", str(out), "--calib", str(CALIB),
                                 "--align", "weights", "--weights", "0.5,0.5"], capsys)
    assert code == 0, err
    onnx.checker.check_model(onnx.load(out), full_check=True)
    assert [i.name for i in onnx.load(out).graph.input] == [i.name for i in onnx.load(FOLDED).graph.input]


def test_repair_gives_the_merged_channels_the_models_mean_statistics():
    """REPAIR after averaging two models that are not the same features: every conv output's channel
    spread (mean over channels of the std, which no permutation changes) is the mean of the two
    models' spreads; plain averaging shrinks it."""
    from onnxfuse.calibration.capture import channel_stats
    from onnxfuse.calibration.data import load_npz

    original = onnx.load(FOLDED)
    copy = permuted_copy(0.3, seed=3)
    data = load_npz(str(CALIB), original)
    convs = {n.output[0]: 1 for n in original.graph.node if n.op_type == "Conv"}

    def spreads(model):
        stats = channel_stats(model, data, convs, label=None)
        return np.array([stats[name].std.mean() for name in convs])

    want = (spreads(original) + spreads(copy)) / 2
    repaired, report = onnxfuse.merge([str(FOLDED), copy], calib=str(CALIB), calib_samples=512)  # all of it
    plain, plain_report = onnxfuse.merge([str(FOLDED), copy], calib=str(CALIB), calib_samples=512, repair="none")
    assert report["repair"] == "stats" and report["producers_renormalised"] == len(convs)
    assert plain_report["repair"] == "none"
    np.testing.assert_allclose(spreads(repaired), want, rtol=1e-3)
    assert (spreads(plain) / want).min() < 0.9
