"""Torch model definitions adapted to 28x28 single-channel Fashion-MNIST.

Every model takes raw pixel values as float32 in [0, 255] with shape
(N, 1, 28, 28) and normalises internally as its first op:
``x / 255`` then ``(x - MEAN) / STD`` (scalar constants).  Output: logits (N, 10).

Architectures (all with a width multiplier ``width``):
  tinyres      tiny demo CNN, 2 residual Adds, flatten head over 32x7x7 (no GAP)
  resnet18     CIFAR-style ResNet-18 (3x3 stem, no maxpool), BasicBlocks [2,2,2,2]
  vgg11bn      VGG11 with BatchNorm, GAP head
  mobilenetv2  MobileNetV2 (inverted residuals, depthwise convs), CIFAR-style strides
  resnet50s    ResNet-50-style bottleneck network [3,4,6,3], CIFAR-style stem
  vit          Vision Transformer: 4x4 patches (49 tokens + cls), 6 pre-norm blocks of width 128,
               4 heads, MLP 256; attention as nn.MultiheadAttention or written out (`attention=`),
               one state_dict for both
  TextEncoder  BERT-style encoder for structure tests (random weights): input_ids and attention_mask
               (N, S) with S dynamic, token + position embeddings, post-norm blocks with the mask
               added to the scores, a pooled first token and a classifier
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

MEAN = 0.2860
STD = 0.3530
NUM_CLASSES = 10


def _c(ch: float, width: float, divisor: int = 8, min_ch: int = 8) -> int:
    """Scale a channel count by ``width`` and round to a multiple of ``divisor``."""
    v = ch * width
    new = max(min_ch, int(v + divisor / 2) // divisor * divisor)
    if new < 0.9 * v:
        new += divisor
    return new


class Normalize(nn.Module):
    def forward(self, x):
        x = x / 255.0
        return (x - MEAN) / STD


def conv_bn(cin, cout, k=3, stride=1, groups=1, relu=True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- tinyres
class TinyRes(nn.Module):
    """conv-BN stem, two residual blocks (Add), strided convs to 32x7x7, flatten -> Linear."""

    def __init__(self, width: float = 1.0, num_classes: int = NUM_CLASSES):
        super().__init__()
        c1, c2 = _c(16, width), _c(32, width)
        self.norm = Normalize()
        self.stem = conv_bn(1, c1)                       # 28x28
        self.b1 = nn.Sequential(conv_bn(c1, c1), conv_bn(c1, c1, relu=False))
        self.down1 = conv_bn(c1, c2, stride=2)          # 14x14
        self.b2 = nn.Sequential(conv_bn(c2, c2), conv_bn(c2, c2, relu=False))
        self.down2 = conv_bn(c2, c2, stride=2)          # 7x7
        self.fc = nn.Linear(c2 * 7 * 7, num_classes)

    def forward(self, x):
        x = self.norm(x)
        x = self.stem(x)
        x = F.relu(x + self.b1(x))
        x = self.down1(x)
        x = F.relu(x + self.b2(x))
        x = self.down2(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


# --------------------------------------------------------------------------- resnet
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride=1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride=1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem conv, no maxpool; stages at 28,14,7,4 px; GAP head."""

    def __init__(self, block, num_blocks, width=1.0, num_classes=NUM_CLASSES):
        super().__init__()
        planes = [_c(p, width) for p in (64, 128, 256, 512)]
        self.norm = Normalize()
        self.conv1 = nn.Conv2d(1, planes[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        cin = planes[0]
        stages = []
        for i, (p, n) in enumerate(zip(planes, num_blocks)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(cin, p, stride))
                cin = p * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.norm(x)
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.pool(x), 1)
        return self.fc(x)


def resnet18(width=1.0, num_classes=NUM_CLASSES):
    return ResNet(BasicBlock, [2, 2, 2, 2], width, num_classes)


def resnet50s(width=1.0, num_classes=NUM_CLASSES):
    return ResNet(Bottleneck, [3, 4, 6, 3], width, num_classes)


# --------------------------------------------------------------------------- vgg
VGG11_CFG = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512]


class VGG(nn.Module):
    """VGG11-BN for 28x28: four max-pools, 28->14->7->3->1 px (the last two 3x3
    convs see a 1x1 map, like the 2x2 last stage of CIFAR VGG), then GAP ->
    small classifier (Linear-ReLU-Dropout-Linear)."""

    def __init__(self, cfg=VGG11_CFG, width=1.0, num_classes=NUM_CLASSES):
        super().__init__()
        self.norm = Normalize()
        layers, cin = [], 1
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                cout = _c(v, width)
                layers += [nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
                           nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        hidden = cin
        self.classifier = nn.Sequential(nn.Linear(cin, hidden), nn.ReLU(inplace=True),
                                        nn.Dropout(0.2), nn.Linear(hidden, num_classes))

    def forward(self, x):
        x = self.norm(x)
        x = self.features(x)
        x = torch.flatten(self.pool(x), 1)
        return self.classifier(x)


def vgg11bn(width=1.0, num_classes=NUM_CLASSES):
    return VGG(VGG11_CFG, width, num_classes)


# --------------------------------------------------------------------------- mobilenetv2
class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = int(round(cin * expand))
        self.use_res = stride == 1 and cin == cout
        layers = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden),
                       nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                   nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        out = self.conv(x)
        return x + out if self.use_res else out


class MobileNetV2(nn.Module):
    """MobileNetV2 with CIFAR-style strides for 28x28 input (stem stride 1;
    resolutions 28 -> 14 -> 7 -> 4), GAP -> Linear head."""

    # t (expansion), c (channels), n (repeats), s (stride of first)
    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, width=1.0, num_classes=NUM_CLASSES, last_channels=1280):
        super().__init__()
        self.norm = Normalize()
        cin = _c(32, width)
        layers = [nn.Conv2d(1, cin, 3, 1, 1, bias=False), nn.BatchNorm2d(cin),
                  nn.ReLU6(inplace=True)]
        for t, c, n, s in self.SETTINGS:
            cout = _c(c, width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        last = _c(last_channels, width) if width > 1.0 else _c(last_channels, max(width, 0.25))
        layers += [nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last),
                   nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.1)
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x):
        x = self.norm(x)
        x = self.features(x)
        x = torch.flatten(self.pool(x), 1)
        return self.fc(self.dropout(x))


def mobilenetv2(width=1.0, num_classes=NUM_CLASSES):
    return MobileNetV2(width, num_classes)


def tinyres(width=1.0, num_classes=NUM_CLASSES):
    return TinyRes(width, num_classes)


class Attention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameters (packed in_proj, out_proj).
    form "mha": nn.MultiheadAttention itself; "manual": the same computation written out, the head
    split as view(B, S, heads, head_dim) ("manual") or view(B, S, -1, head_dim) ("manual-1");
    "sdpa": split as "manual", then F.scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int, form: str = "mha"):
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.heads, self.form = heads, form

    def forward(self, x, bias=None):
        """`bias`: added to the attention scores (a mask, (N, 1, 1, S)); written-out forms only."""
        if self.form == "mha":
            return self.mha(x, x, x, need_weights=False)[0]
        b, s, d = x.shape
        h = -1 if self.form == "manual-1" else self.heads
        q, k, v = F.linear(x, self.mha.in_proj_weight, self.mha.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, s, h, d // self.heads).transpose(1, 2) for t in (q, k, v))
        if self.form == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
            return self.mha.out_proj(out.transpose(1, 2).reshape(b, s, d))
        scores = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        if bias is not None:
            scores = scores + bias
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, d)
        return self.mha.out_proj(out)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int, form: str):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(dim), Attention(dim, heads, form)
        self.ln2, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, mlp), nn.Linear(mlp, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class ViT(nn.Module):
    def __init__(self, width=1.0, num_classes=NUM_CLASSES, patch=4, depth=6, heads=4, attention="mha"):
        super().__init__()
        dim = _c(128, width, divisor=heads * 8)
        self.norm = Normalize()
        self.patch = nn.Conv2d(1, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (28 // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, 2 * dim, attention) for _ in range(depth)])
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch(self.norm(x)).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.head(self.ln(self.blocks(x)[:, 0]))


def vit(width=1.0, num_classes=NUM_CLASSES, attention="mha"):
    return ViT(width, num_classes, attention=attention)


class TextEncoder(nn.Module):
    def __init__(self, vocab=1000, dim=64, depth=2, heads=4, max_len=64, classes=2, form="manual"):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, dim), nn.Embedding(max_len, dim)
        self.ln = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(Block(dim, heads, 4 * dim, form) for _ in range(depth))
        self.pool, self.head = nn.Linear(dim, dim), nn.Linear(dim, classes)
        self.heads = heads

    def forward(self, input_ids, attention_mask):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.ln(self.tokens(input_ids) + self.positions(positions))
        bias = (1.0 - attention_mask[:, None, None, :].float()) * -1e4
        for block in self.blocks:
            x = block.ln1(x + block.attn(x, bias))
            x = block.ln2(x + block.fc2(F.gelu(block.fc1(x))))
        return self.head(torch.tanh(self.pool(x[:, 0])))


ARCHS = {
    "tinyres": tinyres,
    "resnet18": resnet18,
    "vgg11bn": vgg11bn,
    "mobilenetv2": mobilenetv2,
    "resnet50s": resnet50s,
    "vit": vit,
}


def build(arch: str, width: float = 1.0, num_classes: int = NUM_CLASSES) -> nn.Module:
    if arch not in ARCHS:
        raise KeyError(f"unknown arch {arch!r}; choose from {sorted(ARCHS)}")
    return ARCHS[arch](width=width, num_classes=num_classes)
