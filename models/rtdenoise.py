"""rtdenoise: a light blind color denoiser for real time on a CPU (the shipped ``rtdenoise``).

Built for INT8 CPU inference, where every multiply counts and every extra memory pass
costs: pixel-unshuffle the image by ``unshuffle`` (3 channels at full resolution become
3*u*u at 1/u), run narrow 3x3 convolutions with ReLU there (no normalization, nothing an
INT8 kernel cannot fuse), pixel-shuffle the last one back to full resolution and add it to
the input. At ``unshuffle=2`` every convolution runs on a quarter of the pixels, so a
32-channel layer costs 2.3k MACs per output pixel instead of 9.2k, while its receptive
field doubles (FFDNet's trick, Zhang et al. 2018, with far fewer layers). The residual
output keeps the last layer's values small (the noise estimate), which is what an INT8
output scale wants.

``levels=1``: ``depth`` convolutions at 1/u. ``levels=2`` (a two-level U-Net): a head
convolution at 1/u, a stride-2 convolution to 1/2u with twice the channels, ``depth``
convolutions there, a 1x1 convolution and pixel-shuffle back up, added to the head's
features (ReLU), then two convolutions at 1/u: the deep layers see four times the area per
multiply, which noise at sigma 25-50 needs (a receptive field of 30-50 pixels).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgerestore.runtime.errors import EdgeRestoreError

from .base import RestorationModel, Tiling


def _conv_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.ReLU(inplace=True)]


class RTDenoise(RestorationModel):
    arch = "rtdenoise"

    def __init__(self, channels: int = 3, features: int = 24, depth: int = 3, unshuffle: int = 2, levels: int = 2):
        super().__init__()
        if depth < (2 if levels == 1 else 1) or features < 1 or unshuffle < 1 or levels not in (1, 2):
            raise EdgeRestoreError(f"rtdenoise needs depth >= 2 (>= 1 with levels 2), features >= 1, "
                                   f"unshuffle >= 1 and levels 1 or 2; got depth {depth}, features {features}, "
                                   f"unshuffle {unshuffle}, levels {levels}")
        self.channels, self.features, self.depth, self.unshuffle, self.levels = \
            channels, features, depth, unshuffle, levels
        # pixel-unshuffle needs sides divisible by u; the stride-2 level by 2u
        self.size_multiple = unshuffle * levels
        packed = channels * unshuffle * unshuffle
        if levels == 1:
            layers = _conv_relu(packed, features)
            for _ in range(depth - 2):
                layers += _conv_relu(features, features)
            layers.append(nn.Conv2d(features, packed, 3, padding=1))
            self.body = nn.Sequential(*layers)
            return
        wide = 2 * features
        self.head = nn.Sequential(*_conv_relu(packed, features))
        layers = _conv_relu(features, wide, stride=2)
        for _ in range(depth):
            layers += _conv_relu(wide, wide)
        self.down = nn.Sequential(*layers)
        self.up = nn.Conv2d(wide, 4 * features, 1)
        self.tail = nn.Sequential(*_conv_relu(features, features), nn.Conv2d(features, packed, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.unshuffle
        packed = F.pixel_unshuffle(x, u) if u > 1 else x
        if self.levels == 1:
            residual = self.body(packed)
        else:
            skip = self.head(packed)
            # ReLU after the sum: every convolution then reads a non-negative, ReLU-bounded
            # input, as INT8 activation scales want (without it the sum's signed, heavy-tailed
            # range cost 0.7 dB in INT8 on held-out crops).
            residual = self.tail(F.relu(skip + F.pixel_shuffle(self.up(self.down(skip)), 2)))
        return x + (F.pixel_shuffle(residual, u) if u > 1 else residual)

    @property
    def last_conv(self) -> nn.Conv2d:
        """The layer whose output is the correction (zero at the start of training)."""
        return (self.body if self.levels == 1 else self.tail)[-1]

    @property
    def receptive_field(self) -> int:
        if self.levels == 1:
            radius = self.depth  # at 1/u, one pixel per 3x3 layer
        else:
            # at 1/u: head 1, the stride-2 conv 1, each deep layer 2, the shuffle back up 1, tail 2
            radius = 5 + 2 * self.depth
        # plus the u x u cell a packed pixel spans
        return 2 * (radius * self.unshuffle + self.unshuffle - 1) + 1

    def macs_per_pixel(self) -> float:
        return self.measured_macs_per_pixel(self, torch.zeros(1, self.channels, 8 * self.size_multiple,
                                                              8 * self.size_multiple))

    def default_tiling(self) -> Tiling:
        halo = self.receptive_field // 2
        # Whole frames: the network is so light that tiles' overlap (recomputed at every
        # border) and per-call work cost more than the layers (1280x720 on 2 cores: whole
        # about half the latency of 512-pixel tiles). A frame beyond the memory budget falls
        # back to these tiles.
        return Tiling(tile=512, overlap=2 * (halo + 5), halo=halo, whole=True)

    def config(self) -> dict[str, Any]:
        return {"channels": self.channels, "features": self.features, "depth": self.depth,
                "unshuffle": self.unshuffle, "levels": self.levels}
