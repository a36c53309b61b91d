"""Calibration: activation capture and statistics repair."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxfuse import pipeline
from onnxfuse.capture import channel_stats
from onnxfuse.data import Dataset, load_npz
from onnxfuse.fusion import FusionOptions
from onnxfuse.graphio import load_model
from onnxfuse.repair import producer_members
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
    from onnxfuse.capture import with_outputs

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
    ctx = pipeline.run(pipeline.Context(options, str(FOLDED)), stop_after="emit")
    maps = ctx.space_maps
    units = [(ctx.analysis.groups[gid], m.space) for gid in maps.maps
             for m in producer_members(ctx.analysis.groups[gid])]
    tensors = {space[0]: space[1] for _, space in units}
    before = channel_stats(ctx.before_fuse, data, tensors)
    after = channel_stats(ctx.result, data, tensors)
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
