"""The torch view's fused transformer ops from ONNX Runtime's optimizer: com.microsoft Attention
(packed QKV weight), MultiHeadAttention and EmbedLayerNormalization, and ai.onnx Attention-23 in
its 3-D form. Masks: a key padding mask (1-D valid lengths, or 2-D 1 = keep) and, for
MultiHeadAttention and ai.onnx, an additive or boolean bias; a KV cache is refused when the view
is built (training sees whole sequences)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .ops import NodeInfo, opt, register_torch_op

MASK_FILTER = -10000.0  # ONNX Runtime's default mask_filter_value


def _one_output(node: NodeInfo, attrs: dict) -> str | None:
    return "KV-cache and score outputs are not supported" if node.n_outputs > 1 else None


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, S, H·D) → (B, H, S, D)."""
    b, s, _ = x.shape
    return x.reshape(b, s, heads, -1).transpose(1, 2)


def _merged(x: torch.Tensor) -> torch.Tensor:
    b, h, s, d = x.shape
    return x.transpose(1, 2).reshape(b, s, h * d)


def _padding_bias(mask: torch.Tensor | None, keys: int, filter_value: float) -> torch.Tensor | None:
    """(B, 1, 1, L) additive bias from a key padding mask: 1-D valid lengths (right padding) or a
    (B, L) 1 = keep mask."""
    if mask is None:
        return None
    if mask.dim() == 1:
        keep = torch.arange(keys, device=mask.device)[None, :] < mask[:, None]
    else:
        keep = mask.reshape(mask.shape[0], -1)[:, :keys] != 0
    return torch.where(keep, 0.0, filter_value)[:, None, None, :]


def _attend(q, k, v, bias, scale, causal: bool) -> torch.Tensor:
    scores = q @ k.transpose(-1, -2) * (scale if scale else q.shape[-1] ** -0.5)
    if bias is not None:
        scores = scores + bias
    if causal:
        s, length = scores.shape[-2:]
        blocked = torch.ones(s, length, dtype=torch.bool, device=q.device).triu(length - s + 1)
        scores = scores.masked_fill(blocked, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@register_torch_op("com.microsoft.Attention", check=_one_output)
def packed_attention(node, inputs, attrs):
    x, w, b, mask = inputs[0], inputs[1], opt(inputs, 2), opt(inputs, 3)
    if opt(inputs, 4) is not None or opt(inputs, 5) is not None:
        raise node.error("past state and attention bias inputs are not supported")
    heads = attrs["num_heads"]
    sizes = list(attrs.get("qkv_hidden_sizes", [w.shape[1] // 3] * 3))
    qkv = x @ w if b is None else x @ w + b
    q, k, v = (_heads(t, heads) for t in torch.split(qkv, sizes, dim=-1))
    bias = _padding_bias(mask, k.shape[2], attrs.get("mask_filter_value", MASK_FILTER))
    return _merged(_attend(q, k, v, bias, attrs.get("scale"), bool(attrs.get("unidirectional", 0))))


@register_torch_op("com.microsoft.MultiHeadAttention", check=_one_output)
def multi_head_attention(node, inputs, attrs):
    q, k, v, b = inputs[0], opt(inputs, 1), opt(inputs, 2), opt(inputs, 3)
    if k is None or v is None or q.dim() != 3 or k.dim() != 3:
        raise node.error("only separate 3-D query, key and value are supported")
    if opt(inputs, 6) is not None or opt(inputs, 7) is not None:
        raise node.error("past key/value inputs are not supported")
    if b is not None:
        bq, bk, bv = torch.split(b, [q.shape[-1], k.shape[-1], v.shape[-1]])
        q, k, v = q + bq, k + bk, v + bv
    heads = attrs["num_heads"]
    q, k, v = _heads(q, heads), _heads(k, heads), _heads(v, heads)
    bias = _padding_bias(opt(inputs, 4), k.shape[2], attrs.get("mask_filter_value", MASK_FILTER))
    extra = opt(inputs, 5)
    if extra is not None:
        bias = extra if bias is None else bias + extra
    return _merged(_attend(q, k, v, bias, attrs.get("scale"), bool(attrs.get("unidirectional", 0))))


@register_torch_op("Attention", check=_one_output)
def attention(node, inputs, attrs):
    """ai.onnx Attention-23, 3-D inputs with q_num_heads / kv_num_heads (GQA when they differ), or 4-D."""
    q, k, v, mask = inputs[0], inputs[1], inputs[2], opt(inputs, 3)
    if opt(inputs, 4) is not None:
        raise node.error("past key/value inputs are not supported")
    three_d = q.dim() == 3
    if three_d:
        q, k, v = _heads(q, attrs["q_num_heads"]), _heads(k, attrs["kv_num_heads"]), _heads(v, attrs["kv_num_heads"])
    if k.shape[1] != q.shape[1]:
        k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    bias = None if mask is None else torch.where(mask, 0.0, float("-inf")) if mask.dtype == torch.bool else mask
    y = _attend(q, k, v, bias, attrs.get("scale"), bool(attrs.get("is_causal", 0)))
    return _merged(y) if three_d else y


@register_torch_op("com.microsoft.EmbedLayerNormalization",
                   check=lambda node, attrs: "its embedding-sum output is not supported" if node.n_outputs > 2
                   else None)
def embed_layer_norm(node, inputs, attrs):
    """LayerNorm(word[ids] + position[position_ids or 0…S−1] + segment[segment_ids]); the second
    output is the mask's per-row count of ones (the 1-D mask_index Attention reads)."""
    ids, segments, words, positions, segment_table, gamma, beta = (opt(inputs, i) for i in range(7))
    mask, position_ids = opt(inputs, 7), opt(inputs, 8)
    if position_ids is None:
        position_ids = torch.arange(ids.shape[1], device=ids.device)[None, :]
    total = words[ids.long()] + positions[position_ids.long()]
    if segments is not None and segment_table is not None:
        total = total + segment_table[segments.long()]
    y = F.layer_norm(total, total.shape[-1:], gamma, beta, attrs.get("epsilon", 1e-12))
    if node.n_outputs == 1:
        return y
    if mask is None:
        count = torch.full((ids.shape[0],), ids.shape[1], dtype=torch.int32)
    else:
        count = mask.ne(0).sum(dim=1).to(torch.int32)
    return y, count
