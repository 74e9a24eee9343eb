"""DeblurGAN-v2 generator (Kupyn et al., ICCV 2019): an FPN on MobileNetV2 features.

The official ``models/fpn_mobilenet.py`` (github.com/VITA-Group/DeblurGANv2, BSD-3):
MobileNetV2 ``features[0:16]`` tapped after blocks 1, 3, 6, 10, 15 (16/24/32/64/160
channels at 1/2 .. 1/32 resolution); 1x1 laterals to 128 channels (64 for the finest);
top-down: upsample x2 (nearest) + lateral, then conv3x3 + norm + ReLU (``td1..3``); four
heads (two bias-free conv3x3 + ReLU, 128 -> 64 -> 64) upsampled to 1/4 and concatenated
(256); ``smooth`` conv3x3 -> 64 + norm + ReLU, x2 up, + the finest lateral, ``smooth2`` ->
32, x2 up, ``final`` conv3x3 -> 3; output ``clamp(tanh(final) + x, -1, 1)``. Input RGB in
[-1, 1] (the official normalisation), sizes padded with zeros to multiples of 32.

Norm layers: InstanceNorm2d(affine=False, track_running_stats=True) in the FPN, BatchNorm2d
in the backbone, and the official predictor runs all of them in train mode ("GAN inference
should be in train mode to use actual stats in norm layers"): each normalises with the
statistics of the image at hand. That is what this module computes in any mode (and what
the export keeps: ONNX InstanceNormalization, no running statistics).

``mobilenet-dsc``: the paper's lighter variant, every 3x3 convolution outside the backbone
replaced by a depthwise 3x3 + pointwise 1x1 pair (no official code or weights exist for it;
keys ``<conv>.depthwise`` / ``<conv>.pointwise``).
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgerestore.runtime.errors import EdgeRestoreError

from .base import RestorationModel, Tiling
from .mobilenetv2 import TAPS, feature_layers, tap_channels

VARIANTS = ("mobilenet", "mobilenet-dsc")


class InstanceNorm(nn.Module):
    """Per-image statistics, no affine parameters (InstanceNorm2d(affine=False) in train mode)."""

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, use_input_stats=True, eps=self.eps)


class SeparableConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, bias: bool = True):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def conv3x3(cin: int, cout: int, separable: bool, bias: bool = True) -> nn.Module:
    return SeparableConv2d(cin, cout, bias) if separable else nn.Conv2d(cin, cout, 3, padding=1, bias=bias)


def up(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="nearest")


class FPNHead(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, separable: bool):
        super().__init__()
        self.block0 = conv3x3(cin, mid, separable, bias=False)
        self.block1 = conv3x3(mid, cout, separable, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.block1(F.relu(self.block0(x))))


class FPN(nn.Module):
    def __init__(self, filters: int, width: float, separable: bool):
        super().__init__()
        layers = feature_layers(width)
        for k, (start, end) in enumerate(TAPS):
            setattr(self, f"enc{k}", nn.Sequential(*layers[start:end]))
        for k in (1, 2, 3):
            setattr(self, f"td{k}", nn.Sequential(conv3x3(filters, filters, separable), InstanceNorm(), nn.ReLU()))
        for k, channels in enumerate(tap_channels(width)):
            setattr(self, f"lateral{k}", nn.Conv2d(channels, filters // 2 if k == 0 else filters, 1, bias=False))

    def forward(self, x: torch.Tensor):
        enc0 = self.enc0(x)
        enc1 = self.enc1(enc0)
        enc2 = self.enc2(enc1)
        enc3 = self.enc3(enc2)
        enc4 = self.enc4(enc3)
        map4 = self.lateral4(enc4)
        map3 = self.td1(self.lateral3(enc3) + up(map4, 2))
        map2 = self.td2(self.lateral2(enc2) + up(map3, 2))
        map1 = self.td3(self.lateral1(enc1) + up(map2, 2))
        return self.lateral0(enc0), map1, map2, map3, map4


class DeblurGANv2(RestorationModel):
    arch = "deblurganv2"
    value_range = (-1.0, 1.0)
    size_multiple = 32
    pad_mode = "constant"

    def __init__(self, variant: str = "mobilenet", width: float = 1.0, filters: int = 64, fpn_filters: int = 128):
        super().__init__()
        if variant not in VARIANTS:
            raise EdgeRestoreError(f"deblurganv2 variant must be one of {', '.join(VARIANTS)}, got '{variant}'")
        self.channels, self.variant, self.width = 3, variant, float(width)
        self.filters, self.fpn_filters = int(filters), int(fpn_filters)
        separable = variant == "mobilenet-dsc"
        self.fpn = FPN(self.fpn_filters, self.width, separable)
        for k in (1, 2, 3, 4):
            setattr(self, f"head{k}", FPNHead(self.fpn_filters, self.filters, self.filters, separable))
        self.smooth = nn.Sequential(conv3x3(4 * self.filters, self.filters, separable), InstanceNorm(), nn.ReLU())
        self.smooth2 = nn.Sequential(conv3x3(self.filters, self.filters // 2, separable), InstanceNorm(), nn.ReLU())
        self.final = conv3x3(self.filters // 2, 3, separable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        map0, map1, map2, map3, map4 = self.fpn(x)
        maps = [up(self.head4(map4), 8), up(self.head3(map3), 4), up(self.head2(map2), 2), self.head1(map1)]
        smoothed = up(self.smooth(torch.cat(maps, 1)), 2)
        smoothed = up(self.smooth2(smoothed + map0), 2)
        return torch.clamp(torch.tanh(self.final(smoothed)) + x, -1, 1)

    # -- descriptor -------------------------------------------------------------------------
    @property
    def receptive_field(self) -> int:
        # Depthwise 3x3s at 1/2 .. 1/32 resolution (1, 2, 3, 7, 2 blocks: 4..64 px each) and
        # the heads' two 3x3s at 1/32: ~550 px. Per-image norm statistics make every output
        # depend on the whole image anyway, hence whole-image inference.
        return 3 + 4 * 1 + 8 * 2 + 16 * 3 + 32 * 7 + 64 * 2 + 128

    def default_tiling(self) -> Tiling:
        return Tiling(tile=512, overlap=128, halo=32, ramp=16, whole=True)

    def config(self) -> dict[str, Any]:
        return {"variant": self.variant, "width": self.width, "filters": self.filters, "fpn_filters": self.fpn_filters}

    def parameter_counts(self) -> dict[str, int]:
        backbone = sum(p.numel() for k in range(len(TAPS)) for p in getattr(self.fpn, f"enc{k}").parameters())
        return {"backbone": backbone, "fpn": sum(p.numel() for p in self.parameters()) - backbone}

    def macs_per_pixel(self) -> float:
        # 64: at 32 the 1/32 maps are 1x1, where per-image statistics are undefined
        return self.measured_macs_per_pixel(self, torch.zeros(1, 3, 64, 64))

    # -- checkpoints ------------------------------------------------------------------------
    @classmethod
    def config_from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
        sd = _official_to_ours(state_dict)
        try:
            first, lateral = sd["fpn.enc0.0.0.weight"], sd["fpn.lateral4.weight"]
        except KeyError:
            raise EdgeRestoreError("checkpoint does not look like DeblurGAN-v2 FPN-MobileNet: no "
                                   "'fpn.enc0.0.0.weight' / 'fpn.lateral4.weight' (nor 'fpn.features.*')") from None
        separable = "head1.block0.depthwise.weight" in sd
        head = sd["head1.block0.pointwise.weight" if separable else "head1.block0.weight"]
        return {"variant": "mobilenet-dsc" if separable else "mobilenet", "width": int(first.shape[0]) / 32,
                "filters": int(head.shape[0]), "fpn_filters": int(lateral.shape[0])}

    @classmethod
    def adapt_state_dict(cls, state_dict, meta):
        return _official_to_ours(state_dict)


def _official_to_ours(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official checkpoint (``{'model': state_dict}``, ``module.`` prefixes already
    stripped by the loader) names each backbone layer twice, ``fpn.features.N`` and its
    alias ``fpn.enc{k}.M``, and has ``features.16..18``, which the FPN never reads; it also
    keeps running statistics that per-image normalisation does not use. Keep one name per
    tensor (ours = the official ``enc`` aliases) and only what inference reads."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith((".running_mean", ".running_var")):
            continue
        m = re.fullmatch(r"fpn\.features\.(\d+)\.(.+)", key)
        if m:
            index = int(m.group(1))
            tap = next((k for k, (start, end) in enumerate(TAPS) if start <= index < end), None)
            if tap is None:  # features[16:]: unused by the FPN
                continue
            key = f"fpn.enc{tap}.{index - TAPS[tap][0]}.{m.group(2)}"
            if key in state_dict and not torch.equal(state_dict[key], value):
                raise EdgeRestoreError(f"checkpoint: 'fpn.features.{index}.{m.group(2)}' and its alias '{key}' differ")
        out[key] = value
    return out
