"""Random small CNNs for the fuzzing suite (tests/test_fuzz.py): a `Spec` describes a topology as
plain tuples (so a failing example can be pasted into an `@example`), `build` makes the torch
module, `export_torchscript` / `export_dynamo` turn it into ONNX.

`act` (the activation after every conv-bn) is one of ACTIVATIONS; the SE block and the head's
hidden layer always use ReLU.

Blocks (each a tuple whose first item is its kind; widths are output channels):

- ("residual", c_out, proj, stride): conv3(stride)-bn-act-conv3-bn + shortcut (identity when proj
  is False, then c_out equals the input width and stride is 1; else 1×1 conv(stride) + bn), add, act.
- ("concat", w1, w2, mode): conv3-bn-act branch (w1) ‖ conv1-bn-act branch (w2) concatenated on
  channels; mode "two" just these, "input" the input itself as a third part, "crelu" the w1 branch
  is concatenated as [relu(a), relu(-a)] (CReLU) before the w2 branch, so w1 channels appear twice.
- ("split", half, how, c_out): C2f-style: conv1 to 2·half channels, cut in two with `how`
  ("chunk" = torch.chunk, "split" = torch.split with unequal sizes [half-1, half+1], "slice" =
  indexing), the second part through a conv3, all three concatenated, conv1 to c_out.
- ("depthwise", mult, c_out): depthwise conv3 (groups = C, C·mult outputs)-bn-act, conv1 to c_out.
- ("se", hidden, how, gate): squeeze-and-excitation; how: "conv" (1×1 convs on the pooled map),
  "unsqueeze" / "view" / "reshape" (flatten + Linear, back to N×C×1×1 in that way); gate:
  "sigmoid" or "hard" (Hardsigmoid).
- ("tconv", c_out, depthwise): ConvTranspose2d stride 2 (group = C and c_out = C when depthwise),
  bn, act, then a stride-2 conv3 back to the input resolution.
- ("pool",): MaxPool2d(2).

Head: ("gap", hidden) global average pool + flatten + Linear (through a hidden Linear-ReLU when
hidden > 0) or ("flatten", how, hidden) with how "flatten" (torch.flatten) or "view"
(x.view(N, -1)); the feature map is first average-pooled to at most 4×4 (the largest side
that divides H; H ≥ 2 keeps H·W > 1).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np

NUM_CLASSES = 5
ACTIVATIONS = ("relu", "relu6", "leaky", "hardswish", "silu", "gelu", "prelu")


@dataclass(frozen=True)
class Spec:
    stem: int  # stem conv width
    blocks: tuple  # block tuples, see the module docstring
    head: tuple
    size: int = 16  # input H = W
    stride: int = 1  # stem stride
    seed: int = 0
    extra_output: bool = False  # also return the last feature map as a second graph output
    act: str = "relu"


def widths(spec: Spec) -> list[int]:
    """Channel width after the stem and after each block (checks the spec is consistent)."""
    c = spec.stem
    out = [c]
    for block in spec.blocks:
        kind = block[0]
        if kind == "residual":
            if not block[2]:
                assert block[1] == c and block[3] == 1, f"identity residual needs c_out == {c}, stride 1: {block}"
            c = block[1]
        elif kind == "concat":
            c = {"two": 0, "input": c, "crelu": block[1]}[block[3]] + block[1] + block[2]
        elif kind in ("split", "depthwise"):
            c = block[3] if kind == "split" else block[2]
        elif kind == "tconv" and block[2]:
            assert block[1] == c, f"depthwise tconv keeps the width {c}: {block}"
        elif kind == "tconv":
            c = block[1]
        out.append(c)
    return out


def spatial(spec: Spec) -> int:
    h = (spec.size + 2 - 3) // spec.stride + 1
    for block in spec.blocks:
        if block[0] == "pool" or (block[0] == "residual" and block[3] == 2):
            assert h >= 2, f"{block} on a 1×1 map"
            h = h // 2 if block[0] == "pool" else (h - 1) // 2 + 1
    return h


def build(spec: Spec):
    """The torch module for `spec`, with seeded weights and random BN statistics, in eval mode."""
    import torch
    from torch import nn

    torch.manual_seed(spec.seed)

    def act(c):
        if spec.act == "prelu":
            return nn.PReLU(c, init=0.1)
        return {"relu": nn.ReLU, "relu6": nn.ReLU6, "leaky": lambda: nn.LeakyReLU(0.1),
                "hardswish": nn.Hardswish, "silu": nn.SiLU, "gelu": nn.GELU}[spec.act]()

    def cbr(c_in, c_out, k=3, stride=1, groups=1, relu=True):
        layers = [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
        return nn.Sequential(*layers, act(c_out)) if relu else nn.Sequential(*layers)

    class Residual(nn.Module):
        def __init__(self, c_in, c_out, proj, stride):
            super().__init__()
            self.body = nn.Sequential(cbr(c_in, c_out, stride=stride), cbr(c_out, c_out, relu=False))
            self.short = cbr(c_in, c_out, 1, stride=stride, relu=False) if proj else nn.Identity()
            self.act = act(c_out)

        def forward(self, x):
            return self.act(self.body(x) + self.short(x))

    class Concat(nn.Module):
        def __init__(self, c_in, w1, w2, mode):
            super().__init__()
            self.mode = mode
            self.a = nn.Sequential(nn.Conv2d(c_in, w1, 3, 1, 1, bias=False), nn.BatchNorm2d(w1))
            self.act_a = act(w1) if mode != "crelu" else None
            self.b = cbr(c_in, w2, 1)

        def forward(self, x):
            a = self.a(x)
            parts = [torch.relu(a), torch.relu(-a)] if self.mode == "crelu" else [self.act_a(a)]
            return torch.cat(parts + [self.b(x)] + ([x] if self.mode == "input" else []), 1)

    class Split(nn.Module):
        def __init__(self, c_in, half, how, c_out):
            super().__init__()
            self.half, self.how = half, how
            self.cv1, self.m = cbr(c_in, 2 * half, 1), None
            second = half + 1 if how == "split" else half
            self.m = cbr(second, second)
            self.cv2 = cbr(2 * half + second, c_out, 1)

        def forward(self, x):
            y = self.cv1(x)
            if self.how == "chunk":
                a, b = torch.chunk(y, 2, 1)
            elif self.how == "split":
                a, b = torch.split(y, [self.half - 1, self.half + 1], 1)
            else:
                a, b = y[:, : self.half], y[:, self.half:]
            return self.cv2(torch.cat([a, b, self.m(b)], 1))

    class Depthwise(nn.Module):
        def __init__(self, c_in, mult, c_out):
            super().__init__()
            self.dw, self.pw = cbr(c_in, c_in * mult, groups=c_in), cbr(c_in * mult, c_out, 1)

        def forward(self, x):
            return self.pw(self.dw(x))

    class SE(nn.Module):
        def __init__(self, c, hidden, how, gate):
            super().__init__()
            self.how, self.c = how, c
            if how == "conv":
                self.fc1, self.fc2 = nn.Conv2d(c, hidden, 1), nn.Conv2d(hidden, c, 1)
            else:
                self.fc1, self.fc2 = nn.Linear(c, hidden), nn.Linear(hidden, c)
            self.gate = nn.Sigmoid() if gate == "sigmoid" else nn.Hardsigmoid()

        def forward(self, x):
            s = nn.functional.adaptive_avg_pool2d(x, 1)
            if self.how != "conv":
                s = torch.flatten(s, 1)
            s = self.gate(self.fc2(torch.relu(self.fc1(s))))
            if self.how == "unsqueeze":
                s = s[:, :, None, None]
            elif self.how == "view":
                s = s.view(-1, self.c, 1, 1)
            elif self.how == "reshape":
                s = s.reshape(x.shape[0], x.shape[1], 1, 1)
            return x * s

    class TConv(nn.Module):
        def __init__(self, c_in, c_out, depthwise):
            super().__init__()
            self.up = nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 2, 2, groups=c_in if depthwise else 1,
                                                       bias=False), nn.BatchNorm2d(c_out), act(c_out))
            self.down = cbr(c_out, c_out, stride=2)

        def forward(self, x):
            return self.down(self.up(x))

    class Head(nn.Module):
        def __init__(self, c, h, head):
            super().__init__()
            self.kind = head[0]
            self.how = head[1] if self.kind == "flatten" else None
            hidden = head[-1]
            side = max(d for d in (1, 2, 3, 4) if h % d == 0)
            self.pool = nn.AvgPool2d(h // side) if h != side else nn.Identity()
            features = c * side * side if self.kind == "flatten" else c
            if hidden:
                self.fc = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, NUM_CLASSES))
            else:
                self.fc = nn.Linear(features, NUM_CLASSES)

        def forward(self, x):
            if self.kind == "gap":
                return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
            x = self.pool(x)
            x = torch.flatten(x, 1) if self.how == "flatten" else x.view(x.size(0), -1)
            return self.fc(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            ws = widths(spec)
            self.stem = cbr(3, spec.stem, stride=spec.stride)
            layers = []
            for c_in, block in zip(ws, spec.blocks):
                kind, args = block[0], block[1:]
                layers.append({"residual": Residual, "concat": Concat, "split": Split, "depthwise": Depthwise,
                               "se": SE, "tconv": TConv, "pool": lambda c: nn.MaxPool2d(2)}[kind](c_in, *args))
            self.blocks = nn.Sequential(*layers)
            self.head = Head(ws[-1], spatial(spec), spec.head)
            self.extra = spec.extra_output

        def forward(self, x):
            f = self.blocks(self.stem(x))
            y = self.head(f)
            return (y, f) if self.extra else y

    net = Net()
    gen = torch.Generator().manual_seed(spec.seed + 1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
    return net.eval()


def example_input(spec: Spec, batch: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, 3, spec.size, spec.size)).astype(np.float32)


def output_names(spec: Spec) -> list[str]:
    return ["logits", "features"] if spec.extra_output else ["logits"]


def export_torchscript(net, spec: Spec, opset: int, dynamic_batch: bool, keep_bn: bool = False):
    """TorchScript export; eval mode folds BN into the convs, `keep_bn` keeps BatchNormalization nodes
    (no constant folding)."""
    import onnx
    import torch

    buf = io.BytesIO()
    outputs = output_names(spec)
    dynamic = {name: {0: "N"} for name in ["input", *outputs]} if dynamic_batch else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(example_input(spec)),), buf, input_names=["input"],
                          output_names=outputs, dynamic_axes=dynamic, opset_version=opset, dynamo=False,
                          training=torch.onnx.TrainingMode.PRESERVE if keep_bn else torch.onnx.TrainingMode.EVAL,
                          do_constant_folding=not keep_bn)
    return onnx.load_from_string(buf.getvalue())


def export_dynamo(net, spec: Spec, dynamic_batch: bool = False):
    """Dynamo export (its default opset; batch 1, or a dynamic batch traced at 2); raises whatever
    the exporter raises."""
    import contextlib
    import logging

    import torch

    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("torch").setLevel(logging.ERROR)
        x = torch.from_numpy(example_input(spec, batch=2 if dynamic_batch else 1))
        dynamic = {"x": {0: torch.export.Dim("N", min=1, max=64)}} if dynamic_batch else None
        program = torch.onnx.export(net, (x,), input_names=["input"], output_names=output_names(spec),
                                    dynamic_shapes=dynamic, dynamo=True, verbose=False)
    return program.model_proto
