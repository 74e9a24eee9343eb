"""MobileNetV2's feature layers (Sandler et al., CVPR 2018), as DeblurGAN-v2 builds them.

Written here because torchvision is not a dependency (its wheels pull a CUDA torch). The
layer layout and module names follow DeblurGAN-v2's ``models/mobilenet_v2.py`` (itself
tonylins/pytorch-mobilenet-v2), so the official checkpoints' keys map one to one:
``features.0`` is conv3x3 stride 2 + BN + ReLU6, ``features.1..17`` the inverted residual
blocks (``.conv`` = [1x1 expand + BN + ReLU6,] 3x3 depthwise + BN + ReLU6, 1x1 project + BN;
identity skip where stride 1 and channels match). Only the layers DeblurGAN-v2's FPN reads
(``features[0:16]``) are built.

Batch norm: the official predictor runs the network in train mode, so every norm layer
normalises with the statistics of the image it sees (batch size 1); :class:`InstanceBatchNorm`
does exactly that at inference, with the layer's learned scale and shift.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# t (expansion), c (channels), n (blocks), s (stride of the first block)
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
FIRST_CHANNELS = 32
# DeblurGAN-v2's FPN taps: enc0 = features[0:2], enc1 = [2:4], enc2 = [4:7], enc3 = [7:11], enc4 = [11:16]
TAPS = ((0, 2), (2, 4), (4, 7), (7, 11), (11, 16))


class InstanceBatchNorm(nn.Module):
    """BatchNorm2d's parameters (``weight``, ``bias``) applied to per-image statistics: what
    a BatchNorm2d in train mode computes for a batch of one image, for any batch size.
    The running statistics of a checkpoint are not used (nor kept)."""

    def __init__(self, features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(features))
        self.bias = nn.Parameter(torch.zeros(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, weight=self.weight, bias=self.bias, use_input_stats=True, eps=self.eps)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = round(cin * expand)
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), InstanceBatchNorm(hidden), nn.ReLU6()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), InstanceBatchNorm(hidden),
                   nn.ReLU6(), nn.Conv2d(hidden, cout, 1, bias=False), InstanceBatchNorm(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def feature_layers(width: float = 1.0, count: int = TAPS[-1][1]) -> list[nn.Module]:
    """``features[0:count]`` of MobileNetV2 at width multiplier ``width`` (channel counts
    ``int(c * width)``, as the DeblurGAN-v2 copy computes them)."""
    channels = int(FIRST_CHANNELS * width)
    layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, channels, 3, 2, 1, bias=False), InstanceBatchNorm(channels),
                                             nn.ReLU6())]
    for t, c, n, s in SETTINGS:
        out = int(c * width)
        for i in range(n):
            layers.append(InvertedResidual(channels, out, s if i == 0 else 1, t))
            channels = out
    return layers[:count]


def tap_channels(width: float = 1.0) -> list[int]:
    """Output channels of the five FPN taps (16, 24, 32, 64, 160 at width 1)."""
    out, channels = [], []
    for t, c, n, s in SETTINGS:
        channels += [int(c * width)] * n
    channels = [int(FIRST_CHANNELS * width), *channels]
    for _, end in TAPS:
        out.append(channels[end - 1])
    return out
