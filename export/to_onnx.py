"""torch -> ONNX for one stage graph: dynamic batch (and spatial axes where the stage
allows), then graph simplification with onnxslim."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import onnxslim
import torch

from edgerestore.models import StageGraph

OPSET = 17
# Example spatial sizes for dynamic axes: different, not 1, not powers of two, so the
# tracer cannot fold a size into a constant.
_EXAMPLE_HW = (72, 88)


def example_size(multiple: int) -> tuple[int, int]:
    """``_EXAMPLE_HW`` rounded up to ``multiple`` and still unequal (and no power of two for
    the multiples our models have)."""
    h, w = (-(-v // multiple) * multiple for v in _EXAMPLE_HW)
    return (h, w + 2 * multiple) if h == w else (h, w)


def example_inputs(stage: StageGraph, batch: int = 2, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Deterministic sample inputs matching the stage's specs (batch > 1 on purpose)."""
    generator = generator or torch.Generator().manual_seed(0)
    size = example_size(stage.size_multiple)
    tensors = []
    for spec in stage.inputs:
        dims, spatial = [], iter(v // spec.divisor for v in size)
        for d in spec.shape:
            dims.append(next(spatial) if d is None else d)
        x = torch.rand(batch, *dims, generator=generator) if spec.kind == "image" else torch.randn(batch, *dims, generator=generator)
        tensors.append(x)
    return tensors


def dynamic_axes(stage: StageGraph) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for spec in [*stage.inputs, *stage.outputs]:
        names = iter(("height", "width"))
        axes[spec.name] = {0: "batch", **{i + 1: next(names) for i, d in enumerate(spec.shape) if d is None}}
    return axes


def export_stage(stage: StageGraph, path: Path) -> onnx.ModelProto:
    """Export, simplify, check and save one stage; returns the saved model."""
    module = stage.module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter, not user-actionable
        torch.onnx.export(
            module, tuple(example_inputs(stage)), str(path),
            input_names=[s.name for s in stage.inputs], output_names=[s.name for s in stage.outputs],
            dynamic_axes=dynamic_axes(stage), opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )
    model = onnxslim.slim(onnx.load(str(path)))
    model.doc_string = f"edgerestore stage '{stage.name}'"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return model
