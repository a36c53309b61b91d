"""Both torch exporters across opsets: a small CNN with a residual, a concat, a depthwise conv and
an SE gate, exported by the TorchScript exporter (opsets 11, 13, 17, 21) and by the
dynamo exporter (onnxscript; opsets 18 and 21), compressed by prune and fuse at 0.3."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np
import onnx
import pytest

import onnxfuse
from tests.helpers import run

torch = pytest.importorskip("torch")


class SmallNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        conv = torch.nn.Conv2d
        self.stem = torch.nn.Sequential(conv(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
        self.res = torch.nn.Sequential(conv(8, 8, 3, padding=1), torch.nn.ReLU(), conv(8, 8, 3, padding=1))
        self.branch = conv(8, 6, 1)
        self.dw = torch.nn.Sequential(conv(14, 14, 3, padding=1, groups=14), torch.nn.ReLU())
        self.se = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), conv(14, 4, 1), torch.nn.ReLU(), conv(4, 14, 1),
                                      torch.nn.Hardsigmoid())
        self.head = torch.nn.Linear(14, 5)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.res(x))
        x = self.dw(torch.cat([x, self.branch(x)], 1))
        x = x * self.se(x)
        return self.head(x.mean((2, 3)))


def _export(exporter: str, opset: int) -> onnx.ModelProto:
    torch.manual_seed(0)
    net = SmallNet().eval()
    x = torch.randn(2, 3, 12, 12)
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("torch").setLevel(logging.ERROR)
        if exporter == "dynamo":
            return torch.onnx.export(net, (x,), input_names=["input"], output_names=["logits"], opset_version=opset,
                                     dynamo=True, verbose=False).model_proto
        buf = io.BytesIO()
        torch.onnx.export(net, (x,), buf, input_names=["input"], output_names=["logits"], opset_version=opset,
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, dynamo=False)
        return onnx.load_from_string(buf.getvalue())


CASES = [("torchscript", 11), ("torchscript", 13), ("torchscript", 17), ("torchscript", 21),
         ("dynamo", 18), ("dynamo", 21)]


@pytest.mark.parametrize("exporter,opset", CASES, ids=[f"{e}-{o}" for e, o in CASES])
def test_exporters_and_opsets(exporter, opset):
    pytest.importorskip("onnxscript") if exporter == "dynamo" else None
    model = _export(exporter, opset)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == opset
    x = np.random.default_rng(0).standard_normal((2, 3, 12, 12)).astype(np.float32)
    expected = run(model, x)[0]
    report = onnxfuse.inspect(model)
    assert sorted(g["width"] for g in report["groups"] if g["prunable"]) == [4, 6, 8, 8]
    same, _ = onnxfuse.compress(model, 0.0, validate=False, quiet=True)
    np.testing.assert_allclose(run(same, x)[0], expected, atol=1e-4)
    for method in ("prune", "fuse"):
        compressed, report = onnxfuse.compress(model, 0.3, method=method, validate=False, quiet=True)
        onnx.checker.check_model(compressed, full_check=True)
        assert report["macs_after"] < report["macs_before"]
        assert run(compressed, x)[0].shape == expected.shape
