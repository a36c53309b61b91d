"""TPP (method tpp): its regulariser, its zero-out, and the exactness of removing what it zeroed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from onnxfuse import pipeline  # noqa: E402
from onnxfuse.graph.convert import runnable  # noqa: E402
from onnxfuse.training.tpp import Drop, TPPHooks, drop_norm_ratio  # noqa: E402
from onnxfuse.training.view import TorchView  # noqa: E402
from tests.helpers import run  # noqa: E402
from tests.tiny_models import assert_user_error  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINYRES = ROOT / "models" / "tinyres_fmnist_folded.onnx"
TRAIN = ROOT / "models" / "data" / "fmnist_train2000.npz"


def _conv_view():
    model = onnx.load(TINYRES)
    view = TorchView(model)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    return view, conv.input[1], (conv.input[2] if len(conv.input) > 2 else None)


def test_nothing_dropped_adds_nothing():
    view, _, _ = _conv_view()
    hooks = TPPHooks(view, [], update=10, stabilise=4, peak_lr=0.01)
    assert hooks.loss(0) is None
    for p in view.parameters():
        p.grad = torch.ones_like(p)
    hooks.before_step(3)
    hooks.after_step(13)
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in view.parameters())


def test_the_gram_term_reaches_kept_rows_only_through_cross_terms():
    view, weight, _ = _conv_view()
    param = view.parameter(weight)
    drop = Drop(weight, 0, np.array([1, 3]), True)
    hooks = TPPHooks(view, [[drop]], update=10, stabilise=4, peak_lr=0.01)
    with torch.no_grad():
        param[[1, 3]] = 0
    hooks.loss(9).backward()  # dropped rows zero: every term with them is zero, and so its gradient
    assert float(param.grad.abs().max()) == 0.0
    with torch.no_grad():
        param[[1, 3]] = 0.5
    param.grad = None
    hooks.loss(9).backward()
    kept = [i for i in range(param.shape[0]) if i not in (1, 3)]
    assert float(param.grad[kept].abs().max()) > 0 and float(param.grad[[1, 3]].abs().max()) > 0
    assert hooks.reg(4) == pytest.approx(0.5) and hooks.reg(9) == 1.0 and hooks.reg(12) == 1.0


def test_tpp_zeroes_what_it_drops_and_its_removal_is_exact():
    options = pipeline.Options.from_flat(method="tpp", target_macs=0.5, train_data=str(TRAIN), train_steps=12,
                                         tpp_update=8, tpp_stabilise=4, batch=16, val_every=6, val_samples=32,
                                         validate=False)
    ctx = pipeline.Context.for_model(options, str(TINYRES))
    ctx = pipeline.run(ctx, stop_after="tpp")
    assert ctx.report["tpp"]["dropped_norm_ratio"] == 0.0 and ctx.report["tpp"]["steps"] == 12
    dense = runnable(ctx.model.graph, ctx.model.original)
    assert dense.SerializeToString() != runnable(pipeline.run(pipeline.Context.for_model(
        options, str(TINYRES)), stop_after="plan").model.graph, ctx.model.original).SerializeToString()
    rest = [p for p in pipeline.passes(ctx.options) if p.name in ("fuse", "repair", "emit", "train")]
    ctx = pipeline.run_passes(ctx, rest)
    assert "train" not in ctx.report  # the budget went to the tpp phases
    onnx.checker.check_model(ctx.model.result, full_check=True)
    assert ctx.report["macs_after"] < 0.55 * ctx.report["macs_before"]
    x = np.load(TRAIN)["input"][:64].astype(np.float32)
    expected, got = run(dense, x)[0], run(ctx.model.result, x)[0]
    assert np.abs(got - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())


def test_drop_norm_ratio_sees_rows_left_nonzero():
    view, weight, _ = _conv_view()
    drop = Drop(weight, 0, np.array([0]), True)
    assert drop_norm_ratio(view, [[drop]]) > 1e-3
    with torch.no_grad():
        view.parameter(weight)[0] = 0
    assert drop_norm_ratio(view, [[drop]]) == 0.0


def test_tpp_needs_training_data_and_phases_that_fit(tmp_path, capsys):
    common = ["compress", TINYRES, "-o", tmp_path / "o.onnx", "--method", "tpp"]
    assert_user_error(common, capsys, tmp_path, "give --train-data")
    assert_user_error([*common, "--train-data", TRAIN, "--train-steps", "10", "--tpp-update", "9",
                       "--tpp-stabilise", "5"], capsys, tmp_path, "must fit in train-steps")
