"""Parity with Torch-Pruning: `prune --importance l1` removes the channels that
`torch_pruning.MetaPruner` with `MagnitudeImportance(p=1)` removes at the same uniform ratio, and the
compressed ONNX model computes what the Torch-Pruning-pruned torch model computes."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tp = pytest.importorskip("torch_pruning")

import onnxfuse  # noqa: E402
from models import zoo  # noqa: E402
from tests.helpers import export, randomize_bn, run  # noqa: E402


def _torch_pruned(model, sparsity):
    model = copy.deepcopy(model)
    last_linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(model, torch.zeros(1, 1, 28, 28),
                                  importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=sparsity, ignored_layers=[last_linear])
    pruner.step()
    return model


def _fused(model):
    """BN folded into the preceding Conv in torch, as the ONNX exporter folds it."""
    from torch.fx.experimental.optimization import fuse

    return fuse(copy.deepcopy(model))


@pytest.mark.parametrize("arch", ["resnet18", "vgg11bn", "tinyres"])
@pytest.mark.parametrize("variant", ["bn-kept", "bn-folded-by-exporter", "bn-folded-by-onnxfuse"])
@pytest.mark.parametrize("sparsity", [0.3, 0.5])
def test_same_channels_and_outputs_as_torch_pruning(arch, variant, sparsity):
    torch.manual_seed(0)
    model = zoo.build(arch, width=0.25).eval()
    randomize_bn(model)
    x = torch.rand(4, 1, 28, 28) * 255

    if variant == "bn-kept":
        onnx_model = export(model, x, keep_bn=True)
        reference = _torch_pruned(model, sparsity)
        fold_bn = False
    else:
        onnx_model = export(model, x, keep_bn=variant == "bn-folded-by-onnxfuse")
        reference = _torch_pruned(_fused(model), sparsity)
        fold_bn = True

    compressed, report = onnxfuse.compress(onnx_model, sparsity, method="prune", importance="l1",
                                           fold_bn=fold_bn, validate=False, quiet=True)
    with torch.no_grad():
        expected = reference(x).numpy()
    got = run(compressed, x.numpy())[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)

    torch_params = sum(p.numel() for p in reference.parameters())
    torch_params += sum(b.numel() for n, b in reference.named_buffers() if "running" in n)
    assert report["params_after"] == torch_params
