"""Path-Restore (Yu et al., TPAMI 2021): a residual denoiser whose pathfinder picks,
per 63x63 tile and per block, between a bypass and one more residual block.

Exactly the official architecture: head conv 3->64; 6 dynamic blocks, each a shared
pre-activation residual block followed by path 0 (bypass) or path 1 (one more residual
block); tail ``conv(relu(f))`` 64->3 with no global skip; one pathfinder shared by all
blocks (two stride-4 5x5 convs, FC 32, an LSTM cell whose state runs across the
blocks, FC 2). Trunk 889,795 and pathfinder 29,534 parameters, as published.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import RestorationModel, StageGraph, StagePlan, TensorSpec, Tiling

TILE = 63
BYPASS, COMPLEX = 0, 1


class ResidualBlock(nn.Module):
    """Pre-activation residual block ``x + conv2(relu(conv1(relu(x))))``."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


def same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow 'SAME' padding (the extra pixel goes bottom/right), shape-static for export."""
    def amounts(size: int) -> tuple[int, int]:
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2

    # int(): pads become constants in the exported graph (tiles have a fixed size), and
    # ONNX's truncating integer division would otherwise compute them wrongly.
    top, bottom = amounts(int(x.shape[-2]))
    left, right = amounts(int(x.shape[-1]))
    return F.pad(x, (left, right, top, bottom))


class LSTMCell(nn.Module):
    """TF1 BasicLSTMCell: one kernel over [input, h], one bias, gates i, j, f, o and
    forget bias 1.0 added at run time (so checkpoints and parameter counts match TF)."""

    def __init__(self, inputs: int, units: int, forget_bias: float = 1.0):
        super().__init__()
        self.units, self.forget_bias = units, forget_bias
        self.kernel = nn.Linear(inputs + units, 4 * units)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i, j, f, o = self.kernel(torch.cat([x, h], dim=1)).chunk(4, dim=1)
        c = c * torch.sigmoid(f + self.forget_bias) + torch.sigmoid(i) * torch.tanh(j)
        return torch.tanh(c) * torch.sigmoid(o), c


class Pathfinder(nn.Module):
    """One step of the path decision: block input + LSTM state -> logits + new state."""

    def __init__(self, features: int = 64, units: int = 32, actions: int = 2):
        super().__init__()
        self.units = units
        self.conv1 = nn.Conv2d(features, 4, 5, stride=4)
        self.conv2 = nn.Conv2d(4, 24, 5, stride=4)
        self.fc = nn.Linear(24 * 4 * 4, 32)
        self.lstm = LSTMCell(32, units)
        self.logits = nn.Linear(units, actions)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        y = F.relu(self.conv1(same_pad(x, 5, 4)))
        y = F.relu(self.conv2(same_pad(y, 5, 4)))
        # NHWC flatten, as the TF original orders its 384 features
        y = F.relu(self.fc(y.permute(0, 2, 3, 1).reshape(y.shape[0], -1)))
        h, c = self.lstm(y, h, c)
        return self.logits(h), h, c


class PathRestore(RestorationModel):
    arch = "pathrestore"

    def __init__(self, channels: int = 3, features: int = 64, blocks: int = 6, units: int = 32):
        super().__init__()
        self.channels, self.features, self.blocks, self.units = channels, features, blocks, units
        self.head = nn.Conv2d(channels, features, 3, padding=1)
        self.shared = nn.ModuleList(ResidualBlock(features) for _ in range(blocks))
        self.branch = nn.ModuleList(ResidualBlock(features) for _ in range(blocks))
        self.tail = nn.Conv2d(features, channels, 3, padding=1)
        self.pathfinder = Pathfinder(features, units)

    def forward(self, x: torch.Tensor, min_confidence: float = 0.5) -> torch.Tensor:
        return self.route(x, min_confidence=min_confidence)[0]

    def route(self, x: torch.Tensor, actions: torch.Tensor | None = None, min_confidence: float = 0.5):
        """Run with given per-block ``actions`` (N, blocks), or the pathfinder's own.

        Returns the output, the actions taken (N, blocks) and the logits (N, blocks, 2;
        None when the actions were given).
        The test-time rule: bypass where P(bypass) >= min_confidence (0.5 = argmax).
        Every tile runs both options here (training needs dense tensors); the runtime
        is what skips the bypassed work.
        """
        f = self.head(x)
        h = x.new_zeros(x.shape[0], self.units)
        c = x.new_zeros(x.shape[0], self.units)
        taken, all_logits = [], []
        for i in range(self.blocks):
            if actions is None:  # given actions need no pathfinder (nor 63x63 inputs)
                logits, h, c = self.pathfinder(f, h, c)
                a = (torch.softmax(logits, 1)[:, BYPASS] < min_confidence).long()
                if min_confidence >= 1.0:
                    a = torch.ones_like(a)
                all_logits.append(logits)
            else:
                a = actions[:, i]
            f = self.shared[i](f)
            keep = a.view(-1, 1, 1, 1).to(f.dtype)
            f = f + keep * (self.branch[i](f) - f)
            taken.append(a)
        logits = torch.stack(all_logits, 1) if all_logits else None
        return self.tail(F.relu(f)), torch.stack(taken, 1), logits

    @property
    def receptive_field(self) -> int:
        return 2 * (2 + 4 * self.blocks) + 1  # head, tail and 4 convs per block on the complex path

    def default_tiling(self) -> Tiling:
        # The paper's test-time tiling: 63x63 tiles, stride 53, 5-pixel ramps.
        return Tiling(tile=TILE, overlap=10, halo=self.receptive_field // 2, ramp=5, fixed=True)

    def config(self) -> dict[str, Any]:
        return {"channels": self.channels, "features": self.features, "blocks": self.blocks, "units": self.units}

    def parameter_counts(self) -> dict[str, int]:
        pathfinder = sum(p.numel() for p in self.pathfinder.parameters())
        return {"trunk": sum(p.numel() for p in self.parameters()) - pathfinder, "pathfinder": pathfinder}

    def stage_plan(self) -> StagePlan:
        f, t, c = self.features, TILE, self.channels
        feat = TensorSpec("features", (f, t, t))
        feat_out = TensorSpec("features_out", (f, t, t))  # ONNX names must differ from the input's
        conv_macs = lambda m: m.in_channels * m.out_channels * 9 * t * t
        block_macs = lambda b: conv_macs(b.conv1) + conv_macs(b.conv2)
        stages = [StageGraph("head", self.head, [TensorSpec("image", (c, t, t), "image")], [feat],
                             macs_per_call=conv_macs(self.head)),
                  StageGraph("pathfinder", self.pathfinder,
                             [feat, TensorSpec("h", (self.units,), "state"), TensorSpec("c", (self.units,), "state")],
                             [TensorSpec("logits", (2,), "logits"), TensorSpec("h_out", (self.units,), "state"),
                              TensorSpec("c_out", (self.units,), "state")],
                             macs_per_call=_pathfinder_macs(self.pathfinder, t)),
                  StageGraph("tail", _ReluConv(self.tail), [feat], [TensorSpec("image", (c, t, t), "image")],
                             macs_per_call=conv_macs(self.tail))]
        plan: list[dict[str, Any]] = [{"op": "run", "stage": "head", "in": {"image": "image"}, "out": {"features": "x"}}]
        for i in range(self.blocks):
            stages.append(StageGraph(f"block{i}.shared", self.shared[i], [feat], [feat_out],
                                     macs_per_call=block_macs(self.shared[i])))
            stages.append(StageGraph(f"block{i}.branch", self.branch[i], [feat], [feat_out],
                                     macs_per_call=block_macs(self.branch[i])))
            plan += [
                {"op": "run", "stage": "pathfinder", "in": {"features": "x", "h": "h", "c": "c"},
                 "out": {"logits": "logits", "h_out": "h", "c_out": "c"}},
                {"op": "run", "stage": f"block{i}.shared", "in": {"features": "x"}, "out": {"features_out": "x"}},
                {"op": "switch", "name": f"block{i}", "logits": "logits", "cheap": BYPASS, "branches": [
                    {"name": "bypass", "steps": []},
                    {"name": "complex", "steps": [
                        {"op": "run", "stage": f"block{i}.branch", "in": {"features": "x"}, "out": {"features_out": "x"}}]},
                ]},
            ]
        plan.append({"op": "run", "stage": "tail", "in": {"features": "x"}, "out": {"image": "image"}})
        initial = {"h": {"shape": [self.units], "value": 0.0}, "c": {"shape": [self.units], "value": 0.0}}
        return StagePlan(stages, plan, initial)


class _ReluConv(nn.Module):
    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.relu(x))


def _pathfinder_macs(p: Pathfinder, tile: int) -> float:
    s1 = -(-tile // 4)
    s2 = -(-s1 // 4)
    return float(p.conv1.in_channels * 4 * 25 * s1 * s1 + 4 * 24 * 25 * s2 * s2
                 + p.fc.in_features * p.fc.out_features + p.lstm.kernel.in_features * p.lstm.kernel.out_features
                 + p.logits.in_features * p.logits.out_features)
