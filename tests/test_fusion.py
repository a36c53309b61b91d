"""Intra-Fusion (`--method fuse`): transport maps, normalisations and the duplicate-channel oracle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxfuse
from onnxfuse import pipeline
from onnxfuse.methods.channelmap import GroupMap
from onnxfuse.methods.intra_fusion import FusionOptions, fusion_map
from onnxfuse.methods.ot import transport_plan
from tests.helpers import run
from tests.netbuilder import Net

ROOT = Path(__file__).resolve().parents[1]
FOLDED = ROOT / "models" / "tinyres_fmnist_folded.onnx"
EVAL = ROOT / "models" / "data" / "fmnist_eval2000.npz"
OTHER_GROUPS = ["/stem/*", "/b1/*", "/down1/*", "/b2/*"]  # leaves only down2 → fc prunable


def _images(n=64):
    return np.load(EVAL)["input"][:n].astype(np.float32)


def widened_tinyres(alpha: float = 0.9, rank_copies: bool = True) -> onnx.ModelProto:
    """The trained tinyres with its last conv group (down2 → flatten → fc) doubled: channel
    c + 32 is an exact copy of channel c, and the fc columns of c are split alpha : 1 − alpha
    between the copies, so the function is unchanged. Before that, each channel is rescaled
    (weights and bias by 1/s, its fc columns by s; exact through the ReLU) to a producer L1 norm
    of 1, so that magnitude importance ranks every first copy above every second copy
    (`rank_copies`; without it both copies of a strong channel outrank weak channels)."""
    model = onnx.load(FOLDED)
    inits = {t.name: t for t in model.graph.initializer}
    conv = next(n for n in model.graph.node if n.name == "/down2/down2.0/Conv")
    gemm = next(n for n in model.graph.node if n.name == "/fc/Gemm")
    w, b = (numpy_helper.to_array(inits[name]) for name in conv.input[1:3])
    fc = numpy_helper.to_array(inits[gemm.input[1]])  # (10, 32·49), transB = 1
    s = np.abs(w).reshape(len(w), -1).sum(1) if rank_copies else np.ones(len(w))
    w, b = w / s[:, None, None, None], b / s
    cols = fc.reshape(10, len(w), -1) * s[None, :, None]
    new = {conv.input[1]: np.concatenate([w, w]), conv.input[2]: np.concatenate([b, b]),
           gemm.input[1]: np.concatenate([alpha * cols, (1 - alpha) * cols], axis=1).reshape(10, -1)}
    for name, value in new.items():
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    del model.graph.value_info[:]
    return model


@pytest.fixture(scope="module")
def widened():
    model = widened_tinyres()
    np.testing.assert_allclose(run(model, _images())[0], run(onnx.load(FOLDED), _images())[0], atol=1e-4)
    return model


def _fuse(model, normalization, method="fuse"):
    return onnxfuse.compress(model, 0.5, method=method, normalization=normalization, ignore=OTHER_GROUPS,
                             validate=False, quiet=True)[0]


@pytest.mark.parametrize("normalization", ["average", "rescale"])
def test_fusing_exact_duplicates_reproduces_outputs(widened, normalization):
    fused = _fuse(widened, normalization)
    assert run(fused, _images())[0].shape == (64, 10)
    np.testing.assert_allclose(run(fused, _images())[0], run(widened, _images())[0], atol=1e-4)


def test_fusion_pairs_every_channel_with_its_copy(widened):
    options = pipeline.Options(sparsity=0.5, method="fuse", ignore=tuple(OTHER_GROUPS),
                               fusion=FusionOptions(normalization="average"))
    ctx = pipeline.run(pipeline.Context.for_model(options, widened), stop_after="fuse")
    [group] = ctx.model.analysis.prunable
    gmap = ctx.decisions.maps[group.id]
    assert list(gmap.kept) == list(range(32))  # every first copy is kept
    target = gmap.consumer.argmax(axis=0)  # where each of the 64 channels sends its mass
    assert list(target) == list(range(32)) * 2


def test_covering_keeps_one_copy_of_each_channel():
    """When importance ranks both copies of strong channels above weak ones, the top-m choice keeps
    both copies and merges distinct channels away; `--fuse-keep cover` keeps one of each pair, so
    merging the exact duplicates reproduces the outputs."""
    model = widened_tinyres(alpha=0.5, rank_copies=False)
    want = run(model, _images())[0]
    results = {}
    for keep in ("top", "cover"):
        options = pipeline.Options(sparsity=0.5, method="fuse", ignore=tuple(OTHER_GROUPS),
                                   fusion=FusionOptions(normalization="average", keep=keep))
        ctx = pipeline.run(pipeline.Context.for_model(options, model))
        [group] = ctx.model.analysis.prunable
        results[keep] = (set(ctx.decisions.maps[group.id].kept % 32), ctx.model.result)
    assert len(results["top"][0]) < 32  # both copies of some channel kept: the case this is for
    assert np.abs(run(results["top"][1], _images())[0] - want).max() > 1e-2
    assert results["cover"][0] == set(range(32))
    np.testing.assert_allclose(run(results["cover"][1], _images())[0], want, atol=1e-4)


def test_pruning_duplicates_is_not_exact(widened):
    pruned = _fuse(widened, "average", method="prune")
    assert np.abs(run(pruned, _images())[0] - run(widened, _images())[0]).max() > 1e-2


def test_reference_normalization_doubles_the_merged_contribution(widened):
    """Reference T sums the two copies' producer rows (n/m = 2) and their consumer columns, so
    the fc's input from this group doubles: logits − bias become exactly twice as large."""
    fused = _fuse(widened, "reference")
    bias = numpy_helper.to_array(next(t for t in widened.graph.initializer if t.name == "fc.bias"))
    got, want = run(fused, _images())[0] - bias, run(widened, _images())[0] - bias
    np.testing.assert_allclose(got, 2 * want, atol=2e-4, rtol=1e-4)


# --- the transport plan and the maps -------------------------------------------------------------


@pytest.mark.parametrize("marginals", ["uniform", "importance"])
@pytest.mark.parametrize("solver", ["emd", "sinkhorn"])
def test_plan_marginals(solver, marginals):
    rng = np.random.default_rng(0)
    features = rng.standard_normal((24, 40))
    scores = rng.uniform(0.5, 2.0, 24)
    kept = np.sort(rng.choice(24, 9, replace=False))
    options = FusionOptions(solver=solver, marginals=marginals, reg=0.05)
    plan = transport_plan(features, kept, scores, options)
    a = np.full(24, 1 / 24) if marginals == "uniform" else scores / scores.sum()
    b = np.full(9, 1 / 9) if marginals == "uniform" else scores[kept] / scores[kept].sum()
    atol = 1e-9 if solver == "emd" else 1e-4
    np.testing.assert_allclose(plan.sum(axis=1), a, atol=atol)
    np.testing.assert_allclose(plan.sum(axis=0), b, atol=atol)
    assert (plan >= 0).all()


@pytest.mark.parametrize("marginals", ["uniform", "importance"])
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("width, keep", [(24, 9), (30, 15), (17, 16), (40, 4)])
def test_exact_plan_on_dropped_channels_equals_full_emd(width, keep, p, marginals):
    """The EMD is solved on the dropped channels only (kept channels stay with themselves); its
    plan must be the one POT finds on the whole n × m problem."""
    import ot

    from onnxfuse.methods.ot import pairwise_cost, unit_rows

    rng = np.random.default_rng(width + keep + p)
    features = rng.standard_normal((width, 50))
    scores = rng.uniform(0.5, 2.0, width)
    kept = np.sort(rng.choice(width, keep, replace=False))
    plan = transport_plan(features, kept, scores, FusionOptions(marginals=marginals, p=p))
    unit = unit_rows(features.astype(np.float32))
    cost = pairwise_cost(unit, unit[kept], p)
    a = np.full(width, 1 / width) if marginals == "uniform" else scores / scores.sum()
    b = np.full(keep, 1 / keep) if marginals == "uniform" else scores[kept] / scores[kept].sum()
    full = ot.emd(a, b, cost, numItermax=10**7)
    assert (plan * cost).sum() == pytest.approx((full * cost).sum(), rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(plan, full, atol=1e-9)


def _small_group():
    n = Net()
    y = n.relu(n.conv("x", 3, 12))
    model = n.model(n.conv(y, 12, 4))
    ctx = pipeline.run(pipeline.Context.for_model(pipeline.Options(), model), stop_after="score")
    [group] = ctx.model.analysis.prunable
    return ctx, group


@pytest.mark.parametrize("normalization", ["reference", "average", "rescale"])
def test_map_normalisations(normalization):
    ctx, group = _small_group()
    kept = np.array([0, 3, 5, 8, 10])
    gmap = fusion_map(group, ctx.model.graph.tensors(), kept, ctx.decisions.scores[group.id],
                      FusionOptions(normalization=normalization, features="weights"))
    np.testing.assert_allclose(gmap.consumer.sum(axis=0), 1.0)  # each channel hands on all its mass
    np.testing.assert_allclose(gmap.param.sum(axis=1), 1.0)  # per-channel params are averaged
    if normalization == "reference":
        np.testing.assert_array_equal(gmap.producer, gmap.consumer)
    if normalization == "average":
        np.testing.assert_allclose(gmap.producer.sum(axis=1), 1.0)
    for j, k in enumerate(kept):  # a kept channel keeps its own mass (its transport cost is zero)
        assert gmap.consumer[j, k] == pytest.approx(1.0)


def test_prune_is_fusion_with_a_selection_map(monkeypatch):
    """One apply path: `fuse` whose transport map is replaced by the selection of the kept
    channels writes exactly the model `prune` writes."""
    import onnxfuse.methods.intra_fusion

    model = onnx.load(FOLDED)
    pruned = onnxfuse.compress(model, 0.5, method="prune", validate=False, quiet=True)[0]
    monkeypatch.setattr(onnxfuse.methods.intra_fusion, "fusion_map",
                        lambda group, tensors, kept, *_: GroupMap.selection(group.width, kept))
    fused = onnxfuse.compress(model, 0.5, method="fuse", validate=False, quiet=True)[0]
    assert fused.SerializeToString() == pruned.SerializeToString()
    sel = GroupMap.selection(5, [0, 3])
    np.testing.assert_array_equal(sel.producer, [[1, 0, 0, 0, 0], [0, 0, 0, 1, 0]])


def test_l1_cost_paths_agree():
    """SciPy computes small L1 cost matrices, a numba kernel the large ones: same distances."""
    from onnxfuse.methods.ot import _l1_kernel, pairwise_cost

    x = np.random.default_rng(0).normal(size=(64, 300))
    small = pairwise_cost(x, x[:32], 1)
    compiled = _l1_kernel()(x.astype(np.float32), x[:32].astype(np.float32))
    np.testing.assert_allclose(compiled, small, rtol=1e-5)
    assert np.allclose(np.diag(small[:32]), 0) and small[40, 3] == pytest.approx(np.abs(x[40] - x[3]).sum())
