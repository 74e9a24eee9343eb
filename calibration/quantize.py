"""FP32 stage ONNX + activation ranges -> Q/DQ stage ONNX, by ONNX Runtime's ``quantize_static``.

Symmetric quantization everywhere (zero point 0, as TensorRT's explicit quantization
requires), per-channel weights, Q/DQ around the compute-heavy ops and their ReLUs.

Activations that cannot be negative (a ReLU's output, or a tensor only ReLUs read) are
unsigned by default: UINT8 with zero point 0, ``[0, amax]`` on 256 levels, where signed INT8
spends half its 256 levels on values that never occur. Half the step is a quarter of the
rounding noise: on DnCNN-S (sigma 25, Set12) the activations' share of the INT8 loss went from
0.068 dB to about 0.02 (README, "INT8 export"). ONNX Runtime's QLinearConv and OpenVINO take
unsigned activations natively (on x86 they are the operand ``vpmaddubsw`` wants). TensorRT
quantizes to signed INT8 only: its build converts these pairs to INT8 over the same range
(runtime/tensorrt/signed.py), which is exactly ``unsigned=False`` here, so a bundle meant for
TensorRT is validated as TensorRT computes it with ``export --int8 --signed-activations``.

Weights on a 7-bit grid by default (``weight_bits=7``, quantize_static's ``reduce_range``:
integers in [-64, 64]): x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) multiply INT8 in
pairs of unsigned-by-signed bytes summed into 16-bit integers (``vpmaddubsw``), where ReLU
activations near the top of their range times 8-bit weights overflow and saturate. ONNX
Runtime and OpenVINO both do this; measured on this project's AMD EPYC (AVX2), rtdenoise lost
0.51 dB on McMaster sigma 25 in INT8 with 8-bit weights and 0.05 dB with 7-bit ones. VNNI,
ARM and TensorRT do not saturate; ``weight_bits=8`` keeps the finer grid for them. The ranges are
computed once (:mod:`.scales`) and passed through ONNX Runtime's calibration-cache file,
so the sensitivity search can re-quantize with other FP32 layers without recalibrating.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData, save_tensors_data

from edgerestore.runtime.tensorrt.signed import SIGNED_LEVELS, UNSIGNED_LEVELS  # activation grids: amax / levels

from .scales import COMPUTE_OPS, QUANTIZED_OPS, quiet

# QuantizeBias off: biases stay float (TensorRT quantizes them itself and refuses int32 Q/DQ;
# `edgerestore check` enforces it). AddQDQPairToWeight: weights stay float initializers behind a
# QuantizeLinear -> DequantizeLinear pair, the form every TensorRT parses (8.x does not take
# int8 weight initializers), so the one validated Q/DQ file builds explicit INT8 engines on
# 8.5 to 11; ONNX Runtime and OpenVINO fold the pair into the same integer weights.
EXTRA_OPTIONS = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                 "AddQDQPairToWeight": True}


WEIGHT_BITS = (7, 8)
DEFAULT_WEIGHT_BITS = 7
QMAX_OF_BITS = {7: 64, 8: 127}  # the weight grid's integers: [-qmax, qmax]


def quantize_stage(fp32: Path, output: Path, amax: dict[str, float], fp32_nodes: list[str],
                   weight_bits: int = DEFAULT_WEIGHT_BITS, rounded: dict[str, np.ndarray] | None = None,
                   unsigned: bool = True) -> dict[str, float]:
    """Write the Q/DQ model of ``fp32`` to ``output``; returns the amax of every activation
    tensor it quantizes (read back from the written graph). ``rounded``: node -> weights
    already on its grid (calibration/adaround.py), used for the nodes in INT8; ``unsigned``:
    non-negative activations on UINT8 (module docstring)."""
    ranges = TensorsData(CalibrationMethod.MinMax, {
        name: (np.array(-value, np.float32), np.array(value, np.float32)) for name, value in amax.items()})
    model = onnx.load(str(fp32))
    exclude = with_activations(model, fp32_nodes)
    with tempfile.TemporaryDirectory(prefix="edgerestore-ranges-") as tmp:
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(ranges, cache)
        source = fp32
        chosen = {node: w for node, w in (rounded or {}).items() if node not in set(fp32_nodes)}
        if chosen:
            source = Path(tmp) / "rounded.onnx"
            _replace_weights(model, chosen)
            onnx.save(model, str(source))
        with quiet():
            quantize_static(str(source), str(output), None, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=exclude, calibrate_method=CalibrationMethod.MinMax,
                            reduce_range=weight_bits == 7,
                            calibration_cache_path=cache, extra_options=dict(EXTRA_OPTIONS))
    if unsigned:
        written = onnx.load(str(output))
        if make_unsigned(written, nonnegative_tensors(model)):
            onnx.save(written, str(output))
    return activation_amax(onnx.load(str(output)))


def nonnegative_tensors(model: onnx.ModelProto) -> set[str]:
    """Tensors of an FP32 graph whose quantized values cannot be negative, by construction:
    a ReLU's output, and a tensor only ReLUs read (its negatives die there, so clipping them
    at the quantizer changes nothing)."""
    readers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.op_type)
    outputs = {o.name for o in model.graph.output}
    found = {n.output[0] for n in model.graph.node if n.op_type == "Relu"}
    found |= {name for name, ops in readers.items() if name not in outputs and set(ops) == {"Relu"}}
    return found


def make_unsigned(model: onnx.ModelProto, nonnegative: set[str]) -> int:
    """Rewrites, in place, the Q/DQ pairs of the tensors in ``nonnegative`` from INT8 (scale
    amax / 127) to UINT8 (zero point 0, scale amax / 255); returns how many tensors. A scale or
    zero point shared with a tensor that may be negative stays signed."""
    constants = {t.name: t for t in model.graph.initializer}
    users: dict[str, list[bool]] = {}  # scale or zero-point initializer -> its Q/DQ's tensor is non-negative
    pairs = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or node.input[0] in constants:
            continue
        tensor = node.input[0] if node.op_type == "QuantizeLinear" else pairs.get(node.input[0], "")
        for name in node.input[1:3]:
            users.setdefault(name, []).append(_fp32_name(tensor) in nonnegative)
    changed = 0
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in constants or len(node.input) < 3:
            continue
        scale, zero = (constants.get(name) for name in node.input[1:3])
        if scale is None or zero is None or not all(users[node.input[1]]) or not all(users[node.input[2]]):
            continue
        if zero.data_type != onnx.TensorProto.INT8 or numpy_helper.to_array(zero).any():
            continue
        value = numpy_helper.to_array(scale) * np.float32(SIGNED_LEVELS / UNSIGNED_LEVELS)
        scale.CopyFrom(numpy_helper.from_array(value.astype(np.float32), scale.name))
        zero.CopyFrom(numpy_helper.from_array(np.zeros(numpy_helper.to_array(zero).shape, np.uint8), zero.name))
        changed += 1
    return changed


def _fp32_name(tensor: str) -> str:
    return tensor.removesuffix("_QuantizeLinear_Input")  # a quantized graph output, renamed by ONNX Runtime


def _replace_weights(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> None:
    """Node -> new value of its weight initializer (input 1), in place."""
    initializers = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.name in weights:
            tensor = initializers[node.input[1]]
            tensor.CopyFrom(numpy_helper.from_array(weights[node.name].astype(np.float32), tensor.name))


def with_activations(model: onnx.ModelProto, nodes: list[str]) -> list[str]:
    """``nodes`` plus the ReLUs that read their outputs: an FP32 layer's output then stays
    unrounded until the next INT8 layer quantizes it."""
    chosen = set(nodes)
    outputs = {o for n in model.graph.node if n.name in chosen for o in n.output}
    return sorted(chosen | {n.name for n in model.graph.node
                            if n.op_type in ("Relu",) and n.input and n.input[0] in outputs})


def activation_amax(model: onnx.ModelProto) -> dict[str, float]:
    """Tensor -> amax (scale x 127 signed, x 255 unsigned) of every QuantizeLinear on a
    non-constant tensor, by the tensor's name in the FP32 graph (the one TensorRT sees when it
    reads a calibration cache)."""
    constants = {t.name: t for t in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    scales = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in constants:
            name = node.input[0]
            # A quantized graph output keeps its name on the DQ side; ONNX Runtime renames the original.
            original = name.removesuffix("_QuantizeLinear_Input")
            zero = constants.get(node.input[2]) if len(node.input) > 2 else None
            levels = UNSIGNED_LEVELS if zero is not None and zero.data_type == onnx.TensorProto.UINT8 else SIGNED_LEVELS
            scales[original if original in outputs else name] = float(numpy_helper.to_array(constants[node.input[1]])
                                                                      * np.float32(levels))
    return dict(sorted(scales.items()))


def unsigned_activations(path: Path) -> list[str]:
    """The activation tensors a Q/DQ file quantizes on UINT8 (by their FP32 names)."""
    model = onnx.load(str(path))
    constants = {t.name: t for t in model.graph.initializer}
    return sorted({_fp32_name(n.input[0]) for n in model.graph.node
                   if n.op_type == "QuantizeLinear" and n.input[0] not in constants and len(n.input) > 2
                   and n.input[2] in constants and constants[n.input[2]].data_type == onnx.TensorProto.UINT8})


def compute_nodes(path: Path) -> list[str]:
    """Names of the nodes the quantizer may put in INT8, in graph (topological) order."""
    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type in COMPUTE_OPS]
