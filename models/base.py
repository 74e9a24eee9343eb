"""What every architecture declares so that export and the runtime never need its class.

Like spandrel's model descriptors: a restoration model states its channels, value
range, size multiple, receptive field and default tiling, and it knows how to cut
itself into stage graphs plus a plan (the control flow between stages, as data).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from .checkpoint import Checkpoint


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a stage graph. ``shape`` excludes the batch axis;
    ``None`` marks a dynamic spatial axis."""

    name: str
    shape: tuple[int | None, ...]
    kind: str = "features"  # "image" | "features" | "state" | "logits"
    # Dynamic spatial axes are the stage's image size divided by this (a recurrent state
    # kept at a bottleneck's resolution); export samples inputs of consistent sizes.
    divisor: int = 1

    def to_json(self) -> dict[str, Any]:
        spec = {"name": self.name, "shape": list(self.shape), "kind": self.kind}
        return {**spec, "divisor": self.divisor} if self.divisor != 1 else spec


@dataclass
class StageGraph:
    """A piece of the network exported as one ONNX file."""

    name: str
    module: nn.Module
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # MACs per output pixel (dynamic-size stages) and per item (fixed-size stages); the
    # runtime reports executed compute from these without knowing the architecture.
    macs_per_pixel: float = 0.0
    macs_per_call: float = 0.0
    # Spatial sizes the stage accepts are multiples of this (strided layers, FPN adds).
    size_multiple: int = 1


@dataclass
class StagePlan:
    """The stages of a model and the plan that strings them together."""

    stages: list[StageGraph]
    plan: list[dict[str, Any]]
    # Tensors the plan expects before its first step, besides "image".
    initial: dict[str, Any] = field(default_factory=dict)
    # The plan variable holding the restored image when the plan ends.
    output: str = "image"


@dataclass(frozen=True)
class Tiling:
    """Default tile geometry. ``halo`` is the receptive-field radius: the runtime gives
    zero merge weight to output pixels that close to an inner tile edge."""

    tile: int
    overlap: int
    halo: int
    ramp: int = 5
    fixed: bool = False  # the stages only accept this tile size (routers with FC layers)
    # Run whole images unless the user asks for tiles (or a whole one does not fit the memory
    # budget): the output depends on the whole image (per-image normalization statistics, a
    # coarse-to-fine pyramid), so tiles would change it; or the network is so light that the
    # overlap recomputed at tile borders and the calls per tile would cost more than it does.
    # ``tile``/``overlap`` are then what ``--tile`` without ``--overlap`` (or the fallback) uses.
    whole: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"tile": self.tile, "overlap": self.overlap, "halo": self.halo,
                "ramp": self.ramp, "fixed": self.fixed, "whole": self.whole}


class RestorationModel(nn.Module):
    """Base class of the architectures in the registry."""

    arch: str = ""
    value_range: tuple[float, float] = (0.0, 1.0)
    size_multiple: int = 1
    scale: int = 1
    # How whole images are padded up to the size multiple: "reflect", or "constant"
    # (zeros in the model's value range, as an official predictor pads).
    pad_mode: str = "reflect"

    # Set by subclasses in __init__.
    channels: int

    @property
    def receptive_field(self) -> int:
        raise NotImplementedError

    def default_tiling(self) -> Tiling:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this model."""
        raise NotImplementedError

    def stage_plan(self) -> StagePlan:
        """Default: the whole network is one stage, image in, image out."""
        c = self.channels
        return StagePlan(
            stages=[StageGraph("main", self, [TensorSpec("input", (c, None, None), "image")],
                               [TensorSpec("output", (c, None, None), "image")],
                               macs_per_pixel=self.macs_per_pixel(), size_multiple=self.size_multiple)],
            plan=[{"op": "run", "stage": "main", "in": {"input": "image"}, "out": {"output": "image"}}],
        )

    def macs_per_pixel(self) -> float:
        """Multiply-accumulates per output pixel of the stride-1 convolutions."""
        total = 0
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                total += m.in_channels // m.groups * m.out_channels * m.kernel_size[0] * m.kernel_size[1]
        return float(total)

    @staticmethod
    def measured_macs_per_pixel(module: nn.Module, *inputs: torch.Tensor) -> float:
        """Convolution MACs of one call of ``module`` on ``inputs``, per pixel of the first
        input: counted per call (weights shared by several calls count each time) at the
        resolution each layer actually runs (strided, transposed, depthwise)."""
        total = [0.0]

        def count(m: nn.Module, args, out) -> None:
            k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels * m.out_channels / m.groups
            pixels = args[0].shape[-2] * args[0].shape[-1] if isinstance(m, nn.ConvTranspose2d) else \
                out.shape[-2] * out.shape[-1]
            total[0] += k * pixels

        hooks = [m.register_forward_hook(count) for m in module.modules()
                 if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        try:
            with torch.no_grad():
                module(*inputs)
        finally:
            for hook in hooks:
                hook.remove()
        return total[0] / (inputs[0].shape[-2] * inputs[0].shape[-1])

    @classmethod
    def read_checkpoint(cls, path) -> "Checkpoint":
        """Read ``--weights``. Default: a PyTorch checkpoint file; architectures whose official
        weights come in another form (a folder of TF1 checkpoints, ...) override this."""
        from .checkpoint import load_checkpoint

        return load_checkpoint(path)

    @classmethod
    def config_from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Infer the architecture config from a foreign checkpoint's tensors."""
        return {}

    @classmethod
    def adapt_state_dict(cls, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Map a foreign checkpoint layout onto this class's parameter names."""
        return state_dict
