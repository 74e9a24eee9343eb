"""MemNet (Tai et al., ICCV 2017): a very deep persistent-memory denoiser, gray.

Every layer is pre-activation (BN, ReLU, conv, no bias). A feature extractor conv3x3 1->64;
``blocks`` memory blocks, each a recursive unit -- one residual unit
``x + conv2(relu(bn(conv1(relu(bn(x))))))`` applied ``recursions`` times with the same convs
(each recursion its own BN) -- and a gate unit, a 1x1 conv over the concatenation of the
recursions' outputs (short-term memory) and the outputs of the extractor and of all earlier
blocks (long-term memory). Multi-supervised reconstruction: every block's output goes through
one shared reconstruction conv3x3 64->1 plus the input, and the output is the sum of these
``blocks`` reconstructions weighted by learned scalars. M6R6 with 64 channels is the
published model: 80 conv layers, 676,992 conv weights (the paper's "677k").
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgerestore.runtime.errors import EdgeRestoreError

from .base import RestorationModel, Tiling


class BNReLUConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int = 3):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.relu(self.bn(x)))


class MemoryBlock(nn.Module):
    def __init__(self, features: int, recursions: int, memories: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=False)
        self.bn1 = nn.ModuleList(nn.BatchNorm2d(features) for _ in range(recursions))
        self.bn2 = nn.ModuleList(nn.BatchNorm2d(features) for _ in range(recursions))
        self.gate = BNReLUConv((recursions + memories) * features, features, 1)

    def forward(self, x: torch.Tensor, long_term: list[torch.Tensor]) -> torch.Tensor:
        short_term = []
        for bn1, bn2 in zip(self.bn1, self.bn2):
            x = x + self.conv2(F.relu(bn2(self.conv1(F.relu(bn1(x))))))
            short_term.append(x)
        return self.gate(torch.cat(short_term + long_term, 1))


class MemNet(RestorationModel):
    arch = "memnet"

    def __init__(self, channels: int = 1, features: int = 64, blocks: int = 6, recursions: int = 6):
        super().__init__()
        if blocks < 1 or recursions < 1:
            raise EdgeRestoreError(f"memnet needs >= 1 block and recursion, got {blocks} and {recursions}")
        self.channels, self.features, self.blocks, self.recursions = channels, features, blocks, recursions
        self.extractor = BNReLUConv(channels, features)
        self.memory = nn.ModuleList(MemoryBlock(features, recursions, m + 1) for m in range(blocks))
        self.reconstructor = BNReLUConv(features, channels)
        self.weights = nn.Parameter(torch.full((blocks,), 1.0 / blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reconstructions(x) @ self.weights

    def reconstructions(self, x: torch.Tensor) -> torch.Tensor:
        """The ``blocks`` intermediate predictions stacked on a last axis (N, C, H, W, blocks)."""
        f = self.extractor(x)
        long_term, outputs = [f], []
        for block in self.memory:
            f = block(f, long_term)
            long_term.append(f)
            outputs.append(x + self.reconstructor(f))
        return torch.stack(outputs, -1)

    @property
    def layers(self) -> int:
        return 2 + self.blocks * (2 * self.recursions + 1)

    @property
    def receptive_field(self) -> int:
        return 2 * (2 + 2 * self.blocks * self.recursions) + 1  # the 3x3 convs on the deepest path

    def default_tiling(self) -> Tiling:
        halo = self.receptive_field // 2
        # Its gate concatenations are wide ((R + m) x 64 channels): 256-pixel tiles keep a
        # batch of them within a few GB.
        return Tiling(tile=256, overlap=min(2 * (halo + 5), 200), halo=halo)

    def config(self) -> dict[str, Any]:
        return {"channels": self.channels, "features": self.features, "blocks": self.blocks,
                "recursions": self.recursions}

    def parameter_counts(self) -> dict[str, int]:
        convs = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Conv2d))
        return {"conv": convs, "bn+weights": sum(p.numel() for p in self.parameters()) - convs}

    def macs_per_pixel(self) -> float:
        return self.measured_macs_per_pixel(self, torch.zeros(1, self.channels, 16, 16))

    @classmethod
    def config_from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
        try:
            first = state_dict["extractor.conv.weight"]
        except KeyError:
            raise EdgeRestoreError("checkpoint does not look like MemNet: no 'extractor.conv.weight'") from None
        blocks = len({k.split(".")[1] for k in state_dict if k.startswith("memory.")})
        recursions = len({k.split(".")[3] for k in state_dict if k.startswith("memory.0.bn1.")})
        return {"channels": int(first.shape[1]), "features": int(first.shape[0]), "blocks": blocks,
                "recursions": recursions}
