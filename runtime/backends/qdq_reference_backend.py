"""The INT8 reference: a Q/DQ stage computed exactly as its graph says, in float32.

QuantizeLinear rounds half to even and saturates, DequantizeLinear rescales, and the
convolutions between them run in float: the arithmetic TensorRT's explicit quantization
and the Q/DQ file's semantics define, the same on every machine up to float32 rounding.
ONNX Runtime with its Q/DQ fusions off (``session.disable_quant_qdq``) computes it; every
other graph optimization stays on, so it runs at about FP32 speed.

Deployment backends instead fuse Q/DQ pairs into integer kernels whose results depend on the
CPU and the release (on x86 without VNNI, 16-bit saturating pair sums: calibration/quantize.py).
Calibration measures INT8 here (ranges, bias correction, the sensitivity search, the
accuracy reference) and reports each installed backend beside it. FP32 stages run as on
``onnxruntime``.
"""

from __future__ import annotations

from pathlib import Path

from .onnxruntime_backend import ACTIVATION_FACTOR, SHARES_ACTIVATIONS, OrtStage

__all__ = ["ACTIVATION_FACTOR", "SHARES_ACTIVATIONS", "load"]


def load(path: Path, threads: int | None = None) -> OrtStage:
    return OrtStage(path, threads, exact_qdq=True)
