"""Sensitivity-aware allocation under a MAC budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

import onnxfuse
from onnxfuse import pipeline
from onnxfuse.planning.counts import estimated_mac_ratio
from onnxfuse.planning.sensitivity import LEVELS, allocate, neighbour_plans

ROOT = Path(__file__).resolve().parents[1]
FOLDED = ROOT / "models" / "tinyres_fmnist_folded.onnx"


def _analysis():
    ctx = pipeline.Context.for_model(pipeline.Options(), onnx.load(FOLDED))
    return pipeline.run(ctx, stop_after="analyze").model.analysis


def test_a_sensitive_group_is_spared():
    analysis = _analysis()
    groups = [g.id for g in analysis.prunable]
    levels = (0.25, 0.5, 0.75)
    damage = {gid: {0.0: 0.0, **{s: s for s in levels}} for gid in groups}
    damage[groups[0]] = {0.0: 0.0, **{s: 100 * s for s in levels}}  # very sensitive
    counts = allocate(analysis, damage, 0.5)
    assert estimated_mac_ratio(analysis, counts) <= 0.5
    assert counts[groups[0]] == analysis.groups[groups[0]].width
    assert any(counts[g] < analysis.groups[g].width for g in groups[1:])


def test_rounding_that_makes_neighbouring_levels_equal_does_not_stall_the_allocation():
    # tinyres's groups are 16 and 32 wide: rounded to 8, 0.125 and 0.25 both keep 24 of 32
    analysis = _analysis()
    damage = {g.id: {0.0: 0.0, **{s: s for s in LEVELS}} for g in analysis.prunable}
    for target in (0.5, 0.3):
        counts = allocate(analysis, damage, target, round_to=8)
        assert estimated_mac_ratio(analysis, counts) <= target
        assert all(c % 8 == 0 or c == analysis.groups[gid].width for gid, c in counts.items())


def test_a_step_the_budget_no_longer_needs_is_taken_back():
    """Group H's first step is the cheapest per MAC but too small to meet the budget, so the greedy
    then takes G's, which alone would have been enough: H's step is taken back (less damage, still
    within the budget). Every other group is too costly to touch."""
    from onnxfuse.planning.counts import keep_count

    analysis = _analysis()
    groups = {g.id: g for g in analysis.prunable}
    full = {gid: g.width for gid, g in groups.items()}

    def ratio_with(gid):
        return estimated_mac_ratio(analysis, {**full, gid: keep_count(groups[gid].width, 0.125)})

    saving = {gid: 1 - ratio_with(gid) for gid in groups}
    small, large = min(saving, key=saving.get), max(saving, key=saving.get)
    damage = {gid: {0.0: 0.0, **{s: 1e3 for s in LEVELS}} for gid in groups}
    damage[large] = {0.0: 0.0, **{s: 1.0 + s for s in LEVELS}}
    damage[small] = {0.0: 0.0, **{s: 0.5 * (1.0 + s) * saving[small] / saving[large] for s in LEVELS}}
    counts = allocate(analysis, damage, ratio_with(large))
    assert counts[large] < groups[large].width
    assert counts[small] == groups[small].width  # taken back
    assert estimated_mac_ratio(analysis, counts) <= ratio_with(large)


def test_sensitivity_allocation_meets_the_budget_and_is_not_worse_than_uniform(tmp_path):
    calib = np.load(ROOT / "models" / "data" / "fmnist_calib512.npz")
    np.savez(tmp_path / "calib.npz", input=calib["input"][:96])
    eval_data = str(ROOT / "models" / "data" / "fmnist_eval2000.npz")
    common = dict(method="fuse", calib=str(tmp_path / "calib.npz"), data=eval_data, quiet=True)
    _, sens = onnxfuse.compress(str(FOLDED), target_macs=0.5, allocate="sensitivity", **common)
    _, uniform = onnxfuse.compress(str(FOLDED), target_macs=0.5, **common)
    assert sens["macs_after"] / sens["macs_before"] <= 0.5
    assert set(sens["sensitivity"]) == {str(g["id"]) for g in sens["groups"] if g["prunable"]}
    damage = sens["allocation"]["damage"]
    assert sens["allocation"]["chosen"] == min(damage, key=damage.get)
    assert sens["validation"]["accuracy_compressed"] >= uniform["validation"]["accuracy_compressed"] - 0.02


def test_probes_judge_the_repair_on_samples_it_did_not_fit():
    from onnxfuse.calibration.data import Dataset
    from onnxfuse.planning.probes import HELD_OUT_DIVISOR, PROBE_SAMPLES

    for n in (2, 9, 256, 2000):
        x = np.arange(n, dtype=np.float32)[:, None]
        fit, held = Dataset({"x": x}).split(HELD_OUT_DIVISOR, PROBE_SAMPLES)
        assert len(fit) + len(held) == n and 1 <= len(held) <= min(PROBE_SAMPLES, n // 2)
        assert not set(fit.feeds["x"][:, 0]) & set(held.feeds["x"][:, 0])
    one = Dataset({"x": np.zeros((1, 1), np.float32)})
    assert one.split() == (one, one)  # nothing to hold out


def test_neighbour_plans_find_the_trade_the_greedy_misses_under_coarse_steps():
    """tinyres at a quarter of the MACs with --round-to 8, with the per-group damage its probes
    measured: the 16-wide groups can only keep 8 or 16, and one trade away from the uniform plan
    (group 2 keeps 8 more, group 3 pays, the rest given back to group 4) lies the plan whose
    whole-network damage was lowest (0.165 against 0.214 for uniform and 0.367 for the greedy)."""
    analysis = _analysis()
    assert [g.width for g in analysis.prunable] == [16, 16, 32, 32, 32]
    rows = {0: (0.109,) * 6, 1: (0.073,) * 6, 2: (0.014, 0.014, 0.093, 0.093, 0.32, 0.32),
            3: (0.005, 0.005, 0.034, 0.034, 0.197, 0.197), 4: (0.043, 0.043, 0.055, 0.055, 0.096, 0.096)}
    damage = {g.id: {0.0: 0.0, **dict(zip(LEVELS, rows[i]))} for i, g in enumerate(analysis.prunable)}
    ids = [g.id for g in analysis.prunable]
    uniform = dict(zip(ids, (8, 8, 16, 16, 8)))
    greedy = allocate(analysis, damage, 0.25, round_to=8)
    trades = neighbour_plans(analysis, damage, [greedy, uniform], 0.25, round_to=8)
    assert dict(zip(ids, (8, 8, 24, 8, 16))) in trades
    for plan in trades:
        assert plan not in (greedy, uniform) and estimated_mac_ratio(analysis, plan) <= 0.25
        assert all(c % 8 == 0 for c in plan.values())
