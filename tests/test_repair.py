"""Calibration: activation capture and statistics repair."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxfuse import pipeline
from onnxfuse.calibration.capture import channel_stats
from onnxfuse.calibration.data import Dataset, load_npz
from onnxfuse.graph.io import load_model
from onnxfuse.methods.intra_fusion import FusionOptions
from onnxfuse.repair.stats import producer_members
from tests.helpers import run

ROOT = Path(__file__).resolve().parents[1]
FOLDED = ROOT / "models" / "tinyres_fmnist_folded.onnx"
CALIB = ROOT / "models" / "data" / "fmnist_calib512.npz"


def _calib(n=128) -> Dataset:
    data = load_npz(CALIB, load_model(FOLDED))
    return Dataset({k: v[:n] for k, v in data.feeds.items()}, data.labels[:n])


def test_channel_stats_match_numpy():
    model, data = load_model(FOLDED), _calib(64)
    name = "/stem/stem.0/Conv_output_0"
    stats = channel_stats(model, data, {name: 1}, batch_size=16)[name]
    from onnxfuse.calibration.capture import with_outputs

    full = run(with_outputs(model, [name]), data.feeds["input"])[1]
    np.testing.assert_allclose(stats.mean, full.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.std, full.std(axis=(0, 2, 3)), rtol=1e-4, atol=1e-6)
    assert stats.count == 64 * 28 * 28


@pytest.mark.parametrize("method, normalization", [("fuse", "average"), ("fuse", "reference"), ("prune", "average")])
def test_stats_repair_matches_the_target_statistics(method, normalization, tmp_path):
    data = _calib()
    np.savez(tmp_path / "calib.npz", input=data.feeds["input"])
    options = pipeline.Options(sparsity=0.5, method=method, fusion=FusionOptions(normalization=normalization),
                               calib=str(tmp_path / "calib.npz"), validate=False)
    ctx = pipeline.run(pipeline.Context.for_model(options, str(FOLDED)), stop_after="emit")
    maps = ctx.decisions.space_maps
    units = [(ctx.model.analysis.groups[gid], m.space) for gid in maps.maps
             for m in producer_members(ctx.model.analysis.groups[gid])]
    tensors = {space[0]: space[1] for _, space in units}
    before = channel_stats(ctx.model.before_fuse, data, tensors)
    after = channel_stats(ctx.model.result, data, tensors)
    assert len(units) == 7 and len(ctx.report["repair"]) == 7
    for group, space in units:
        average = maps.maps[group.id].param
        old = group.positions[space][:, 0]
        new = maps.slot_positions(group, space)[:, 0]
        target_mean, target_std = average @ before[space[0]].mean[old], average @ before[space[0]].std[old]
        assert np.all(np.abs(after[space[0]].mean[new] - target_mean) <= 1e-4 * (1 + np.abs(target_mean)))
        np.testing.assert_allclose(after[space[0]].std[new], target_std, rtol=1e-4)


def test_repair_needs_calibration_data():
    from onnxfuse.errors import OnnxfuseError

    with pytest.raises(OnnxfuseError, match="calib"):
        pipeline.Options(repair="stats").check()


def _linear_consumer_model():
    """conv1 (8 channels, no activation) → 1×1 conv2; channels 4..7 of conv1 are linear
    combinations of channels 0..3 (rows and biases), and 0..3 carry most of the weight, so
    pruning keeps 0..3 and their span holds everything that was removed."""
    from onnx import numpy_helper

    from tests.netbuilder import Net

    n = Net()
    model = n.model(n.conv(n.conv("x", 3, 8), 8, 4, k=1))
    inits = {t.name: t for t in model.graph.initializer}
    conv1 = model.graph.node[0]
    w, b = (numpy_helper.to_array(inits[name]) for name in conv1.input[1:3])
    mix = np.random.default_rng(3).uniform(-0.1, 0.1, (4, 4)).astype(np.float32)
    w = np.concatenate([10 * w[:4], np.einsum("ij,jcxy->icxy", mix, 10 * w[:4])])
    b = np.concatenate([b[:4], mix @ b[:4]])
    for name, value in zip(conv1.input[1:3], (w, b)):
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    return model, n


def test_lsq_reproduces_a_linear_consumer_when_kept_channels_span_the_removed(tmp_path):
    model, net = _linear_consumer_model()
    x = net.input(batch=64, seed=5)
    np.savez(tmp_path / "calib.npz", x=x)
    options = pipeline.Options(sparsity=0.5, method="prune", repair="lsq", calib=str(tmp_path / "calib.npz"),
                               validate=False)
    ctx = pipeline.run(pipeline.Context.for_model(options, model), stop_after="emit")
    assert [list(k) for k in ctx.decisions.keep.values()] == [[0, 1, 2, 3]]
    fresh = net.input(batch=8, seed=9)
    want, got = run(model, fresh)[0], run(ctx.model.result, fresh)[0]
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
    plain = pipeline.run(pipeline.Context.for_model(pipeline.Options(sparsity=0.5, validate=False), model)).model.result
    assert np.abs(run(plain, fresh)[0] - want).max() > 1e-2 * np.abs(want).max()  # without repair it is not
    [fit] = ctx.report["repair"]  # what the refit recovered, measured on sampled calibration positions
    pruned_error = np.linalg.norm(run(plain, x)[0] - run(model, x)[0]) / np.linalg.norm(run(model, x)[0])
    assert fit["output_error_before"] == pytest.approx(pruned_error, rel=0.1)
    assert fit["output_error_after"] < 1e-4


def test_capture_survives_onnx_runtime_fusions(tmp_path):
    """ResNet-18 at 0.7 with stats repair exposes a shortcut Conv's output that ONNX Runtime's
    extended Conv+Add fusion would swallow (the session then fails to load): capture sessions
    run with basic optimisations only."""
    calib = np.load(CALIB)["input"][:32]
    np.savez(tmp_path / "calib.npz", input=calib)
    model = ROOT / "models" / "resnet18_fmnist_folded.onnx"
    options = pipeline.Options(sparsity=0.7, method="prune", repair="stats", calib=str(tmp_path / "calib.npz"),
                               validate=False)
    ctx = pipeline.run(pipeline.Context.for_model(options, str(model)), stop_after="repair")
    groups = [ctx.model.analysis.groups[g] for g in ctx.decisions.space_maps.maps]
    assert len(ctx.report["repair"]) == sum(len(producer_members(group)) for group in groups)


def test_capture_memory_does_not_grow_with_the_calibration_set():
    """Statistics are reduced batch by batch: 8× more calibration samples must not need
    noticeably more memory (numpy allocations, traced; the data itself exists beforehand)."""
    import tracemalloc

    model = load_model(FOLDED)
    tensors = {"/stem/stem.0/Conv_output_0": 1, "/down2/down2.0/Conv_output_0": 1}
    peaks = []
    for n in (64, 512):
        base = _calib(64)
        data = Dataset({"input": np.concatenate([base.feeds["input"]] * (n // 64))})
        tracemalloc.start()
        channel_stats(model, data, tensors, batch_size=64)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.5 * peaks[0], peaks
