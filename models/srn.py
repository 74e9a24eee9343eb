"""SRN-DeblurNet (Tao et al., CVPR 2018): a scale-recurrent encoder-decoder deblurrer.

The official TensorFlow-1 network (github.com/jiangsutx/SRN-Deblur, ``models/model.py``):
three scales (x0.25, x0.5, x1), one set of weights shared by all of them. At each scale the
input is ``concat(blur_i, resize(pred))``, where ``pred`` starts as the blurred image
itself; encoder 32/64/128 channels with 5x5 convolutions, each stage a conv (+ReLU,
stride 2 for the lower two) and 3 ResBlocks ``x + conv2(relu(conv1(x)))``; decoder of 3
ResBlocks per stage, 4x4 stride-2 transposed convolutions (+ReLU) with additive skips, and
a 5x5 conv to the output (no activation, no global skip). The ``lstm`` variant puts a 3x3
ConvLSTM (128 units, forget bias 1, state ``concat(c, h)``) at the bottleneck, its state
resized with the images between scales. All resizes are TF1's bilinear
(``align_corners=False``, ``half_pixel_centers=False``), see :mod:`edgerestore.runtime.resize`.

Variants of the official code: ``color`` (3 channels, no LSTM) and the per-channel ones,
``lstm`` (1 channel + ConvLSTM, the paper's model) and ``gray``; the per-channel models run
each colour plane as its own image, which the runtime does for every 1-channel bundle.

Export: one stage is one scale step (blur, pred[, state] in; pred[, state] out); the plan
loops over the scales with host-side resize steps. TF 'SAME' padding of the stride-2 5x5
convolutions puts the extra row/column bottom/right; with sizes that are multiples of 16 it
is always (1, 2), a constant the exported graph can hold for any size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgerestore.runtime.errors import EdgeRestoreError
from edgerestore.runtime.resize import scaled_size

from .base import RestorationModel, StageGraph, StagePlan, TensorSpec, Tiling
from .checkpoint import Checkpoint, load_checkpoint

WIDTHS = (32, 64, 128)
LEVELS = 3
KERNEL = 5
STATE_DIVISOR = 4  # the bottleneck's resolution relative to the scale's input


def resize_bilinear(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """TF1 legacy bilinear resize (ONNX 'asymmetric'), the torch twin of the runtime's."""
    if tuple(x.shape[-2:]) == (height, width):
        return x

    def axis(size_in: int, size_out: int):
        source = torch.arange(size_out, dtype=torch.float64) * (size_in / size_out)
        low = source.floor().long().clamp(max=size_in - 1)
        return low, (low + 1).clamp(max=size_in - 1), (source - low).float()

    top, bottom, fy = axis(x.shape[-2], height)
    left, right, fx = axis(x.shape[-1], width)
    rows = x[..., top, :] + (x[..., bottom, :] - x[..., top, :]) * fy[:, None]
    return rows[..., left] + (rows[..., right] - rows[..., left]) * fx


class ResBlock(nn.Module):
    def __init__(self, features: int, kernel: int = KERNEL):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv2d(features, features, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class DownConv(nn.Module):
    """5x5 stride-2 conv + ReLU with TF 'SAME' padding for even sizes (1 top/left, 2 bottom/right)."""

    def __init__(self, cin: int, cout: int, kernel: int = KERNEL):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=2)
        total = kernel - 2  # TF SAME, stride 2, even size: (k - 2) rows, the extra one at the end
        self.pad = (total // 2, total - total // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.pad
        return F.relu(self.conv(F.pad(x, (a, b, a, b))))


class Stage(nn.Module):
    """One resolution of the encoder or decoder: an entry layer and 3 ResBlocks."""

    def __init__(self, features: int, blocks: int = 3):
        super().__init__()
        self.blocks = nn.Sequential(*(ResBlock(features) for _ in range(blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class ConvLSTM(nn.Module):
    """The official BasicConvLSTMCell: one 3x3 conv over [x, h] -> gates i, j, f, o;
    state = concat(c, h) along channels."""

    def __init__(self, features: int, units: int, forget_bias: float = 1.0):
        super().__init__()
        self.units, self.forget_bias = units, forget_bias
        self.conv = nn.Conv2d(features + units, 4 * units, 3, padding=1)

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c, h = state[:, :self.units], state[:, self.units:]
        i, j, f, o = self.conv(torch.cat([x, h], 1)).chunk(4, 1)
        c = c * torch.sigmoid(f + self.forget_bias) + torch.sigmoid(i) * torch.tanh(j)
        h = torch.tanh(c) * torch.sigmoid(o)
        return h, torch.cat([c, h], 1)


class ScaleStep(nn.Module):
    """The network of one scale: (blur, pred[, state]) -> (pred[, state])."""

    def __init__(self, channels: int, widths: tuple[int, int, int], lstm: bool):
        super().__init__()
        w1, w2, w3 = widths
        self.enc1_1 = nn.Conv2d(2 * channels, w1, KERNEL, padding=KERNEL // 2)
        self.enc1 = Stage(w1)
        self.enc2_1 = DownConv(w1, w2)
        self.enc2 = Stage(w2)
        self.enc3_1 = DownConv(w2, w3)
        self.enc3 = Stage(w3)
        self.lstm = ConvLSTM(w3, w3) if lstm else None
        self.dec3 = Stage(w3)
        self.dec2_4 = nn.ConvTranspose2d(w3, w2, 4, stride=2, padding=1)
        self.dec2 = Stage(w2)
        self.dec1_4 = nn.ConvTranspose2d(w2, w1, 4, stride=2, padding=1)
        self.dec1 = Stage(w1)
        self.dec1_0 = nn.Conv2d(w1, channels, KERNEL, padding=KERNEL // 2)

    def forward(self, blur: torch.Tensor, pred: torch.Tensor, state: torch.Tensor | None = None):
        e1 = self.enc1(F.relu(self.enc1_1(torch.cat([blur, pred], 1))))
        e2 = self.enc2(self.enc2_1(e1))
        e3 = self.enc3(self.enc3_1(e2))
        if self.lstm is not None:
            e3, state = self.lstm(e3, state)
        d2 = self.dec2(F.relu(self.dec2_4(self.dec3(e3))) + e2)
        d1 = self.dec1(F.relu(self.dec1_4(d2)) + e1)
        out = self.dec1_0(d1)
        return out if self.lstm is None else (out, state)


class SRN(RestorationModel):
    arch = "srn"
    size_multiple = 16

    def __init__(self, channels: int = 3, lstm: bool = False, widths: tuple[int, ...] | list[int] = WIDTHS,
                 levels: int = LEVELS):
        super().__init__()
        if channels not in (1, 3) or len(widths) != 3 or levels < 1:
            raise EdgeRestoreError(f"srn needs channels 1 or 3, three widths and >= 1 level; got channels={channels}, "
                                   f"widths={list(widths)}, levels={levels}")
        self.channels, self.lstm, self.widths, self.levels = channels, bool(lstm), tuple(int(w) for w in widths), levels
        # the coarsest scale (1/2^(levels-1)) must still halve twice inside the network
        self.size_multiple = 4 * 2 ** (levels - 1)
        self.net = ScaleStep(channels, self.widths, self.lstm)

    @property
    def scales(self) -> list[float]:
        return [0.5 ** (self.levels - 1 - i) for i in range(self.levels)]

    @property
    def state_channels(self) -> int:
        return 2 * self.widths[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pyramid(x)[-1]

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The prediction at every scale, coarse to fine (the official ``x_unwrap``)."""
        h, w = x.shape[-2:]
        pred = x
        state = x.new_zeros(x.shape[0], self.state_channels, h // STATE_DIVISOR, w // STATE_DIVISOR)
        outputs = []
        for scale in self.scales:
            hi, wi = scaled_size(h, scale), scaled_size(w, scale)  # the official int(round(h * scale))
            blur = resize_bilinear(x, hi, wi)
            pred = resize_bilinear(pred, hi, wi)
            if self.lstm:
                state = resize_bilinear(state, hi // STATE_DIVISOR, wi // STATE_DIVISOR)
                pred, state = self.net(blur, pred, state)
            else:
                pred = self.net(blur, pred)
            outputs.append(pred)
        return outputs

    # -- descriptor -------------------------------------------------------------------------
    @property
    def receptive_field(self) -> int:
        # One scale step: 14 5x5 convs at full resolution (4 px each), 13 at 1/2 (8 px) and
        # 13 at 1/4 (16 px, plus the ConvLSTM's 3x3); the coarsest step runs at 1/4 of the
        # image, so its reach is 4x that: ~1,500 px, beyond any tile. Hence whole images.
        per_scale = 1 + 14 * 4 + 13 * 8 + 13 * 16 + 8 * self.lstm
        return 4 * per_scale

    def default_tiling(self) -> Tiling:
        # Whole images (the pyramid's coarse scales see everything). With --tile N each tile
        # runs the whole pyramid on its own; large tiles keep most of that context.
        return Tiling(tile=512, overlap=128, halo=32, ramp=16, whole=True)

    def config(self) -> dict[str, Any]:
        return {"channels": self.channels, "lstm": self.lstm, "widths": list(self.widths), "levels": self.levels}

    def parameter_counts(self) -> dict[str, int]:
        lstm = sum(p.numel() for p in self.net.lstm.parameters()) if self.lstm else 0
        total = sum(p.numel() for p in self.parameters())
        return {"encoder-decoder": total - lstm, **({"convlstm": lstm} if self.lstm else {})}

    def macs_per_pixel(self) -> float:
        """Per pixel of the scale step's input (the coarse scales run at 1/4 and 1/16 of it)."""
        c, s = self.channels, self.state_channels
        x = torch.zeros(1, c, 16, 16)  # the smallest size the step takes: counts are per pixel anyway
        state = (torch.zeros(1, s, 4, 4),) if self.lstm else ()
        return self.measured_macs_per_pixel(self.net, x, x, *state)

    def stage_plan(self) -> StagePlan:
        c, s = self.channels, self.state_channels
        inputs = [TensorSpec("blur", (c, None, None), "image"), TensorSpec("pred", (c, None, None), "image")]
        outputs = [TensorSpec("pred_out", (c, None, None), "image")]
        run = {"op": "run", "stage": "scale", "in": {"blur": "blur", "pred": "pred"}, "out": {"pred_out": "pred"}}
        body = [{"op": "resize", "in": "image", "out": "blur", "scale": "scale"},
                {"op": "resize", "in": "pred", "out": "pred", "like": "blur"}]
        initial: dict[str, Any] = {}
        if self.lstm:
            inputs.append(TensorSpec("state", (s, None, None), "state", divisor=STATE_DIVISOR))
            outputs.append(TensorSpec("state_out", (s, None, None), "state", divisor=STATE_DIVISOR))
            run["in"]["state"], run["out"]["state_out"] = "state", "state"
            body.append({"op": "resize", "in": "state", "out": "state", "like": "blur", "divisor": STATE_DIVISOR})
            initial["state"] = {"shape": [s], "like": "image", "divisor": STATE_DIVISOR, "value": 0.0}
        body.append(run)
        plan = [
            # pred starts as the blurred image itself (resized to each scale in the loop)
            {"op": "resize", "in": "image", "out": "pred", "scale": 1.0},
            {"op": "loop", "name": "scales", "var": "scale", "values": self.scales, "body": body},
        ]
        stage = StageGraph("scale", self.net, inputs, outputs, macs_per_pixel=self.macs_per_pixel(), size_multiple=4)
        return StagePlan([stage], plan, initial, output="pred")

    # -- checkpoints ------------------------------------------------------------------------
    @classmethod
    def read_checkpoint(cls, path: str | Path) -> Checkpoint:
        """A PyTorch/edgerestore checkpoint, or the official TF1 checkpoint (its folder, its
        ``checkpoint`` file's folder, or a ``deblur.model-N`` prefix)."""
        from .srn_tf1 import is_tf1_checkpoint, read_official

        path = Path(path)
        if path.is_dir() and not is_tf1_checkpoint(path):
            raise EdgeRestoreError(f"{path}: not an SRN-DeblurNet TF1 checkpoint folder (no 'checkpoint' file "
                                   "naming deblur.model-N); pass the folder, the prefix or a PyTorch checkpoint")
        return read_official(path) if is_tf1_checkpoint(path) else load_checkpoint(path)

    @classmethod
    def config_from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
        try:
            first = state_dict["net.enc1_1.weight"]
            widths = [int(first.shape[0]), int(state_dict["net.enc2_1.conv.weight"].shape[0]),
                      int(state_dict["net.enc3_1.conv.weight"].shape[0])]
        except KeyError:
            raise EdgeRestoreError("checkpoint does not look like SRN-DeblurNet: no 'net.enc1_1.weight' / "
                                   "'net.enc2_1.conv.weight' / 'net.enc3_1.conv.weight'") from None
        return {"channels": int(first.shape[1]) // 2, "lstm": "net.lstm.conv.weight" in state_dict, "widths": widths}
