"""THE weight-layout table: for each weighted op, where its channels sit.

For every op whose constant weight (input 1) writes output channels and reads input channels:
which weight axis runs over the output channels and which over the input channels, which input is
the bias, the attributes that scale them (Gemm's alpha on the weight, beta on the bias), and which
axis of the data input and of the output carries the channels. Normalize (BN folding), the op
rules, both repairs and the metrics ask this table; nothing else spells these layouts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm"})  # op types
ORT_FUSED = {"FusedConv": "Conv", "FusedGemm": "Gemm"}  # com.microsoft ops: the op, then an activation


@dataclass(frozen=True)
class WeightLayout:
    op: str  # Conv | ConvTranspose | Gemm | MatMul
    out_axis: int  # weight axis over output channels (per group for ConvTranspose)
    in_axis: int  # weight axis over input channels (per group for grouped Conv)
    bias: int | None  # input index of the bias; None: the op has none
    data_axis: int  # channel axis of the data input (-1: the last)
    weight_scale: str | None = None  # attribute that multiplies the weight (Gemm alpha)
    bias_scale: str | None = None  # attribute that multiplies the bias (Gemm beta)

    def output_axis(self, rank: int | None) -> int | None:
        """Channel axis of the output: 1, or the last for MatMul."""
        if self.op != "MatMul":
            return 1
        return None if rank is None else rank - 1

    def input_axis(self, rank: int | None) -> int | None:
        if self.data_axis >= 0:
            return self.data_axis
        return None if rank is None else rank + self.data_axis


def base_op(node: gs.Node) -> str | None:
    """The standard op a weighted node computes (FusedConv → Conv), None for other nodes."""
    if node.domain == "com.microsoft":
        return ORT_FUSED.get(node.op)
    if node.domain in (None, "", "ai.onnx") and node.op in WEIGHTED_OPS:
        return node.op
    return None


def layout_of(node: gs.Node) -> WeightLayout | None:
    op = base_op(node)
    if op in ("Conv", "ConvTranspose"):
        return WeightLayout(op, *((1, 0) if op == "ConvTranspose" else (0, 1)), bias=2, data_axis=1)
    if op == "Gemm":
        trans_b = bool(node.attrs.get("transB", 0))
        return WeightLayout(op, out_axis=0 if trans_b else 1, in_axis=1 if trans_b else 0, bias=2,
                            data_axis=0 if node.attrs.get("transA", 0) else 1,
                            weight_scale="alpha", bias_scale="beta")
    if op == "MatMul":
        return WeightLayout(op, out_axis=1, in_axis=0, bias=None, data_axis=-1)
    return None


PACKED_PROJECTION = WeightLayout("MatMul", out_axis=1, in_axis=0, bias=2, data_axis=-1)


def is_packed_attention(node: gs.Node) -> bool:
    """ONNX Runtime's com.microsoft Attention: x · W + bias (Q, K and V packed) inside the op."""
    return node.domain == "com.microsoft" and node.op == "Attention"


def projection_layout(node: gs.Node) -> WeightLayout | None:
    """The layout of what a node computes from its data input and constant weight before anything
    else: layout_of, or a packed attention's QKV projection (its output stays inside the op)."""
    return PACKED_PROJECTION if is_packed_attention(node) else layout_of(node)


def output_channels(node: gs.Node, layout: WeightLayout) -> int:
    """Channels the node writes (a ConvTranspose weight holds out/groups per group)."""
    width = np.asarray(node.inputs[1].values).shape[layout.out_axis]
    return width * int(node.attrs.get("group", 1)) if layout.op == "ConvTranspose" else width


def has_bias(node: gs.Node, layout: WeightLayout) -> bool:
    return layout.bias is not None and len(node.inputs) > layout.bias and not node.inputs[layout.bias].is_empty()


def bias_values(node: gs.Node, layout: WeightLayout, width: int) -> np.ndarray | None:
    """The bias as a float64 (width,) vector with its scale (beta) applied, zeros without one;
    None when the bias is computed at run time."""
    if not has_bias(node, layout):
        return np.zeros(width)
    bias = node.inputs[layout.bias]
    if not isinstance(bias, gs.Constant):
        return None
    old = np.asarray(bias.values, dtype=np.float64)
    values = np.broadcast_to(old.reshape(-1) if old.size == width else old, (width,)).copy()
    if layout.bias_scale:
        values *= float(node.attrs.get(layout.bias_scale, 1.0))
    return values


def write_bias(node: gs.Node, layout: WeightLayout, values: np.ndarray, dtype) -> gs.Constant:
    """Set the node's bias to `values` (unscaled: beta becomes 1), adding the input if it had none."""
    bias = gs.Constant(f"{node.name}_bias", np.asarray(values).astype(dtype))
    if layout.bias_scale:
        node.attrs[layout.bias_scale] = 1.0
    if len(node.inputs) > layout.bias:
        node.inputs[layout.bias] = bias
    else:
        node.inputs.append(bias)
    return bias


def weight_rows(node: gs.Node, layout: WeightLayout) -> np.ndarray:
    """(output channels, everything else) float64 weight matrix with its scale (alpha) applied."""
    old = np.asarray(node.inputs[1].values, dtype=np.float64)
    if layout.weight_scale:
        old = old * float(node.attrs.get(layout.weight_scale, 1.0))
    return np.ascontiguousarray(np.moveaxis(old, layout.out_axis, 0).reshape(old.shape[layout.out_axis], -1))


def set_weight_rows(node: gs.Node, layout: WeightLayout, rows: np.ndarray) -> np.ndarray:
    """Store a `weight_rows`-shaped matrix back in the node's layout (alpha divided out); returns it."""
    weight = node.inputs[1]
    old = np.asarray(weight.values)
    moved = list(np.moveaxis(old, layout.out_axis, 0).shape)
    new = np.moveaxis(rows.reshape(moved), 0, layout.out_axis)
    if layout.weight_scale:
        new = new / float(node.attrs.get(layout.weight_scale, 1.0))
    weight.values = new.astype(old.dtype)
    return new


def scale_output_rows(node: gs.Node, layout: WeightLayout, scale: np.ndarray) -> None:
    """Multiply every output channel's weights by its factor (float64, cast back)."""
    weight = node.inputs[1]
    values = np.asarray(weight.values)
    shape = [1] * values.ndim
    shape[layout.out_axis] = -1
    weight.values = (values.astype(np.float64) * scale.reshape(shape)).astype(values.dtype)
