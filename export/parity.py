"""Does the exported graph compute what PyTorch computes? Checked at every export."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgerestore.models import StageGraph
from edgerestore.runtime import backends

from .to_onnx import example_inputs


@dataclass(frozen=True)
class Parity:
    stage: str
    max_abs_error: float
    psnr_db: float  # between the two outputs, peak = the reference output's range

    def to_json(self) -> dict[str, float | str]:
        return {"stage": self.stage, "max_abs_error": self.max_abs_error,
                "psnr_db": self.psnr_db if math.isfinite(self.psnr_db) else None}


def check_stage(stage: StageGraph, onnx_path: Path, backend: str = "onnxruntime") -> Parity:
    inputs = example_inputs(stage, batch=2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = stage.module.eval()(*inputs)
    expected = expected if isinstance(expected, (tuple, list)) else (expected,)
    runner = backends.load_stage(backend, onnx_path)
    got = runner({spec.name: x.numpy() for spec, x in zip(stage.inputs, inputs)})
    worst, psnrs = 0.0, []
    for spec, ref in zip(stage.outputs, expected):
        ref = ref.numpy().astype(np.float64)
        diff = got[spec.name].astype(np.float64) - ref
        worst = max(worst, float(np.abs(diff).max()))
        peak = max(float(ref.max() - ref.min()), 1e-12)
        mse = float(np.mean(diff ** 2))
        psnrs.append(math.inf if mse == 0 else 10 * math.log10(peak ** 2 / mse))
    return Parity(stage.name, worst, min(psnrs))
