"""The torch view's op table: one torch function per ONNX op, `fn(node, inputs, attrs)`.

`node` is a `NodeInfo` (name, type, opset of its domain, number of outputs, the view's mode),
`inputs` the input tensors in order (None for an omitted optional input), `attrs` the attributes
as Python values (strings decoded, tensors as numpy arrays). A function returns one tensor or a
tuple, one per node output. Ops are keyed like the op rules: the type, prefixed with its domain
outside ONNX's. This module holds the registry and the elementwise and shape ops; `nn_ops` the
layers (Conv, pooling, normalisation, Gemm, Resize).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from ..errors import OnnxfuseError
from ..registry import Registry


@dataclass
class Mode:
    """The view's mode, shared by all its nodes: train/eval and the batch-norm policy."""
    training: bool = False
    bn: str = "frozen"


@dataclass(frozen=True)
class NodeInfo:
    name: str
    op_type: str
    opset: int
    n_outputs: int
    mode: Mode

    def error(self, what: str) -> OnnxfuseError:
        return OnnxfuseError(f"the torch view cannot run {self.op_type} node {self.name!r}: {what}")


OpFn = Callable[[NodeInfo, list, dict], object]
Check = Callable[[NodeInfo, dict], "str | None"]  # why the node cannot run, or None


@dataclass(frozen=True)
class TorchOp:
    fn: OpFn
    check: Check | None = None  # run once at construction: unsupported attribute values fail early


TORCH_OPS: Registry[TorchOp] = Registry("torch op")


def register_torch_op(*ops: str, check: Check | None = None, replace: bool = False):
    """Decorator: `fn` runs every op in `ops`; `check(node, attrs)` may refuse a node at construction."""
    def wrap(fn: OpFn) -> OpFn:
        for op in ops:
            TORCH_OPS.add(op, TorchOp(fn, check), replace=replace)
        return fn
    return wrap


# --------------------------------------------------------------------------- helpers
def opt(inputs: list, i: int):
    """Input i, or None when it is omitted."""
    return inputs[i] if len(inputs) > i else None


def ints(t) -> list[int]:
    """A shape, axes or index tensor (or list) as Python ints."""
    if isinstance(t, torch.Tensor):
        return [int(v) for v in t.reshape(-1).tolist()]
    return [int(v) for v in t]


def axes_arg(attrs: dict, inputs: list, i: int, key: str = "axes") -> list[int] | None:
    """Axes given as an attribute (older opsets) or as input i (newer); None when absent or empty."""
    axes = attrs.get(key)
    if axes is None and opt(inputs, i) is not None:
        axes = ints(inputs[i])
    return list(axes) if axes else None


def torch_dtype(elem_type: int) -> torch.dtype:
    if elem_type == onnx.TensorProto.BFLOAT16:
        return torch.bfloat16
    return torch.from_numpy(np.empty(0, onnx.helper.tensor_dtype_to_np_dtype(elem_type))).dtype


def _positive(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _unary(op: str, fn: Callable) -> None:
    register_torch_op(op)(lambda node, inputs, attrs: fn(inputs[0]))


def _binary(op: str, fn: Callable) -> None:
    register_torch_op(op)(lambda node, inputs, attrs: fn(inputs[0], inputs[1]))


# --------------------------------------------------------------------------- elementwise
for _op, _fn in {"Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Exp": torch.exp,
                 "Log": torch.log, "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs,
                 "Reciprocal": torch.reciprocal, "Erf": torch.erf, "Floor": torch.floor, "Ceil": torch.ceil,
                 "Round": torch.round, "Sign": torch.sign, "Sin": torch.sin, "Cos": torch.cos,
                 "Softplus": F.softplus, "Softsign": F.softsign, "Mish": F.mish, "Not": torch.logical_not,
                 "Identity": lambda x: x}.items():
    _unary(_op, _fn)

for _op, _fn in {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Equal": torch.eq, "Less": torch.lt,
                 "LessOrEqual": torch.le, "Greater": torch.gt, "GreaterOrEqual": torch.ge,
                 "And": torch.logical_and, "Or": torch.logical_or, "Xor": torch.logical_xor,
                 "MatMul": torch.matmul}.items():
    _binary(_op, _fn)


@register_torch_op("Div")
def div(node, inputs, attrs):
    a, b = inputs
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # ONNX integer division truncates, like C


@register_torch_op("Pow")
def pow_(node, inputs, attrs):
    return torch.pow(inputs[0], inputs[1]).to(inputs[0].dtype)


@register_torch_op("Mod")
def mod(node, inputs, attrs):
    return (torch.fmod if attrs.get("fmod", 0) else torch.remainder)(inputs[0], inputs[1])


@register_torch_op("Where")
def where(node, inputs, attrs):
    return torch.where(inputs[0], inputs[1], inputs[2])


@register_torch_op("Sum", "Mean", "Max", "Min")
def variadic(node, inputs, attrs):
    fn = {"Sum": torch.add, "Mean": torch.add, "Max": torch.maximum, "Min": torch.minimum}[node.op_type]
    out = inputs[0]
    for x in inputs[1:]:
        out = fn(out, x)
    return out / len(inputs) if node.op_type == "Mean" else out


@register_torch_op("LeakyRelu")
def leaky_relu(node, inputs, attrs):
    return F.leaky_relu(inputs[0], attrs.get("alpha", 0.01))


@register_torch_op("Elu")
def elu(node, inputs, attrs):
    return F.elu(inputs[0], attrs.get("alpha", 1.0))


@register_torch_op("Celu")
def celu(node, inputs, attrs):
    return F.celu(inputs[0], attrs.get("alpha", 1.0))


@register_torch_op("Selu")
def selu(node, inputs, attrs):
    alpha, gamma = attrs.get("alpha", 1.67326319217681884765625), attrs.get("gamma", 1.05070102214813232421875)
    return gamma * F.elu(inputs[0], alpha)


@register_torch_op("ThresholdedRelu")
def thresholded_relu(node, inputs, attrs):
    x = inputs[0]
    return torch.where(x > attrs.get("alpha", 1.0), x, torch.zeros_like(x))


@register_torch_op("HardSigmoid")
def hard_sigmoid(node, inputs, attrs):
    return torch.clamp(inputs[0] * attrs.get("alpha", 0.2) + attrs.get("beta", 0.5), 0, 1)


@register_torch_op("HardSwish")
def hard_swish(node, inputs, attrs):
    x = inputs[0]
    return x * torch.clamp(x * (1 / 6) + 0.5, 0, 1)


@register_torch_op("Gelu", check=lambda node, attrs: None if attrs.get("approximate", "none") in ("none", "tanh")
                   else f"approximate={attrs['approximate']!r}")
def gelu(node, inputs, attrs):
    return F.gelu(inputs[0], approximate=attrs.get("approximate", "none"))


@register_torch_op("PRelu")
def prelu(node, inputs, attrs):
    x, slope = inputs
    return torch.where(x < 0, x * slope, x)


@register_torch_op("Clip")
def clip(node, inputs, attrs):
    """Bounds come as attributes before opset 11, and then as inputs; constant scalar bounds the view
    passes as attributes too (view.py: `_scalar_bounds`), since hardtanh's backward is a fraction of
    the cost of clamp's with tensor bounds (ReLU6 networks)."""
    x = inputs[0]
    low = attrs["min"] if "min" in attrs else opt(inputs, 1) if node.opset >= 11 else None
    high = attrs["max"] if "max" in attrs else opt(inputs, 2) if node.opset >= 11 else None
    if isinstance(low, float) and isinstance(high, float):
        return F.hardtanh(x, low, high)
    return x if low is None and high is None else torch.clamp(x, low, high)


@register_torch_op("Cast")
def cast(node, inputs, attrs):
    return inputs[0].to(torch_dtype(attrs["to"]))


@register_torch_op("CastLike")
def cast_like(node, inputs, attrs):
    return inputs[0].to(inputs[1].dtype)


@register_torch_op("Einsum")
def einsum(node, inputs, attrs):
    return torch.einsum(attrs["equation"], *inputs)


# --------------------------------------------------------------------------- shapes and indexing
@register_torch_op("Shape")
def shape(node, inputs, attrs):
    dims = list(inputs[0].shape)[attrs.get("start", 0):attrs.get("end")]
    return torch.tensor(dims, dtype=torch.int64, device=inputs[0].device)


@register_torch_op("Size")
def size(node, inputs, attrs):
    return torch.tensor(inputs[0].numel(), dtype=torch.int64, device=inputs[0].device)


@register_torch_op("Reshape")
def reshape(node, inputs, attrs):
    x = inputs[0]
    dims = ints(inputs[1]) if opt(inputs, 1) is not None else list(attrs["shape"])
    if not attrs.get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


@register_torch_op("Flatten")
def flatten(node, inputs, attrs):
    x = inputs[0]
    axis = _positive(attrs.get("axis", 1), x.dim())
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@register_torch_op("Transpose")
def transpose(node, inputs, attrs):
    x = inputs[0]
    return x.permute(attrs.get("perm", list(range(x.dim()))[::-1]))


@register_torch_op("Concat")
def concat(node, inputs, attrs):
    return torch.cat(inputs, dim=attrs["axis"])


@register_torch_op("Split")
def split(node, inputs, attrs):
    x = inputs[0]
    axis = attrs.get("axis", 0)
    sizes = attrs.get("split") or (ints(inputs[1]) if opt(inputs, 1) is not None else None)
    if not sizes:
        n = attrs.get("num_outputs", node.n_outputs)
        sizes = -(-x.shape[axis] // n)  # ceil: the last part is the smaller one (opset 18)
    return tuple(torch.split(x, sizes, dim=axis))


@register_torch_op("Slice")
def slice_(node, inputs, attrs):
    x = inputs[0]
    if node.opset < 10:
        starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs.get("axes"), None
    else:
        starts, ends = ints(inputs[1]), ints(inputs[2])
        axes = ints(inputs[3]) if opt(inputs, 3) is not None else None
        steps = ints(inputs[4]) if opt(inputs, 4) is not None else None
    axes = axes or range(len(starts))
    steps = steps or [1] * len(starts)
    for axis, start, end, step in zip(axes, starts, ends, steps):
        axis = _positive(axis, x.dim())
        picked = range(*slice(start, end, step).indices(x.shape[axis]))  # ONNX clamps like Python
        if step > 0:
            x = x[(slice(None),) * axis + (slice(picked.start, picked.stop, step),)]
        else:
            x = x.index_select(axis, torch.tensor(list(picked), dtype=torch.int64, device=x.device))
    return x


@register_torch_op("Squeeze")
def squeeze(node, inputs, attrs):
    x = inputs[0]
    axes = axes_arg(attrs, inputs, 1)
    return x.squeeze() if axes is None else x.squeeze(tuple(_positive(a, x.dim()) for a in axes))


@register_torch_op("Unsqueeze")
def unsqueeze(node, inputs, attrs):
    x = inputs[0]
    axes = axes_arg(attrs, inputs, 1)
    rank = x.dim() + len(axes)
    for axis in sorted(_positive(a, rank) for a in axes):
        x = x.unsqueeze(axis)
    return x


@register_torch_op("Gather")
def gather(node, inputs, attrs):
    x, idx = inputs[0], inputs[1].long()
    axis = _positive(attrs.get("axis", 0), x.dim())
    flat = torch.where(idx < 0, idx + x.shape[axis], idx).reshape(-1)
    return x.index_select(axis, flat).reshape(x.shape[:axis] + idx.shape + x.shape[axis + 1:])


@register_torch_op("GatherElements")
def gather_elements(node, inputs, attrs):
    x, idx = inputs[0], inputs[1].long()
    axis = _positive(attrs.get("axis", 0), x.dim())
    return torch.gather(x, axis, torch.where(idx < 0, idx + x.shape[axis], idx))


@register_torch_op("Expand")
def expand(node, inputs, attrs):
    x = inputs[0]
    return x.expand(torch.broadcast_shapes(x.shape, tuple(ints(inputs[1]))))


@register_torch_op("Tile")
def tile(node, inputs, attrs):
    return inputs[0].repeat(ints(inputs[1]))


@register_torch_op("ConstantOfShape")
def constant_of_shape(node, inputs, attrs):
    value = attrs.get("value", np.zeros(1, np.float32))
    fill = torch.from_numpy(np.array(value).reshape(-1)[:1].copy())
    return torch.full(ints(inputs[0]), fill.item(), dtype=fill.dtype, device=inputs[0].device)


@register_torch_op("Range")
def range_(node, inputs, attrs):
    start, limit, delta = inputs
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device)


@register_torch_op("Pad", check=lambda node, attrs: None if attrs.get("mode", "constant") in _PAD_MODES
                   else f"mode={attrs['mode']!r}")
def pad(node, inputs, attrs):
    x = inputs[0]
    if node.opset < 11:
        pads, value = list(attrs["pads"]), attrs.get("value", 0.0)
    else:
        pads = ints(inputs[1])
        value = inputs[2].item() if opt(inputs, 2) is not None and inputs[2].numel() else 0.0
        if opt(inputs, 3) is not None:
            pads = _pads_on_axes(pads, ints(inputs[3]), x.dim())
    mode = _PAD_MODES[attrs.get("mode", "constant")]
    return F.pad(x, torch_pads(pads, trim=mode != "constant"), mode=mode, value=value if mode == "constant" else None)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


def _pads_on_axes(pads: list[int], axes: list[int], rank: int) -> list[int]:
    full = [0] * (2 * rank)
    for i, axis in enumerate(axes):
        axis = _positive(axis, rank)
        full[axis], full[rank + axis] = pads[i], pads[len(axes) + i]
    return full


def torch_pads(pads: list[int], trim: bool = False) -> list[int]:
    """ONNX pads (all begins, then all ends) as F.pad's (last axis first); `trim` drops the leading
    axes that are not padded (reflect and replicate pad only the trailing ones)."""
    n = len(pads) // 2
    out = [p for axis in reversed(range(n)) for p in (pads[axis], pads[n + axis])]
    while trim and len(out) > 2 and out[-2:] == [0, 0]:
        out = out[:-2]
    return out


# --------------------------------------------------------------------------- reductions
_REDUCE = {
    "ReduceMean": lambda x, d, k: x.mean(dim=d, keepdim=k),
    "ReduceSum": lambda x, d, k: x.sum(dim=d, keepdim=k),
    "ReduceMax": lambda x, d, k: x.amax(dim=d, keepdim=k),
    "ReduceMin": lambda x, d, k: x.amin(dim=d, keepdim=k),
    "ReduceProd": lambda x, d, k: _prod(x, d, k),
    "ReduceL1": lambda x, d, k: x.abs().sum(dim=d, keepdim=k),
    "ReduceL2": lambda x, d, k: torch.linalg.vector_norm(x, 2, dim=d, keepdim=k),
    "ReduceSumSquare": lambda x, d, k: (x * x).sum(dim=d, keepdim=k),
    "ReduceLogSumExp": lambda x, d, k: torch.logsumexp(x, dim=d, keepdim=k),
}


def _prod(x, dims, keep):
    for d in sorted(dims, reverse=True):
        x = x.prod(dim=d, keepdim=keep)
    return x


@register_torch_op(*_REDUCE)
def reduce(node, inputs, attrs):
    x = inputs[0]
    axes = axes_arg(attrs, inputs, 1)
    if axes is None:
        if attrs.get("noop_with_empty_axes", 0):
            return x
        axes = list(range(x.dim()))
    return _REDUCE[node.op_type](x, tuple(_positive(a, x.dim()) for a in axes), bool(attrs.get("keepdims", 1)))


@register_torch_op("ArgMax", "ArgMin")
def arg_extreme(node, inputs, attrs):
    x = inputs[0]
    axis, keep = _positive(attrs.get("axis", 0), x.dim()), bool(attrs.get("keepdims", 1))
    fn = torch.argmax if node.op_type == "ArgMax" else torch.argmin
    if not attrs.get("select_last_index", 0):
        return fn(x, dim=axis, keepdim=keep)
    return x.shape[axis] - 1 - fn(x.flip(axis), dim=axis, keepdim=keep)
