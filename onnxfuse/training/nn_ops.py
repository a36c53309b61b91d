"""The torch view's layer ops: convolutions, pooling, normalisation, Gemm, softmax, dropout, resize.

Attributes and defaults follow the ONNX operator spec (pads as all begins then all ends, auto_pad,
strides, dilations, group, opset differences); asymmetric pads become an explicit F.pad.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .ops import NodeInfo, opt, register_torch_op, torch_pads

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _window(attrs: dict, kernel: list[int], x: torch.Tensor) -> tuple[list[int], list[int], list[int]]:
    """strides, dilations and ONNX pads (begins then ends) of a sliding-window node on input x."""
    n = len(kernel)
    strides, dilations = list(attrs.get("strides", [1] * n)), list(attrs.get("dilations", [1] * n))
    auto = attrs.get("auto_pad", "NOTSET")
    if auto == "VALID":
        return strides, dilations, [0] * (2 * n)
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        return strides, dilations, list(attrs.get("pads", [0] * (2 * n)))
    begins, ends = [], []
    for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations):
        total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
        begin = total // 2 if auto == "SAME_UPPER" else total - total // 2
        begins.append(begin)
        ends.append(total - begin)
    return strides, dilations, begins + ends


def _padded(x: torch.Tensor, pads: list[int], kernel: list[int], value: float) -> tuple[torch.Tensor, list[int]]:
    """x and the symmetric padding torch takes: pads torch cannot express are applied with F.pad."""
    n = len(kernel)
    if pads[:n] == pads[n:] and all(p <= k // 2 for p, k in zip(pads[:n], kernel)):
        return x, pads[:n]
    return F.pad(x, torch_pads(pads), value=value), [0] * n


@register_torch_op("Conv")
def conv(node, inputs, attrs):
    x, w, b = inputs[0], inputs[1], opt(inputs, 2)
    kernel = list(w.shape[2:])
    strides, dilations, pads = _window(attrs, kernel, x)
    if pads[:len(kernel)] != pads[len(kernel):]:
        x, pads = F.pad(x, torch_pads(pads)), [0] * (2 * len(kernel))
    return _CONV[len(kernel)](x, w, b, strides, pads[:len(kernel)], dilations, attrs.get("group", 1))


def _check_conv_transpose(node: NodeInfo, attrs: dict) -> str | None:
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return f"auto_pad={attrs['auto_pad']}"
    return "output_shape is not supported" if "output_shape" in attrs else None


@register_torch_op("ConvTranspose", check=_check_conv_transpose)
def conv_transpose(node, inputs, attrs):
    x, w, b = inputs[0], inputs[1], opt(inputs, 2)
    n = w.dim() - 2
    strides, dilations = attrs.get("strides", [1] * n), attrs.get("dilations", [1] * n)
    pads = [0] * (2 * n) if attrs.get("auto_pad") == "VALID" else list(attrs.get("pads", [0] * (2 * n)))
    y = _CONV_T[n](x, w, b, strides, 0, attrs.get("output_padding", [0] * n), attrs.get("group", 1), dilations)
    for axis in range(n):  # ONNX pads crop the full output, possibly asymmetrically
        y = y.narrow(2 + axis, pads[axis], y.shape[2 + axis] - pads[axis] - pads[n + axis])
    return y


def _check_pool(node: NodeInfo, attrs: dict) -> str | None:
    if node.n_outputs > 1:
        return "the Indices output is not supported"
    if node.op_type == "AveragePool" and any(d != 1 for d in attrs.get("dilations", [])):
        return "dilations are not supported"
    return None


@register_torch_op("MaxPool", check=_check_pool)
def max_pool(node, inputs, attrs):
    x, kernel = inputs[0], list(attrs["kernel_shape"])
    strides, dilations, pads = _window(attrs, kernel, x)
    x, padding = _padded(x, pads, kernel, -math.inf)
    return _MAX_POOL[len(kernel)](x, kernel, strides, padding, dilations, bool(attrs.get("ceil_mode", 0)))


@register_torch_op("AveragePool", check=_check_pool)
def average_pool(node, inputs, attrs):
    x, kernel = inputs[0], list(attrs["kernel_shape"])
    strides, _, pads = _window(attrs, kernel, x)
    ceil, include = bool(attrs.get("ceil_mode", 0)), bool(attrs.get("count_include_pad", 0))
    pool = _AVG_POOL[len(kernel)]
    xp, padding = _padded(x, pads, kernel, 0.0)
    if xp is x or include:
        return pool(xp, kernel, strides, padding, ceil, include)
    # pads torch cannot take, not counted: divide by the pooled mask of real elements
    ones = F.pad(torch.ones_like(x[:1, :1]), torch_pads(pads))
    return pool(xp, kernel, strides, 0, ceil, True) / pool(ones, kernel, strides, 0, ceil, True)


@register_torch_op("GlobalAveragePool")
def global_average_pool(node, inputs, attrs):
    x = inputs[0]
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@register_torch_op("GlobalMaxPool")
def global_max_pool(node, inputs, attrs):
    x = inputs[0]
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


def _check_bn(node: NodeInfo, attrs: dict) -> str | None:
    if node.n_outputs > 1 or attrs.get("training_mode", 0):
        return "training-mode outputs (training_mode=1) are not supported"
    return "spatial=0 is not supported" if attrs.get("spatial", 1) == 0 else None


@register_torch_op("BatchNormalization", check=_check_bn)
def batch_norm(node, inputs, attrs):
    """Running statistics unless the view trains with bn="train": then batch statistics, and the
    running ones updated as the ONNX spec says (momentum weighs the old value, population variance)."""
    x, scale, bias, mean, var = inputs
    eps, momentum = attrs.get("epsilon", 1e-5), attrs.get("momentum", 0.9)
    if not (node.mode.training and node.mode.bn == "train"):
        return F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)
    with torch.no_grad():
        batch_var, batch_mean = torch.var_mean(x, dim=[0, *range(2, x.dim())], unbiased=False)
        mean.mul_(momentum).add_(batch_mean.to(mean.dtype), alpha=1 - momentum)
        var.mul_(momentum).add_(batch_var.to(var.dtype), alpha=1 - momentum)
    return F.batch_norm(x, None, None, scale, bias, True, 0.0, eps)


@register_torch_op("InstanceNormalization")
def instance_norm(node, inputs, attrs):
    x, scale, bias = inputs
    return F.instance_norm(x, weight=scale, bias=bias, eps=attrs.get("epsilon", 1e-5))


@register_torch_op("com.microsoft.SkipLayerNormalization", "com.microsoft.SkipSimplifiedLayerNormalization")
def skip_layer_norm(node, inputs, attrs):
    """ONNX Runtime's LayerNormalization (or RMS norm, simplified) of input + skip (+ bias) over the
    last axis; outputs: the normalised tensor, the mean, the inverse deviation, the sum."""
    simplified = node.op_type == "SkipSimplifiedLayerNormalization"
    x, skip, gamma = inputs[0], inputs[1], inputs[2]
    beta, bias = (None, opt(inputs, 3)) if simplified else (opt(inputs, 3), opt(inputs, 4))
    total = x + skip if bias is None else x + skip + bias
    eps = attrs.get("epsilon", 1e-12)
    mean = torch.zeros_like(total[..., :1]) if simplified else total.mean(-1, keepdim=True)
    centred = total - mean
    inverse = torch.rsqrt((centred * centred).mean(-1, keepdim=True) + eps)
    y = centred * inverse * gamma
    outputs = (y if beta is None else y + beta, mean, inverse, total)
    return outputs[0] if node.n_outputs == 1 else outputs[:node.n_outputs]


@register_torch_op("com.microsoft.BiasGelu")
def bias_gelu(node, inputs, attrs):
    return F.gelu(inputs[0] + inputs[1])


@register_torch_op("com.microsoft.FastGelu")
def fast_gelu(node, inputs, attrs):
    x = inputs[0] if opt(inputs, 1) is None else inputs[0] + inputs[1]
    return F.gelu(x, approximate="tanh")


@register_torch_op("com.microsoft.BiasAdd")
def bias_add(node, inputs, attrs):
    return inputs[0] + inputs[1] + inputs[2]


@register_torch_op("LayerNormalization", check=lambda node, attrs: "only the first output is supported"
                   if node.n_outputs > 1 else None)
def layer_norm(node, inputs, attrs):
    x, scale, bias = inputs[0], inputs[1], opt(inputs, 2)
    axis = attrs.get("axis", -1)
    shape = x.shape[axis % x.dim():]
    eps = attrs.get("epsilon", 1e-5)
    if scale.shape == shape and (bias is None or bias.shape == shape):
        return F.layer_norm(x, shape, scale, bias, eps)
    y = F.layer_norm(x, shape, None, None, eps) * scale
    return y if bias is None else y + bias


@register_torch_op("Gemm")
def gemm(node, inputs, attrs):
    a, b, c = inputs[0], inputs[1], opt(inputs, 2)
    a = a.t() if attrs.get("transA", 0) else a
    b = b.t() if attrs.get("transB", 0) else b
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    if c is None:
        return a @ b if alpha == 1 else alpha * (a @ b)
    return torch.addmm(c, a, b, beta=beta, alpha=alpha)


@register_torch_op("Softmax", "LogSoftmax")
def softmax(node, inputs, attrs):
    x = inputs[0]
    fn = F.softmax if node.op_type == "Softmax" else F.log_softmax
    if node.opset >= 13:
        return fn(x, dim=attrs.get("axis", -1))
    axis = attrs.get("axis", 1) % x.dim()  # before 13: the input is coerced to 2-D at `axis`
    flat = x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))
    return fn(flat, dim=1).reshape(x.shape)


@register_torch_op("Dropout")
def dropout(node, inputs, attrs):
    """Follows the view's train/eval mode (the graph's training_mode input is ignored)."""
    x = inputs[0]
    ratio = attrs.get("ratio", 0.5) if node.opset < 12 else (
        float(inputs[1].item()) if opt(inputs, 1) is not None else 0.5)
    if node.n_outputs == 1:
        return F.dropout(x, ratio, node.mode.training)
    if not node.mode.training or ratio == 0:
        return x, torch.ones_like(x, dtype=torch.bool)
    mask = torch.rand_like(x) >= ratio
    return x * mask / (1 - ratio), mask


# --------------------------------------------------------------------------- resize
_TRANSFORMS = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn",
               "half_pixel_symmetric")
_LINEAR_TRANSFORMS = {"half_pixel": False, "pytorch_half_pixel": False, "align_corners": True}


def _check_resize(node: NodeInfo, attrs: dict) -> str | None:
    if attrs.get("antialias", 0) or attrs.get("axes") or attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        return "antialias, axes and keep_aspect_ratio_policy are not supported"
    mode = attrs.get("mode", "nearest")
    transform = attrs.get("coordinate_transformation_mode", "asymmetric" if node.op_type == "Upsample"
                          else "half_pixel")
    if mode == "nearest":
        return None if transform in _TRANSFORMS else f"coordinate_transformation_mode={transform}"
    if mode == "linear" and transform in _LINEAR_TRANSFORMS:
        return None
    return f"mode={mode} with coordinate_transformation_mode={transform} is not supported"


@register_torch_op("Resize", "Upsample", check=_check_resize)
def resize(node, inputs, attrs):
    x = inputs[0]
    scales, sizes, given = _resize_targets(node, inputs, attrs, x)
    if attrs.get("mode", "nearest") == "linear":
        return _linear(node, x, scales if given else None, sizes, attrs)
    transform = attrs.get("coordinate_transformation_mode", "asymmetric" if node.op_type == "Upsample"
                          else "half_pixel")
    nearest = attrs.get("nearest_mode", "floor" if node.op_type == "Upsample" else "round_prefer_floor")
    for axis, (size, scale) in enumerate(zip(sizes, scales)):
        if size != x.shape[axis] or scale != 1:
            idx = _nearest_index(size, x.shape[axis], scale, transform, nearest)
            x = x.index_select(axis, torch.from_numpy(idx).to(x.device))
    return x


def _resize_targets(node, inputs, attrs, x) -> tuple[list[float], list[int], bool]:
    """Per-axis scales (as float32, like ONNX Runtime), output sizes, whether the scales were given."""
    if node.op_type == "Upsample" or node.opset < 11:
        given = attrs.get("scales") if "scales" in attrs else inputs[1]
        sizes_in = None
    else:
        given, sizes_in = opt(inputs, 2), opt(inputs, 3)
        given = given if given is not None and given.numel() else None
    if given is not None:
        scales = [float(np.float32(s)) for s in (given.tolist() if isinstance(given, torch.Tensor) else given)]
        return scales, [int(math.floor(n * s)) for n, s in zip(x.shape, scales)], True
    sizes = [int(s) for s in sizes_in.tolist()]
    return [float(np.float32(o) / np.float32(n)) for o, n in zip(sizes, x.shape)], sizes, False


def _nearest_index(out_len: int, in_len: int, scale: float, transform: str, nearest: str) -> np.ndarray:
    """The input index each output position reads, computed in float32 as ONNX Runtime does."""
    x, s = np.arange(out_len, dtype=np.float32), np.float32(scale)
    half = np.float32(0.5)
    if transform == "asymmetric":
        src = x / s
    elif transform == "align_corners":
        src = x * np.float32(in_len - 1) / np.float32(out_len - 1) if out_len > 1 else np.zeros_like(x)
    elif transform == "tf_half_pixel_for_nn":
        src = (x + half) / s
    elif transform == "pytorch_half_pixel" and out_len <= 1:
        src = np.zeros_like(x)
    elif transform == "half_pixel_symmetric":
        adjust = np.float32(out_len) / (s * np.float32(in_len))
        src = np.float32(in_len) / 2 * (1 - adjust) + (x + half) / s - half
    else:
        src = (x + half) / s - half
    tie = src - np.floor(src) == half
    idx = {"floor": np.floor(src), "ceil": np.ceil(src),
           "round_prefer_floor": np.where(tie, np.floor(src), np.floor(src + half)),
           "round_prefer_ceil": np.where(tie, np.ceil(src), np.floor(src + half))}[nearest]
    return np.clip(idx, 0, in_len - 1).astype(np.int64)


def _linear(node, x, scales, sizes, attrs):
    if sizes[:2] != list(x.shape[:2]):
        raise node.error("linear resize of the batch or channel axis is not supported")
    transform = attrs.get("coordinate_transformation_mode", "half_pixel")
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[x.dim() - 2]
    if transform == "pytorch_half_pixel" and min(sizes[2:]) <= 1:
        raise node.error("pytorch_half_pixel to a size of 1 is not supported")
    corners = _LINEAR_TRANSFORMS[transform]
    if scales is None or corners:
        return F.interpolate(x, size=sizes[2:], mode=mode, align_corners=corners)
    # given scales, not out/in, place the samples (they differ when in * scale is not whole)
    return F.interpolate(x, scale_factor=scales[2:], mode=mode, align_corners=False, recompute_scale_factor=False)
