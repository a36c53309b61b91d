"""Method sdprun: the group-soft-threshold gRDA step, and the exactness of removing what it zeroed."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from onnxfuse import pipeline  # noqa: E402
from onnxfuse.graph.convert import runnable  # noqa: E402
from onnxfuse.training.sdprun import GroupRDA, channel_groups, threshold_constants, zeroed_channels  # noqa: E402
from onnxfuse.training.view import TorchView  # noqa: E402
from tests.helpers import run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINYRES = ROOT / "models" / "tinyres_fmnist_folded.onnx"
TRAIN = ROOT / "models" / "data" / "fmnist_train2000.npz"


def _analysis(model):
    options = pipeline.Options()
    return pipeline.run(pipeline.Context.for_model(options, model), stop_after="analyze").model.analysis


def _loss(view):
    x = torch.from_numpy(np.load(TRAIN)["input"][:8].astype(np.float32))
    return view(x)[0].logsumexp(1).mean()


def test_c_zero_is_plain_sgd():
    model = onnx.load(TINYRES)
    groups = channel_groups(_analysis(model))
    a, b = TorchView(model), TorchView(model)
    rda = GroupRDA(a, groups, lr=0.05, c=[0.0] * len(groups))
    sgd = torch.optim.SGD([p for p in b.parameters() if p.requires_grad], lr=0.05)
    for _ in range(3):
        for view, opt in ((a, rda), (b, sgd)):
            opt.zero_grad()
            _loss(view).backward()
            opt.step()
    for (name, p), (_, q) in zip(a.onnx_parameters(), b.onnx_parameters()):
        assert torch.allclose(p, q, atol=1e-6, rtol=0), name


def _norms(params):
    return sum(p.movedim(s.axis, 0)[torch.as_tensor(s.positions.ravel())].reshape(len(s.positions), -1)
               .pow(2).sum(1) for p, s in params).sqrt()


def test_without_gradients_the_step_is_the_relative_group_soft_threshold():
    model = onnx.load(TINYRES)
    analysis = _analysis(model)
    groups = channel_groups(analysis)
    view = TorchView(model)
    before = {name: p.detach().clone() for name, p in view.onnx_parameters()}
    lr = 0.01
    constants = threshold_constants(view, groups, [g.width // 2 for g in analysis.prunable], lr, 1)
    rda = GroupRDA(view, groups, lr=lr, c=constants)
    rda.step()  # no gradients: w = S(w0, g(1)), about half of each group's channels zero
    zeroed_somewhere = False
    for slices, c in zip(groups, constants):
        g = c * math.sqrt(lr) * lr ** rda.mu
        params = [(before[s.tensor], s) for s in slices]
        norms = _norms(params)
        rms = norms.pow(2).mean().sqrt()
        factor = torch.clamp(1 - g * rms / norms, min=0)
        factor *= rms / (norms * factor).pow(2).mean().sqrt()
        gone = zeroed_channels(view, slices)
        assert set(gone.tolist()) == set(np.flatnonzero(factor.numpy() == 0).tolist())
        zeroed_somewhere |= len(gone) > 0
        after = _norms([(view.parameter(s.tensor).detach(), s) for s in slices])
        assert torch.allclose(after.pow(2).mean().sqrt(), rms, rtol=1e-5)  # the group keeps its scale
        for p, s in params:
            expected = p.movedim(s.axis, 0)[torch.as_tensor(s.positions[:, 0])] * factor.view(-1, *[1] * (p.ndim - 1))
            got = view.parameter(s.tensor).detach().movedim(s.axis, 0)[torch.as_tensor(s.positions[:, 0])]
            assert torch.allclose(got, expected, atol=1e-6, rtol=1e-5), s.tensor
    assert zeroed_somewhere


def test_removing_the_channels_sdprun_zeroed_is_exact():
    options = pipeline.Options.from_flat(method="sdprun", sparsity=0.5, train_data=str(TRAIN), train_steps=6,
                                         batch=16, val_every=6, val_samples=32, validate=False, sdprun_c=0.5,
                                         lr=0.05)
    ctx = pipeline.run(pipeline.Context.for_model(options, str(TINYRES)), stop_after="sdprun")
    assert ctx.report["sdprun"]["zeroed"] > 0
    dense = runnable(ctx.model.graph, ctx.model.original)
    view = TorchView(dense)
    slices = dict(zip((g.id for g in ctx.model.analysis.prunable), channel_groups(ctx.model.analysis)))
    for group in ctx.model.analysis.prunable:  # remove only what reached zero
        ctx.decisions.keep[group.id] = np.setdiff1d(np.arange(group.width), zeroed_channels(view, slices[group.id]))
    rest = [p for p in pipeline.passes(ctx.options) if p.name in ("fuse", "emit")]
    ctx = pipeline.run_passes(ctx, rest)
    onnx.checker.check_model(ctx.model.result, full_check=True)
    assert ctx.report["params_after"] < ctx.report["params_before"]
    x = np.load(TRAIN)["input"][:64].astype(np.float32)
    expected, got = run(dense, x)[0], run(ctx.model.result, x)[0]
    assert np.abs(got - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())
