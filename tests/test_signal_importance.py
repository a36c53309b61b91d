"""Importance that sees the signal: data-free moment estimates (calibration/estimate.py), the
`signal` and `stream` criteria, and where they fall back to weights."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

import onnxfuse
from onnxfuse import pipeline
from onnxfuse.calibration.estimate import estimated_stats
from onnxfuse.methods.importance import IMPORTANCES, is_residual_stream, register_importance, score_group
from tests.helpers import run
from tests.netbuilder import Net


def _graph(model: onnx.ModelProto) -> gs.Graph:
    return gs.import_onnx(onnx.shape_inference.infer_shapes(model))


def test_estimate_matches_sampling_where_its_assumptions_hold():
    """1×1 conv → ReLU → 1×1 conv on i.i.d. standard normal inputs: the first conv's outputs are
    Gaussian sums of independent terms, so the ReLU's moments equal the sampled ones (to sampling
    noise); the second conv's mean is exact by linearity (its variance is not: the ReLU channels
    share their inputs and are correlated, which the estimate ignores)."""
    net = Net(input_shape=("N", 8, 4, 4))
    hidden = net.relu(net.conv("x", 8, 16, k=1))
    out = net.conv(hidden, 16, 6, k=1)
    model = net.model(out)
    x = np.random.default_rng(0).standard_normal((4000, 8, 4, 4)).astype(np.float32)
    estimates = estimated_stats(_graph(model), {hidden: 1, out: 1})
    sampled = dict(zip((hidden, out), run(_with_outputs(model, hidden), {"x": x})[::-1]))
    values = {name: np.moveaxis(v, 1, 0).reshape(v.shape[1], -1) for name, v in sampled.items()}
    np.testing.assert_allclose(estimates[hidden].mean, values[hidden].mean(1), rtol=0.03, atol=0.01)
    np.testing.assert_allclose(estimates[hidden].abs_mean, np.abs(values[hidden]).mean(1), rtol=0.03, atol=0.01)
    np.testing.assert_allclose(np.sqrt(estimates[hidden].var), values[hidden].std(1), rtol=0.03, atol=0.01)
    np.testing.assert_allclose(estimates[out].mean, values[out].mean(1), rtol=0.03, atol=0.02)


def _with_outputs(model: onnx.ModelProto, *names: str) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    return copy


def test_batch_norm_resets_to_its_training_statistics():
    net = Net(input_shape=("N", 3, 8, 8))
    out = net.bn(net.conv("x", 3, 5), 5)
    model = net.model(out)
    graph = _graph(model)
    bn = next(n for n in graph.nodes if n.op == "BatchNormalization")
    stats = estimated_stats(graph, {out: 1})[out]
    np.testing.assert_allclose(stats.mean, bn.inputs[2].values)
    np.testing.assert_allclose(stats.var, np.asarray(bn.inputs[1].values, float) ** 2, rtol=1e-6)


def test_an_op_without_a_rule_leaves_everything_after_it_unknown():
    net = Net(input_shape=("N", 3, 8, 8))
    known = net.relu(net.conv("x", 3, 4))
    unknown = net.op("Softmax", [known], axis=1)
    after = net.conv(unknown, 4, 4)
    stats = estimated_stats(_graph(net.model(after)), {known: 1, unknown: 1, after: 1})
    assert set(stats) == {known}


def _residual_net() -> onnx.ModelProto:
    """stem → two residual blocks on an 8-wide stream → pooled head."""
    net = Net(input_shape=("N", 3, 8, 8))
    stream = net.relu(net.conv("x", 3, 8))
    for _ in range(2):
        branch = net.conv(net.relu(net.conv(stream, 8, 8)), 8, 8)
        stream = net.relu(net.op("Add", [stream, branch]))
    pooled = net.op("Flatten", [net.op("GlobalAveragePool", [stream])])
    return net.model(net.gemm(pooled, 8, 4))


def _analysed(model, **options):
    ctx = pipeline.run(pipeline.Context.for_model(pipeline.Options(**options), model), stop_after="capture")
    return ctx, ctx.model.graph.tensors()


def test_stream_scores_residual_groups_by_signal_and_the_rest_by_l1():
    ctx, tensors = _analysed(_residual_net(), importance="stream")
    groups = ctx.model.analysis.prunable
    assert {is_residual_stream(g) for g in groups} == {True, False}
    for group in groups:
        activity = ctx.calibration.activity[group.id]
        want = score_group("signal" if is_residual_stream(group) else "l1", group, tensors, activity=activity)
        np.testing.assert_allclose(score_group("stream", group, tensors, activity=activity), want)


def test_signal_is_activity_times_consumer_columns():
    ctx, tensors = _analysed(_residual_net(), importance="signal")
    group = next(g for g in ctx.model.analysis.prunable if not is_residual_stream(g))
    activity = np.linspace(1.0, 2.0, group.width)
    [consumer] = group.nodes("consumer")
    weight = np.abs(next(n for n in ctx.model.graph.nodes if n.name == consumer).inputs[1].values)
    reads = weight.sum(axis=(0, 2, 3))
    want = activity * reads
    np.testing.assert_allclose(score_group("signal", group, tensors, activity=activity), want / want.mean())
    # without a measured or estimated activity it is L1
    np.testing.assert_allclose(score_group("signal", group, tensors), score_group("l1", group, tensors))


@pytest.mark.parametrize("importance", ["signal", "stream"])
def test_data_free_signal_compresses_without_calibration(importance):
    model = _residual_net()
    small, report = onnxfuse.compress(model, 0.5, importance=importance, quiet=True)
    onnx.checker.check_model(small, full_check=True)
    x = Net(input_shape=(2, 3, 8, 8)).input(batch=2)
    assert run(small, {"x": x})[0].shape == run(model, {"x": x})[0].shape
    assert report["params_after"] < report["params_before"]


@pytest.fixture
def residual_calib(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, x=np.random.default_rng(3).standard_normal((48, 3, 8, 8)).astype(np.float32))
    return str(path)


@pytest.fixture
def only_signal():
    """A choice with one candidate: select's machinery must then give exactly what signal gives."""
    register_importance("only_signal", needs_activity=True, choices=("signal",))(IMPORTANCES.get("l1").score)
    yield "only_signal"
    IMPORTANCES.remove("only_signal")


def test_select_keeps_each_groups_least_damaging_candidate(residual_calib):
    ctx = pipeline.run(pipeline.Context.for_model(pipeline.Options(
        importance="select", calib=residual_calib, sparsity=0.5, repair="lsq"), _residual_net()),
        stop_after="choose_importance")
    choices = ctx.decisions.choices
    assert set(choices) == {"l1", "signal"}
    chosen = ctx.report["importance_choice"]
    assert set(chosen) == {str(g.id) for g in ctx.model.analysis.prunable}
    for group in ctx.model.analysis.prunable:
        damage = {name: ctx.probes.damage(sparsity=0.5, only_groups=(group.id,), scores={group.id: s[group.id]})
                  for name, s in choices.items()}
        assert chosen[str(group.id)] == min(damage, key=lambda n: (damage[n], n != "l1"))
        assert ctx.decisions.scores[group.id] is choices[chosen[str(group.id)]][group.id]


@pytest.mark.parametrize("budget", [dict(sparsity=0.5), dict(target_macs=0.5, allocate="sensitivity", round_to=1)])
def test_a_choice_of_one_importance_gives_exactly_that_importance(residual_calib, only_signal, budget):
    """The scores swapped in and, under a sensitivity allocation, the damage table handed to plan
    are the ones plan would have measured itself."""
    common = dict(calib=residual_calib, repair="lsq", quiet=True, validate=False, **budget)
    chosen, report = onnxfuse.compress(_residual_net(), importance=only_signal, **common)
    plain, _ = onnxfuse.compress(_residual_net(), importance="signal", **common)
    assert set(report["importance_choice"].values()) == {"signal"}
    assert chosen.SerializeToString() == plain.SerializeToString()


@pytest.mark.parametrize("method, probed_twice", [("prune", False), ("fuse", True)])
def test_a_candidate_that_keeps_the_same_channels_is_not_probed_again_when_pruning(residual_calib, monkeypatch,
                                                                                     method, probed_twice):
    """Two candidates with the same scores: pruning keeps the same channels, so the second is not
    probed; fusion weighs the merge by the scores, so both are."""
    from onnxfuse.planning.probes import Probes

    register_importance("l1_copy")(IMPORTANCES.get("l1").score)
    register_importance("l1_twice", choices=("l1", "l1_copy"))(IMPORTANCES.get("l1").score)
    calls = []
    real = Probes.damage
    monkeypatch.setattr(Probes, "damage", lambda self, **kw: calls.append(kw) or real(self, **kw))
    try:
        _, report = onnxfuse.compress(_residual_net(), 0.5, importance="l1_twice", method=method,
                                      calib=residual_calib, repair="lsq", quiet=True, validate=False)
    finally:
        IMPORTANCES.remove("l1_twice")
        IMPORTANCES.remove("l1_copy")
    groups = sum(1 for g in report["groups"] if g["prunable"])
    assert len(calls) == (2 if probed_twice else 1) * groups
    assert set(report["importance_choice"].values()) == {"l1"}
