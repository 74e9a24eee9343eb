"""DnCNN (Zhang et al., TIP 2017): residual denoiser, ``output = x - net(x)``.

The parameter layout is KAIR's (``model.{0,2,..}`` convolutions, all with bias, batch
norm already folded), which is what inference needs. The original layout with
unfolded batch norm (``dncnn.N``, cszn's files) is folded on import.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from edgerestore.runtime.errors import EdgeRestoreError

from .base import RestorationModel, Tiling


class DnCNN(RestorationModel):
    arch = "dncnn"

    def __init__(self, channels: int = 1, depth: int = 17, features: int = 64):
        super().__init__()
        if depth < 2:
            raise EdgeRestoreError(f"dncnn needs depth >= 2, got {depth}")
        self.channels, self.depth, self.features = channels, depth, features
        layers: list[nn.Module] = [nn.Conv2d(channels, features, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(features, channels, 3, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.model(x)

    @property
    def receptive_field(self) -> int:
        return 2 * self.depth + 1

    def default_tiling(self) -> Tiling:
        halo = self.receptive_field // 2
        # Overlap = zero-weight margin (halo) plus a 5-pixel ramp on each side, so the
        # tiled result equals the whole-image one.
        return Tiling(tile=192, overlap=2 * (halo + 5), halo=halo)

    def config(self) -> dict[str, Any]:
        return {"channels": self.channels, "depth": self.depth, "features": self.features}

    @classmethod
    def config_from_state_dict(cls, state_dict):
        convs = _conv_weights(state_dict)
        first = convs[0][1]
        return {"channels": int(first.shape[1]), "depth": len(convs), "features": int(first.shape[0])}

    @classmethod
    def adapt_state_dict(cls, state_dict, meta):
        convs = _conv_weights(state_dict)
        prefix = convs[0][0].rsplit(".", 2)[0]
        eps_by_layer = meta.get("bn_eps", {})
        out: dict[str, torch.Tensor] = {}
        for i, (key, weight) in enumerate(convs):
            index = int(key.rsplit(".", 2)[1])
            bias = state_dict.get(f"{prefix}.{index}.bias")
            bias = torch.zeros(weight.shape[0]) if bias is None else bias
            bn = f"{prefix}.{index + 1}"
            if f"{bn}.running_mean" in state_dict:
                eps = float(eps_by_layer.get(bn, 1e-5))
                weight, bias = _fold_batch_norm(weight, bias, state_dict, bn, eps)
            out[f"model.{2 * i}.weight"] = weight.float()
            out[f"model.{2 * i}.bias"] = bias.float()
        return out


def _conv_weights(state_dict: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """The 4-D weights of ``<prefix>.<index>.weight``, in layer order."""
    found = []
    for key, value in state_dict.items():
        m = re.fullmatch(r"(.*)\.(\d+)\.weight", key)
        if m and value.ndim == 4:
            found.append((m.group(1), int(m.group(2)), key, value))
    prefixes = {p for p, *_ in found}
    if not found or len(prefixes) != 1:
        raise EdgeRestoreError("checkpoint does not look like DnCNN: expected one sequence of conv layers "
                               f"named <prefix>.<n>.weight, found prefixes {sorted(prefixes) or 'none'}")
    found.sort(key=lambda item: item[1])
    return [(key, value) for _, _, key, value in found]


def _fold_batch_norm(weight, bias, state_dict, bn: str, eps: float):
    gamma = state_dict[f"{bn}.weight"]
    beta = state_dict[f"{bn}.bias"]
    mean = state_dict[f"{bn}.running_mean"]
    var = state_dict[f"{bn}.running_var"]
    scale = gamma / torch.sqrt(var + eps)
    return weight * scale.view(-1, 1, 1, 1), (bias - mean) * scale + beta
