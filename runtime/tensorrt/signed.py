"""The signed-INT8 form of a Q/DQ graph, which is all TensorRT quantizes to.

``export --int8`` puts activations that cannot be negative (ReLU outputs) on UINT8 with zero
point 0 (calibration/quantize.py): 256 levels over ``[0, amax]`` for ONNX Runtime and
OpenVINO. TensorRT's Q/DQ take signed INT8 only, so its build rewrites each such pair to INT8
with zero point 0 over the same range (scale ``amax / 127``): the engine runs those tensors on
128 levels, everything else (weights, learned rounding, corrected biases, the other ranges) as
exported. It is the graph ``export --int8 --signed-activations`` writes and validates, which is
how a bundle meant for TensorRT gets its accuracy measured as TensorRT computes it.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper

SIGNED_LEVELS, UNSIGNED_LEVELS = 127, 255


def unsigned_pairs(model: onnx.ModelProto) -> list[str]:
    """Zero-point initializers of UINT8 type read by a Q/DQ node of ``model``."""
    zeros = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.UINT8}
    return sorted({n.input[2] for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in zeros})


def to_signed_int8(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with every UINT8 Q/DQ pair of zero point 0 made INT8 over the same
    range, and how many zero points changed (0: ``model`` itself is returned). A nonzero UINT8
    zero point (asymmetric) is left for :func:`.check.check_model` to refuse."""
    names = unsigned_pairs(model)
    initializers = {t.name: t for t in model.graph.initializer}
    symmetric = [name for name in names if not numpy_helper.to_array(initializers[name]).any()]
    if not symmetric:
        return model, 0
    signed = copy.deepcopy(model)
    initializers = {t.name: t for t in signed.graph.initializer}
    scales = {n.input[1] for n in signed.graph.node
              if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in symmetric}
    for name in symmetric:
        zero = initializers[name]
        zero.CopyFrom(numpy_helper.from_array(np.zeros(numpy_helper.to_array(zero).shape, np.int8), name))
    for name in scales:
        scale = initializers[name]
        value = numpy_helper.to_array(scale) * np.float32(UNSIGNED_LEVELS / SIGNED_LEVELS)
        scale.CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    return signed, len(symmetric)
