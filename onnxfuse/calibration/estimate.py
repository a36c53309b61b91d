"""Data-free channel statistics: each channel's mean, variance and mean |value| estimated by
propagating moments through the graph from its weights, without running it on data.

The inputs of the first weighted layer are taken as standardised (mean 0, variance 1 per element:
whatever preprocessing the graph does before it is skipped, since its input range is unknown).
A weighted layer's outputs are sums of many terms, taken as Gaussian with the mean and variance of
independent inputs (Σ w·m + b, Σ w²·v); an elementwise activation's moments are integrated over
that Gaussian (Gauss–Hermite); BatchNormalization resets its channels to the statistics it was
trained with (mean β, variance γ²); adds of two branches add means and variances. Ops without a
rule here leave their outputs unknown, and so everything computed from them: a group read only
at unknown tensors gets no estimate (its importance falls back to weights alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from scipy.special import erf

from ..graph.layouts import bias_values, layout_of
from ..graph.rewrites import constant_node_value
from .capture import ChannelStats

_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(48)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()  # E[f(z)], z ~ N(0, 1), as Σ w_k f(z_k)


@dataclass(frozen=True)
class Moments:
    axis: int  # the channel axis (negative: from the end)
    mean: np.ndarray
    var: np.ndarray
    abs_mean: np.ndarray

    @staticmethod
    def gaussian(axis: int, mean, var) -> Moments:
        mean, var = np.asarray(mean, float), np.maximum(np.asarray(var, float), 0.0)
        return Moments(axis, mean, var, gaussian_abs_mean(mean, var))


RHO = 0.0
RAW = "raw"  # a tensor computed from the graph inputs before any weighted layer: scale unknown


def gaussian_abs_mean(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    std = np.sqrt(var)
    safe = np.where(std > 0, std, 1.0)
    folded = std * np.sqrt(2 / np.pi) * np.exp(-0.5 * (mean / safe) ** 2) + mean * erf(mean / (safe * np.sqrt(2)))
    return np.where(std > 0, folded, np.abs(mean))


def estimated_stats(graph: gs.Graph, tensors: dict[str, int]) -> dict[str, ChannelStats]:
    """ChannelStats of each requested tensor (name → channel axis) that the rules reach with its
    channels on that axis; the others are left out."""
    known: dict[str, Moments | str] = {t.name: RAW for t in graph.inputs}
    for node in graph.nodes:
        outputs = _propagate(node, known)
        for tensor, moments in zip(node.outputs, outputs):
            if moments is not None:
                known[tensor.name] = moments
    stats = {}
    for name, axis in tensors.items():
        moments = known.get(name)
        rank = _rank(graph.tensors().get(name))
        if isinstance(moments, Moments) and rank and moments.axis % rank == axis % rank:
            stats[name] = ChannelStats(1, moments.mean, moments.var, moments.abs_mean)
    return stats


def _rank(tensor) -> int | None:
    shape = getattr(tensor, "shape", None)
    return len(shape) if shape is not None else None


def _constant(tensor) -> np.ndarray | None:
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values, dtype=np.float64)
    if isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        value = constant_node_value(tensor.inputs[0])
        return None if value is None else np.asarray(value, dtype=np.float64)
    return None


def _propagate(node: gs.Node, known) -> list:
    inputs = [known.get(t.name) if not t.is_empty() else None for t in node.inputs]
    if node.op in ("Constant", "Shape", "ConstantOfShape"):
        return []
    layout = layout_of(node)
    if layout is not None:
        return [_weighted(node, layout, inputs[0])]
    if inputs and inputs[0] is RAW:  # preprocessing before the first weighted layer
        return [RAW if all(x is RAW or x is None for x in inputs) else None] * len(node.outputs)
    rule = _RULES.get(node.op)
    return rule(node, inputs) if rule else []


def _weighted(node: gs.Node, layout, data) -> Moments | None:
    if layout.op == "ConvTranspose" or not isinstance(node.inputs[1], gs.Constant) or node.attrs.get("transA", 0):
        return None
    weight = np.asarray(node.inputs[1].values, dtype=np.float64)
    if layout.weight_scale:
        weight = weight * float(node.attrs.get(layout.weight_scale, 1.0))
    weight = np.moveaxis(weight, (layout.out_axis, layout.in_axis), (0, 1))  # (out, in per group, kernel…)
    out_width, in_per_group = weight.shape[:2]
    groups = int(node.attrs.get("group", 1))
    sums = weight.reshape(out_width, in_per_group, -1).sum(2)
    squares = (weight.reshape(out_width, in_per_group, -1) ** 2).sum(2)
    if data is RAW:
        in_mean, in_var = np.zeros(in_per_group * groups), np.ones(in_per_group * groups)
    elif isinstance(data, Moments) and data.mean.size == in_per_group * groups:
        in_mean, in_var = data.mean, data.var
    else:
        return None
    per_group = out_width // groups
    channel = (np.arange(out_width)[:, None] // per_group) * in_per_group + np.arange(in_per_group)[None, :]
    bias = bias_values(node, layout, out_width)
    if bias is None:
        return None
    mean = (sums * in_mean[channel]).sum(1) + bias
    var = (((1 - RHO) * squares + RHO * sums ** 2) * in_var[channel]).sum(1)
    return Moments.gaussian(1 if layout.op != "MatMul" else -1, mean, var)


# --------------------------------------------------------------------------- op rules
_RULES: dict = {}


def _rule(*ops):
    def wrap(fn):
        for op in ops:
            _RULES[op] = fn
        return fn
    return wrap


def _elementwise(fn):
    """The moments of fn(x), x ~ N(mean, var) per channel, by quadrature."""
    def apply(m: Moments, *args) -> Moments:
        samples = m.mean[:, None] + np.sqrt(m.var)[:, None] * _NODES[None, :]
        values = fn(samples, *args)
        mean = values @ _WEIGHTS
        return Moments(m.axis, mean, np.maximum((values ** 2) @ _WEIGHTS - mean ** 2, 0.0), np.abs(values) @ _WEIGHTS)
    return apply


def _sigmoid(x):
    return 0.5 * (1 + np.tanh(0.5 * x))


def _leaky_relu(alpha):
    return lambda x: np.where(x > 0, x, alpha * x)


def _hard_sigmoid(alpha, beta):
    return lambda x: np.clip(alpha * x + beta, 0, 1)


def _elu(alpha):
    return lambda x: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


_ACTIVATIONS = {
    "Relu": lambda n: (lambda x: np.maximum(x, 0)),
    "LeakyRelu": lambda n: _leaky_relu(n.attrs.get("alpha", 0.01)),
    "Sigmoid": lambda n: _sigmoid,
    "Tanh": lambda n: np.tanh,
    "HardSigmoid": lambda n: _hard_sigmoid(n.attrs.get("alpha", 0.2), n.attrs.get("beta", 0.5)),
    "HardSwish": lambda n: (lambda x: x * np.clip(x / 6 + 0.5, 0, 1)),
    "Elu": lambda n: _elu(n.attrs.get("alpha", 1.0)),
    "Softplus": lambda n: (lambda x: np.logaddexp(0, x)),
    "Gelu": lambda n: (lambda x: 0.5 * x * (1 + erf(x / np.sqrt(2)))),
}


@_rule(*_ACTIVATIONS)
def _activation(node, inputs):
    if not isinstance(inputs[0], Moments):
        return []
    return [_elementwise(_ACTIVATIONS[node.op](node))(inputs[0])]


@_rule("Clip")
def _clip(node, inputs):
    def bound(index, name):
        given = len(node.inputs) > index and not node.inputs[index].is_empty()
        return _constant(node.inputs[index]) if given else node.attrs.get(name)

    low, high = bound(1, "min"), bound(2, "max")
    if not isinstance(inputs[0], Moments):
        return []
    low = -np.inf if low is None else float(np.asarray(low))
    high = np.inf if high is None else float(np.asarray(high))
    return [_elementwise(lambda x: np.clip(x, low, high))(inputs[0])]


@_rule("PRelu")
def _prelu(node, inputs):
    slope = _constant(node.inputs[1])
    m = inputs[0]
    if not isinstance(m, Moments) or slope is None:
        return []
    slopes = _per_channel(slope, m, _rank(node.outputs[0]))
    if slopes is None:
        return []
    samples = m.mean[:, None] + np.sqrt(m.var)[:, None] * _NODES[None, :]
    values = np.where(samples > 0, samples, slopes[:, None] * samples)
    mean = values @ _WEIGHTS
    return [Moments(m.axis, mean, np.maximum((values ** 2) @ _WEIGHTS - mean ** 2, 0), np.abs(values) @ _WEIGHTS)]


@_rule("BatchNormalization")
def _batch_norm(node, inputs):
    scale, shift = _constant(node.inputs[1]), _constant(node.inputs[2])
    if not isinstance(inputs[0], Moments) or scale is None or shift is None:
        return []
    return [Moments.gaussian(1, shift, scale ** 2)]


def _per_channel(value: np.ndarray, m: Moments, rank: int | None) -> np.ndarray | None:
    """A constant operand as one value per channel of `m` (None when it varies along other axes)."""
    width = m.mean.size
    if value.size == 1:
        return np.full(width, float(value.reshape(-1)[0]))
    if value.size != width or rank is None:
        return None
    axis = m.axis % rank - (rank - value.ndim)  # numpy broadcasting aligns the shapes on the right
    return value.reshape(-1) if 0 <= axis < value.ndim and value.shape[axis] == width else None


@_rule("Add", "Sub", "Sum")
def _add(node, inputs):
    sign = -1.0 if node.op == "Sub" else 1.0
    terms = []
    for index, (tensor, m) in enumerate(zip(node.inputs, inputs)):
        if isinstance(m, Moments):
            terms.append((m, 1.0 if index == 0 else sign))
            continue
        value = _constant(tensor)
        if value is None:
            return []
        terms.append((value, 1.0 if index == 0 else sign))
    variables = [m for m, _ in terms if isinstance(m, Moments)]
    if not variables or any(v.mean.size != variables[0].mean.size or v.axis != variables[0].axis for v in variables):
        return []
    mean, var = np.zeros(variables[0].mean.size), np.zeros(variables[0].mean.size)
    for term, s in terms:
        if isinstance(term, Moments):
            mean, var = mean + s * term.mean, var + term.var
        else:
            shift = _per_channel(term, variables[0], _rank(node.outputs[0]))
            if shift is None:
                return []
            mean = mean + s * shift
    return [Moments.gaussian(variables[0].axis, mean, var)]


@_rule("Mul", "Div")
def _mul(node, inputs):
    a, b = inputs[:2]
    if isinstance(a, Moments) and isinstance(b, Moments):
        if node.op == "Div" or a.mean.size != b.mean.size:
            return []
        mean = a.mean * b.mean
        second = (a.var + a.mean ** 2) * (b.var + b.mean ** 2)
        return [Moments(a.axis, mean, np.maximum(second - mean ** 2, 0), a.abs_mean * b.abs_mean)]  # independent
    m, value = (a, _constant(node.inputs[1])) if isinstance(a, Moments) else (b, _constant(node.inputs[0]))
    if not isinstance(m, Moments) or value is None or (node.op == "Div" and m is b):
        return []
    factor = _per_channel(value, m, _rank(node.outputs[0]))
    if factor is None:
        return []
    if node.op == "Div":
        factor = 1.0 / factor
    return [Moments(m.axis, m.mean * factor, m.var * factor ** 2, m.abs_mean * np.abs(factor))]


@_rule("Identity", "Dropout", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Pad",
       "Resize", "Upsample")
def _same(node, inputs):
    return [inputs[0]] if isinstance(inputs[0], Moments) else []


@_rule("Flatten", "Reshape")
def _flatten(node, inputs):
    m = inputs[0]
    source, target = node.inputs[0], node.outputs[0]
    if not isinstance(m, Moments) or _rank(target) != 2 or m.axis != 1:
        return []
    shape = getattr(source, "shape", None)
    if shape is None or any(not isinstance(d, int) for d in shape[1:]):
        return []
    repeat = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    if node.op == "Flatten" and node.attrs.get("axis", 1) != 1:
        return []
    rep = lambda v: np.repeat(v, repeat)  # noqa: E731  channel-major flatten: each channel's positions in a row
    return [Moments(1, rep(m.mean), rep(m.var), rep(m.abs_mean))]


@_rule("Concat")
def _concat(node, inputs):
    axis = node.attrs.get("axis")
    if not inputs or not all(isinstance(m, Moments) and m.axis == inputs[0].axis for m in inputs):
        return []
    rank = _rank(node.outputs[0])
    if rank is None or axis % rank != inputs[0].axis % rank:
        return []
    joined = (np.concatenate([getattr(m, f) for m in inputs]) for f in ("mean", "var", "abs_mean"))
    return [Moments(inputs[0].axis, *joined)]


@_rule("Split")
def _split(node, inputs):
    m = inputs[0]
    rank = _rank(node.inputs[0])
    if not isinstance(m, Moments) or rank is None or node.attrs.get("axis", 0) % rank != m.axis % rank:
        return []
    sizes = node.attrs.get("split")
    if sizes is None and len(node.inputs) > 1 and not node.inputs[1].is_empty():
        sizes = _constant(node.inputs[1])
    if sizes is None:
        sizes = [m.mean.size // len(node.outputs)] * len(node.outputs)
    edges = np.cumsum([0, *[int(s) for s in sizes]])
    if edges[-1] != m.mean.size:
        return []
    return [Moments(m.axis, m.mean[a:b], m.var[a:b], m.abs_mean[a:b]) for a, b in zip(edges[:-1], edges[1:])]
