"""Importance criteria, global ranking, per-group caps and MAC targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxfuse
from onnxfuse import pipeline
from onnxfuse.errors import OnnxfuseError
from onnxfuse.methods.importance import IMPORTANCES
from onnxfuse.planning.counts import keep_count, keep_counts
from tests.helpers import run, zero_dropped_channels
from tests.netbuilder import Net

ROOT = Path(__file__).resolve().parents[1]
BN = ROOT / "models" / "tinyres_fmnist_bn.onnx"
FOLDED = ROOT / "models" / "tinyres_fmnist_folded.onnx"


CALIB = ROOT / "models" / "data" / "fmnist_calib512.npz"


def _scored(importance: str, fold_bn: bool = True, seed: int = 0):
    entry = IMPORTANCES.get(importance)  # activation importance without an estimate reads calibration data
    calib = str(CALIB) if entry.needs_activity and not entry.estimates_activity else None
    options = pipeline.Options(importance=importance, fold_bn=fold_bn, seed=seed, calib=calib)
    return pipeline.run(pipeline.Context.for_model(options, onnx.load(BN)), stop_after="score")


@pytest.mark.parametrize("importance", sorted(IMPORTANCES))
def test_every_criterion_scores_every_group(importance):
    ctx = _scored(importance, fold_bn=importance != "bn_scale")
    for group in ctx.model.analysis.prunable:
        scores = ctx.decisions.scores[group.id]
        assert scores.shape == (group.width,)
        assert np.isfinite(scores).all() and (scores >= 0).all()


@pytest.mark.parametrize("importance", ["l1", "l2", "fpgm", "lamp"])
def test_zero_channels_rank_last(importance):
    """Channels whose weights are all zero have the lowest importance under every weight criterion."""
    n = Net()
    model = zero_dropped_channels(n.model(n.conv(n.relu(n.conv("x", 3, 8)), 8, 4)), 0.5)
    if importance in ("l1", "l2", "lamp"):
        ctx = pipeline.Context.for_model(pipeline.Options(importance=importance), model)
        ctx = pipeline.run(ctx, stop_after="score")
        [group] = ctx.model.analysis.prunable
        assert set(np.argsort(ctx.decisions.scores[group.id])[:4]) == {0, 1, 2, 3}
    compressed, _ = onnxfuse.compress(model, 0.5, importance=importance, validate=False, quiet=True)
    x = n.input()
    if importance != "fpgm":  # FPGM keeps channels far from the others; the zero ones are not removed first
        np.testing.assert_allclose(run(compressed, x)[0], run(model, x)[0], atol=1e-5)


def test_random_importance_is_seeded():
    a, b, c = (_scored("random", seed=s).decisions.scores for s in (1, 1, 2))
    assert all(np.array_equal(a[g], b[g]) for g in a)
    assert not all(np.array_equal(a[g], c[g]) for g in a)


def test_activation_importance_needs_calibration_data():
    with pytest.raises(OnnxfuseError, match="calib"):
        pipeline.run(pipeline.Context.for_model(pipeline.Options(importance="act"), onnx.load(BN)), stop_after="score")


def test_bn_scale_needs_batchnorm_nodes():
    with pytest.raises(OnnxfuseError, match="keep-bn"):
        _scored("bn_scale", fold_bn=True)
    ctx = _scored("bn_scale", fold_bn=False)
    assert ctx.decisions.scores


def test_global_ranking_meets_the_total_and_respects_the_cap():
    ctx = _scored("l1")
    groups = ctx.model.analysis.prunable
    total = sum(g.width for g in groups)
    counts = keep_counts(groups, ctx.decisions.scores, 0.5, global_ranking=True)
    assert sum(counts.values()) == int(total * 0.5)
    assert len({counts[g.id] / g.width for g in groups}) > 1  # not uniform
    capped = keep_counts(groups, ctx.decisions.scores, 0.5, global_ranking=True, max_sparsity=0.6)
    assert all(capped[g.id] >= g.width - int(g.width * 0.6) for g in groups)
    uniform = keep_counts(groups, ctx.decisions.scores, 0.5, round_to=8)
    assert all(uniform[g.id] % 8 == 0 and uniform[g.id] == keep_count(g.width, 0.5, 8) for g in groups)


@pytest.mark.parametrize("global_ranking", [False, True])
@pytest.mark.parametrize("target", [0.5, 0.25])
def test_target_macs(target, global_ranking):
    _, report = onnxfuse.compress(str(FOLDED), target_macs=target, global_ranking=global_ranking,
                                  validate=False, quiet=True)
    ratio = report["macs_after"] / report["macs_before"]
    assert ratio <= target + 1e-9
    assert ratio > target - 0.1  # the smallest sparsity that meets the budget, not any
    assert report["estimated_mac_ratio"] == pytest.approx(ratio, abs=1e-3)


@pytest.mark.parametrize("target", [0.5, 0.25])
def test_a_mac_target_under_a_channel_multiple_leaves_no_multiple_the_budget_could_keep(target):
    """Groups of one width cross a multiple of 8 together; what the bisection leaves of the budget
    is given back, so that no group could keep one more multiple within the target."""
    from onnxfuse.planning.counts import estimated_mac_ratio, solve_sparsity_for_macs, unit_multiple

    ctx = _scored("l1")
    analysis, scores = ctx.model.analysis, ctx.decisions.scores
    _, counts = solve_sparsity_for_macs(analysis, scores, target, round_to=8)
    assert estimated_mac_ratio(analysis, counts) <= target
    assert all(counts[g.id] % 8 == 0 or counts[g.id] == g.width for g in analysis.prunable)
    for g in analysis.prunable:
        more = counts[g.id] + unit_multiple(g, 8)
        assert more > g.width or estimated_mac_ratio(analysis, {**counts, g.id: more}) > target


def test_unreachable_mac_target_is_a_clear_error():
    with pytest.raises(OnnxfuseError, match="cannot reach"):
        onnxfuse.compress(str(FOLDED), target_macs=0.0001, validate=False, quiet=True)
