"""A compact three-head CNN for 1-channel letterboxed radiographs (trained from scratch).

ResNet-style basic blocks with BatchNorm, aggressive early down-sampling (the stem brings the
input to 1/4 resolution), global average pooling and three linear heads. The exported ONNX
graph ends in a softmax per head, so the audit reads probabilities directly.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

N_BODY_PART = 9
N_PROJECTION = 3
N_ORIENTATION = 4


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        s = x if self.short is None else self.short(x)
        return F.relu(y + s, inplace=True)


class MultiHeadNet(nn.Module):
    """Input [N,1,S,S] -> logits (body_part [N,9], projection [N,3], orientation [N,4])."""

    def __init__(self, widths=(24, 48, 96, 160), blocks=(1, 2, 2, 2), stem=16, dropout=0.2):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, stem, 3, 2, 1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem, widths[0], 3, 2, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        layers = []
        cin = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                stride = 2 if (j == 0 and i > 0) else 1
                layers.append(BasicBlock(cin, w, stride))
                cin = w
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.body_part = nn.Linear(cin, N_BODY_PART)
        self.projection = nn.Linear(cin, N_PROJECTION)
        self.orientation = nn.Linear(cin, N_ORIENTATION)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # zero-init the last BN of each residual branch: blocks start as identity
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def embed(self, x):
        x = self.features(self.stem(x))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x):
        h = self.dropout(self.embed(x))
        return self.body_part(h), self.projection(h), self.orientation(h)


class SoftmaxExport(nn.Module):
    """Wraps the net for ONNX export: three softmaxed outputs."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image):
        b, p, o = self.net(image)
        return b.softmax(dim=1), p.softmax(dim=1), o.softmax(dim=1)


class SoftmaxEmbedExport(nn.Module):
    """For ONNX export: the three softmaxed heads and ``embedding``, the pooled feature vector
    [N, D] that the heads read (``net.embed``; dropout is off in eval mode)."""

    OUTPUTS = ("body_part", "projection", "orientation", "embedding")

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image):
        h = self.net.embed(image)
        return (self.net.body_part(h).softmax(dim=1), self.net.projection(h).softmax(dim=1),
                self.net.orientation(h).softmax(dim=1), h)


def build(arch: dict | None = None) -> nn.Module:
    """The network an ``arch`` dict describes: MultiHeadNet by default, EfficientNet-Lite for
    ``{'name': 'efficientnet_lite0' or 'efficientnet_lite1', ...}`` (models/effnet.py)."""
    arch = dict(arch or {})
    if str(arch.get("name", "")).startswith("efficientnet_lite"):
        from radlint.models.effnet import build as build_effnet

        return build_effnet(arch)
    if "widths" in arch:
        arch["widths"] = tuple(arch["widths"])
    if "blocks" in arch:
        arch["blocks"] = tuple(arch["blocks"])
    return MultiHeadNet(**arch)


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
