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
    options = pipeline.Options(sparsity=0.5, method=method, repair="stats", calib=str(tmp_path / "calib.npz"),
                               fusion=FusionOptions(normalization=normalization), validate=False)
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


def _pruned_half_and_repaired(model, net, repair: str, tmp_path):
    """Half of the channels pruned, `repair` fitted on 64 inputs; checks that channels 0..3 are kept
    and that the result reproduces the model on fresh inputs (≤ 1e-4 of its largest output)."""
    x = net.input(batch=64, seed=5)
    np.savez(tmp_path / "calib.npz", x=x)
    options = pipeline.Options(sparsity=0.5, method="prune", repair=repair, calib=str(tmp_path / "calib.npz"),
                               validate=False)
    ctx = pipeline.run(pipeline.Context.for_model(options, model), stop_after="emit")
    assert [list(k) for k in ctx.decisions.keep.values()] == [[0, 1, 2, 3]]
    fresh = net.input(batch=8, seed=9)
    want, got = run(model, fresh)[0], run(ctx.model.result, fresh)[0]
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
    return ctx, x, fresh, want


def test_lsq_reproduces_a_linear_consumer_when_kept_channels_span_the_removed(tmp_path):
    model, net = _linear_consumer_model()
    ctx, x, fresh, want = _pruned_half_and_repaired(model, net, "lsq", tmp_path)
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


def _held_out_quality(model, compressed, fresh):
    want, got = run(model, fresh)[0], run(compressed, fresh)[0]
    return float(np.linalg.norm(got - want) / np.linalg.norm(want)), float(np.mean(got.argmax(1) == want.argmax(1)))


@pytest.mark.parametrize("method, sparsity", [("prune", 0.25), ("prune", 0.5), ("fuse", 0.25), ("fuse", 0.5)])
def test_lsq_never_leaves_held_out_quality_below_the_unrepaired_model(method, sparsity, tmp_path, monkeypatch):
    """Depthwise convs, ReLU6, TF-style Pad nodes and 4 calibration samples: the widest consumer
    (a 1×1 projection, 97 columns before shrinking) sees 4 × 16 = 64 rows: a plain refit memorises.
    The importance is pinned: `select` may keep other channels under each repair, and the claim is
    about the repair of one channel choice."""
    import onnxfuse
    from onnxfuse.repair import lsq
    from tests.tiny_models import thin_mobile, thin_mobile_inputs

    model = thin_mobile()
    np.savez(tmp_path / "calib.npz", x=thin_mobile_inputs(4, seed=1))
    fresh = thin_mobile_inputs(256, seed=2)

    def quality(repair):
        compressed, report = onnxfuse.compress(model, sparsity, method=method, calib=str(tmp_path / "calib.npz"),
                                               repair=repair, importance="l1", quiet=True, validate=False)
        return _held_out_quality(model, compressed, fresh), report

    (plain_error, plain_agreement), _ = quality("none")
    (error, agreement), report = quality("lsq")
    assert error <= plain_error and agreement >= plain_agreement
    assert any(r["rows"] == 4 * 16 for r in report["repair"])  # the second projection: 64 rows, the report says so
    if (method, sparsity) == ("fuse", 0.25):  # the guard is what holds it: writing every refit memorises
        monkeypatch.setattr(lsq, "FOLDS", 1)
        (unguarded_error, unguarded_agreement), _ = quality("lsq")
        assert unguarded_error > plain_error and unguarded_agreement < plain_agreement


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID", "NOTSET"])
def test_lsq_patches_reproduce_the_convolution(auto_pad):
    """The refit's im2col, times the weights, is the Conv's output at every position (auto_pad computed)."""
    import onnx_graphsurgeon as gs
    from onnx import helper

    from onnxfuse.repair.lsq import _conv_patches
    from tests.netbuilder import Net

    net = Net(("N", 3, 7, 6))
    w, b = net.rand(4, 3, 3, 3), net.rand(4)
    attrs = {"pads": [1, 0, 1, 1]} if auto_pad == "NOTSET" else {"auto_pad": auto_pad}
    net.nodes.append(helper.make_node("Conv", ["x", w, b], ["y"], name="conv", strides=[2, 2], **attrs))
    model = net.model("y")
    x = net.input(batch=2)
    y = run(model, x)[0]
    node = next(n for n in gs.import_onnx(model).nodes if n.op == "Conv")
    picked = np.broadcast_to(np.arange(np.prod(y.shape[2:])), (2, int(np.prod(y.shape[2:]))))
    patches = _conv_patches(node, x, picked)
    weights = np.asarray(node.inputs[1].values).reshape(4, -1)
    got = (patches @ weights.T + np.asarray(node.inputs[2].values)).reshape(2, *y.shape[2:], 4)
    np.testing.assert_allclose(np.moveaxis(got, -1, 1), y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method, sparsity", [("prune", 0.5), ("fuse", 0.25)])
def test_select_repair_is_the_best_candidate_on_held_out_samples_and_never_worse_than_none(method, sparsity, tmp_path):
    """`--repair select` on the depthwise/ReLU6 network with 32 calibration samples: its choice is
    the candidate with the least damage on the held-out quarter; the model it writes is what that
    candidate gives on all samples (byte for byte); on fresh inputs it is no worse than no repair."""
    import onnxfuse
    from tests.tiny_models import thin_mobile, thin_mobile_inputs

    model = thin_mobile()
    np.savez(tmp_path / "calib.npz", x=thin_mobile_inputs(32, seed=1))
    fresh = thin_mobile_inputs(256, seed=2)

    def compress(repair):
        return onnxfuse.compress(model, sparsity, method=method, calib=str(tmp_path / "calib.npz"), repair=repair,
                                 quiet=True, validate=False)

    chosen, report = compress("select")
    [row] = [r for r in report["repair"] if "choice" in r]
    damage = row["held_out_damage"]
    assert set(damage) == {"none", "lsq", "stats+lsq"} and row["held_out_samples"] == 8
    assert damage[row["choice"]] == min(damage.values())
    stats_rows = [r for r in report["repair"] if "std_error_before" in r]
    assert sorted(r["tensor"] for r in stats_rows) == (row["stats_kept"] if row["choice"] == "stats+lsq" else [])
    if row["choice"] in ("none", "lsq"):
        assert chosen.SerializeToString() == compress(row["choice"])[0].SerializeToString()
    (error, agreement), (plain_error, plain_agreement) = (_held_out_quality(model, m, fresh)
                                                          for m in (chosen, compress("none")[0]))
    assert error <= plain_error and agreement >= plain_agreement


def test_select_repair_in_the_summary_and_the_probes(tmp_path, capsys):
    """The summary names the choice; the sensitivity probes refit with lsq (one candidate, not three)."""
    from onnxfuse.planning.probes import PROBE_REPAIR
    from tests.helpers import run_cli

    code, _, err = run_cli(["compress", str(FOLDED), "-o", str(tmp_path / "s.onnx"), "--calib", str(CALIB),
                            "--calib-samples", "64", "--sparsity", "0.5", "--repair", "select"], capsys)
    assert code == 0, err
    assert "select repair: " in err and "held-out output damage: none " in err
    assert PROBE_REPAIR["select"] == "lsq"


def test_rescale_recovers_removed_channels_that_are_scaled_copies_of_kept_ones(tmp_path):
    """conv1 (8 channels) → ReLU → 1×1 conv2: channels 4..7 are 0.1× channels 0..3 (rows, biases)
    and conv2 reads them with the same columns, so removing them loses 0.1 of what each kept channel
    sends: one scale per kept channel (1.1) restores conv2's output exactly, through the ReLU."""
    from onnx import numpy_helper

    from tests.netbuilder import Net

    n = Net()
    model = n.model(n.conv(n.relu(n.conv("x", 3, 8)), 8, 4, k=1))
    inits = {t.name: t for t in model.graph.initializer}
    conv1, conv2 = (node for node in model.graph.node if node.op_type == "Conv")
    w, b = (numpy_helper.to_array(inits[name]) for name in conv1.input[1:3])
    w2 = numpy_helper.to_array(inits[conv2.input[1]]).copy()
    w2[:, 4:] = w2[:, :4]
    for name, value in zip((*conv1.input[1:3], conv2.input[1]),
                           (np.concatenate([w[:4], 0.1 * w[:4]]), np.concatenate([b[:4], 0.1 * b[:4]]), w2)):
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    ctx = _pruned_half_and_repaired(model, n, "rescale", tmp_path)[0]
    [row] = ctx.report["repair"]
    assert row["rescaled"] and row["units"] == 4 and row["output_error_after"] < 1e-4
    assert row["scale_range"] == pytest.approx([1.1, 1.1], abs=1e-3)


def test_lsq_refits_the_qkv_projection_inside_a_packed_attention_op(tmp_path):
    """h = x·W1 with half of h's channels linear combinations of the other half, read by a
    com.microsoft Attention: pruning those channels and refitting the op's packed QKV weight and
    bias against the original's x·W + b reproduces the outputs; without the refit it does not."""
    from onnx import TensorProto, numpy_helper
    from onnx import helper as oh

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((32, 16)).astype(np.float32)
    w1[:, 8:] = w1[:, :8] @ (0.1 * rng.standard_normal((8, 8))).astype(np.float32)  # small: pruned first
    constants = {"w1": w1, "wqkv": (0.3 * rng.standard_normal((16, 48))).astype(np.float32),
                 "bqkv": (0.1 * rng.standard_normal(48)).astype(np.float32)}
    nodes = [oh.make_node("MatMul", ["x", "w1"], ["h"]),
             oh.make_node("Attention", ["h", "wqkv", "bqkv"], ["y"], domain="com.microsoft", num_heads=2)]
    x, y = oh.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6, 32]), \
        oh.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6, 16])
    graph = oh.make_graph(nodes, "packed", [x], [y], [numpy_helper.from_array(v, k) for k, v in constants.items()])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("com.microsoft", 1)])
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((64, 6, 32)).astype(np.float32))
    results = {}
    for repair in ("none", "lsq"):
        options = pipeline.Options(sparsity=0.5, method="prune", repair=repair, calib=str(tmp_path / "calib.npz"),
                                   validate=False)
        results[repair] = pipeline.run(pipeline.Context.for_model(options, model))
    assert [list(k) for k in results["lsq"].decisions.keep.values()] == [list(range(8))]
    [fit] = results["lsq"].report["repair"]
    assert "Attention" in fit["node"]
    assert fit["refit"] and fit["output_error_after"] < 1e-4
    fresh = {"x": rng.standard_normal((4, 6, 32)).astype(np.float32)}
    want = run(model, fresh)[0]
    np.testing.assert_allclose(run(results["lsq"].model.result, fresh)[0], want, atol=1e-4 * np.abs(want).max())
    assert np.abs(run(results["none"].model.result, fresh)[0] - want).max() > 1e-2 * np.abs(want).max()
