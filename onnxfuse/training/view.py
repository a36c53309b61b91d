"""The torch view: an ONNX graph run node by node with torch ops, so that it can be trained, and
`write_back`, which puts the trained values into a copy of the same graph by name.

Every float initializer and every float Constant-node value is one `nn.Parameter`, keyed by its
ONNX name (a weight read by several nodes is one Parameter: tied). Those read only as statistics or
bounds (BatchNormalization mean and variance, Clip bounds, Pad values, Resize scales) do not
require gradients; BN updates its statistics itself with bn="train". Other constants (shapes,
axes, indices) are buffers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from ..errors import OnnxfuseError
from . import attention_ops, nn_ops  # noqa: F401  (register the layer and attention ops)
from .ops import TORCH_OPS, Mode, NodeInfo, OpFn

BN_MODES = ("frozen", "train")
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
# (op type, input index) pairs that read a float tensor as a statistic or a bound, not as a weight
NOT_WEIGHTS = {("BatchNormalization", 3), ("BatchNormalization", 4), ("Clip", 1), ("Clip", 2), ("Pad", 2),
               ("Resize", 1), ("Resize", 2), ("Upsample", 1), ("Dropout", 1)}


@dataclass(frozen=True)
class _Step:
    fn: OpFn
    node: NodeInfo
    attrs: dict
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    frees: tuple[str, ...]  # values read for the last time here


class TorchView(nn.Module):
    """`TorchView(model, bn="frozen"|"train")`; `view(*inputs)` or `view(**feeds)` returns the graph
    outputs as a tuple, in graph order. Like any nn.Module it starts in train mode: call `.eval()`
    to run it as ONNX Runtime does (Dropout off; BN uses running statistics in either mode when frozen)."""

    def __init__(self, model: onnx.ModelProto, bn: str = "frozen"):
        super().__init__()
        if bn not in BN_MODES:
            raise OnnxfuseError(f"bn must be one of {', '.join(BN_MODES)}, got {bn!r}")
        graph = model.graph
        if len(graph.sparse_initializer):
            raise OnnxfuseError("the torch view does not support sparse initializers")
        self._mode = Mode(bn=bn)
        self.weights = nn.ParameterDict()
        self.constants = nn.Module()  # holds the non-float constants as buffers
        self.param_keys: dict[str, str] = {}  # ONNX name -> key in self.weights
        self.buffer_keys: dict[str, str] = {}  # ONNX name -> buffer name in self.constants
        self._keys_taken: set[str] = set()
        roles = _roles(graph)
        for tensor in graph.initializer:
            self._add_constant(tensor.name, _tensor_array(tensor), tensor.data_type, roles)
        opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
        nodes = []
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                array, dtype = _constant_array(node)
                self._add_constant(node.output[0], array, dtype, roles)
            else:
                nodes.append(node)
        known = set(self.param_keys) | set(self.buffer_keys)
        self.input_names = [i.name for i in graph.input if i.name not in known]
        self.output_names = [o.name for o in graph.output]
        scalars = self._fixed_scalars()
        nodes = [_scalar_bounds(node, scalars) for node in nodes]
        self._steps = _compile(nodes, opsets, self._mode, set(self.input_names) | known, self.output_names)

    # ------------------------------------------------------------------ parameters
    def parameter(self, name: str) -> nn.Parameter:
        """The Parameter of the ONNX tensor `name`."""
        if name not in self.param_keys:
            raise KeyError(f"no float initializer or Constant named {name!r}")
        return self.weights[self.param_keys[name]]

    def onnx_parameters(self):
        """(ONNX name, Parameter) pairs, in graph order."""
        return ((name, self.weights[key]) for name, key in self.param_keys.items())

    def trained_names(self) -> set[str]:
        """The ONNX names of the Parameters that require gradients (weights, not statistics or bounds)."""
        return {name for name, p in self.onnx_parameters() if p.requires_grad}

    def trained_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def _fixed_scalars(self) -> dict[str, float]:
        """One-element float constants that are not trained (bounds, statistics), by ONNX name."""
        return {name: float(self.weights[key]) for name, key in self.param_keys.items()
                if not self.weights[key].requires_grad and self.weights[key].numel() == 1}

    def _add_constant(self, name: str, array: np.ndarray, dtype: int, roles: dict) -> None:
        value = _to_torch(array, dtype)
        taken = self._keys_taken
        if dtype in FLOAT_TYPES:
            key = _key(name, taken, self.weights)
            trainable = any(role not in NOT_WEIGHTS for role in roles.get(name, [None]))
            self.weights[key] = nn.Parameter(value, requires_grad=trainable)
            self.param_keys[name] = key
        else:
            key = _key(name, taken, self.constants)
            self.constants.register_buffer(key, value)
            self.buffer_keys[name] = key
        taken.add(key)

    # ------------------------------------------------------------------ running
    def forward(self, *inputs, **feeds):
        env = self._feeds(inputs, feeds)
        env.update((name, self.weights[key]) for name, key in self.param_keys.items())
        env.update((name, self.constants._buffers[key]) for name, key in self.buffer_keys.items())
        self._mode.training = self.training
        for step in self._steps:
            out = step.fn(step.node, [env[n] if n else None for n in step.inputs], step.attrs)
            for name, value in zip(step.outputs, out if isinstance(out, (tuple, list)) else (out,)):
                if name:
                    env[name] = value
            for name in step.frees:
                del env[name]
        return tuple(env[name] for name in self.output_names)

    def _feeds(self, inputs: tuple, feeds: dict) -> dict:
        if inputs and feeds:
            raise OnnxfuseError("give the inputs either by position or by name, not both")
        if len(inputs) > len(self.input_names):
            raise OnnxfuseError(f"the graph has {len(self.input_names)} inputs, got {len(inputs)}")
        named = dict(zip(self.input_names, inputs)) if inputs else dict(feeds)
        missing = [n for n in self.input_names if n not in named]
        unknown = [n for n in named if n not in self.input_names]
        if missing or unknown:
            raise OnnxfuseError(f"graph inputs missing: {missing}, unknown: {unknown}")
        device = next(iter(self.parameters()), torch.empty(0)).device
        return {n: v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v), device=device)
                for n, v in named.items()}


def _compile(nodes, opsets: dict, mode: Mode, available: set[str], outputs: list[str]) -> tuple[_Step, ...]:
    """The steps in graph order; an op without a torch function (or with attributes its function
    refuses) fails here, before any forward."""
    steps = []
    for node in nodes:
        domain = node.domain or "ai.onnx"
        key = node.op_type if domain == "ai.onnx" else f"{domain}.{node.op_type}"
        label = node.name or (node.output[0] if node.output else "?")
        entry = TORCH_OPS.find(key)
        if entry is None:
            raise OnnxfuseError(f"the torch view has no op {key} (node {label!r}); supported: see "
                                "onnxfuse/training/ops.py")
        info = NodeInfo(label, node.op_type, opsets.get(domain, 1), len(node.output), mode)
        attrs = {a.name: _attribute(a) for a in node.attribute}
        reason = entry.check(info, attrs) if entry.check else None
        if reason:
            raise info.error(reason)
        missing = [n for n in node.input if n and n not in available]
        if missing:
            raise OnnxfuseError(f"node {label!r} reads {missing[0]!r}, which nothing before it produces")
        available.update(n for n in node.output if n)
        steps.append([entry.fn, info, attrs, tuple(node.input), tuple(node.output)])
    return tuple(_Step(*s, frees) for s, frees in zip(steps, _last_uses(steps, set(outputs))))


def _scalar_bounds(node: onnx.NodeProto, scalars: dict[str, float]) -> onnx.NodeProto:
    """A Clip (opset 11 and later) whose bounds are fixed scalars, with the bounds as float
    attributes instead of inputs; other nodes unchanged. The graph itself is not changed."""
    if node.op_type != "Clip" or node.domain not in ("", "ai.onnx") or \
            not all(name in scalars for name in node.input[1:3] if name):
        return node
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    for index, attribute in ((1, "min"), (2, "max")):
        if len(node.input) > index and node.input[index]:
            copy.attribute.append(onnx.helper.make_attribute(attribute, scalars[node.input[index]]))
    del copy.input[1:]
    return copy


def _last_uses(steps: list, keep: set[str]) -> list[tuple[str, ...]]:
    last = {}
    for i, step in enumerate(steps):
        for name in (*step[3], *step[4]):
            if name:
                last[name] = i
    frees = [[] for _ in steps]
    for name, i in last.items():
        if name not in keep:
            frees[i].append(name)
    return [tuple(f) for f in frees]


def _roles(graph: onnx.GraphProto) -> dict[str, list[tuple[str, int]]]:
    roles: dict[str, list] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            roles.setdefault(name, []).append((node.op_type, i))
    return roles


def _key(name: str, taken: set[str], container: nn.Module) -> str:
    """A valid, unused attribute name for `name`; distinct ONNX names never share a key."""
    base = re.sub(r"\W", "_", name) or "t"
    base = base if base[0].isalpha() or base[0] == "_" else "t_" + base
    key, n = base, 1
    while key in taken or hasattr(container, key):
        n += 1
        key = f"{base}_{n}"
    return key


def _attribute(a: onnx.AttributeProto):
    if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        raise OnnxfuseError(f"the torch view does not run subgraphs (attribute {a.name!r})")
    value = onnx.helper.get_attribute_value(a)
    if a.type == onnx.AttributeProto.TENSOR:
        return numpy_helper.to_array(value)
    if isinstance(value, bytes):
        return value.decode()
    if a.type == onnx.AttributeProto.STRINGS:
        return [v.decode() for v in value]
    return list(value) if a.type in (onnx.AttributeProto.INTS, onnx.AttributeProto.FLOATS) else value


def _tensor_array(tensor: onnx.TensorProto) -> np.ndarray:
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        raise OnnxfuseError(f"initializer {tensor.name!r} is stored outside the model: load its external data first")
    if tensor.data_type == onnx.TensorProto.STRING:
        raise OnnxfuseError(f"the torch view does not support string tensors ({tensor.name!r})")
    return numpy_helper.to_array(tensor)


def _constant_array(node: onnx.NodeProto) -> tuple[np.ndarray, int]:
    a = node.attribute[0] if len(node.attribute) == 1 else None
    kinds = {"value_float": onnx.TensorProto.FLOAT, "value_floats": onnx.TensorProto.FLOAT,
             "value_int": onnx.TensorProto.INT64, "value_ints": onnx.TensorProto.INT64}
    if a is not None and a.name == "value":
        return _tensor_array(a.t), a.t.data_type
    if a is not None and a.name in kinds:
        dtype = kinds[a.name]
        return np.array(onnx.helper.get_attribute_value(a), onnx.helper.tensor_dtype_to_np_dtype(dtype)), dtype
    raise OnnxfuseError(f"Constant node {node.name!r}: only value, value_float(s) and value_int(s) are supported")


def _to_torch(array: np.ndarray, dtype: int) -> torch.Tensor:
    if dtype == onnx.TensorProto.BFLOAT16:  # numpy has no bfloat16 torch reads: go through the bits
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.array(array, copy=True))


def _to_numpy(value: torch.Tensor, dtype: int) -> np.ndarray:
    value = value.detach().cpu()
    if dtype == onnx.TensorProto.BFLOAT16:
        return value.view(torch.int16).numpy().view(np.uint16)
    return value.numpy()


# ---------------------------------------------------------------------- write-back
def write_back(view: TorchView, model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` (the graph the view was built from) holding the view's current values.
    Only tensors whose values changed are rewritten, in their original encoding, so an untrained
    view gives back a byte-identical model."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    slots: dict[str, onnx.TensorProto | onnx.AttributeProto] = {t.name: t for t in out.graph.initializer}
    for node in out.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1:
            a = node.attribute[0]
            slots[node.output[0]] = a.t if a.name == "value" else a
    for name, param in view.onnx_parameters():
        if name not in slots:
            raise OnnxfuseError(f"write-back: the model has no tensor {name!r}; "
                                "is it the graph the view was built from?")
        _store(slots[name], param, name)
    return out


def _store(slot, param: torch.Tensor, name: str) -> None:
    if isinstance(slot, onnx.AttributeProto):
        old, dtype = np.array(onnx.helper.get_attribute_value(slot), np.float32), onnx.TensorProto.FLOAT
    else:
        old, dtype = _tensor_array(slot), slot.data_type
    new = _to_numpy(param, dtype)
    if new.shape != old.shape or new.dtype.itemsize != old.dtype.itemsize:
        raise OnnxfuseError(f"write-back: {name!r} is {tuple(new.shape)} {new.dtype} in the view but "
                            f"{tuple(old.shape)} {old.dtype} in the model")
    if np.ascontiguousarray(new).tobytes() == np.ascontiguousarray(old).tobytes():
        return
    if isinstance(slot, onnx.AttributeProto):
        if slot.type == onnx.AttributeProto.FLOAT:
            slot.f = float(new)
        else:
            slot.floats[:] = new.ravel().tolist()
    elif slot.HasField("raw_data"):
        slot.raw_data = np.ascontiguousarray(new).astype(new.dtype.newbyteorder("<")).tobytes()
    elif dtype == onnx.TensorProto.FLOAT:
        slot.float_data[:] = new.ravel().tolist()
    elif dtype == onnx.TensorProto.DOUBLE:
        slot.double_data[:] = new.ravel().tolist()
    else:  # float16 and bfloat16 keep their bits in int32_data
        slot.int32_data[:] = new.view(np.uint16).ravel().tolist()
