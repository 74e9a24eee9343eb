"""Empirical bias correction of a Q/DQ stage.

Rounding weights and activations to INT8 shifts the mean of every convolution's output
(Nagel et al., "Data-Free Quantization", 2019, section 4.2; NNCF's fast bias correction is
the same idea). Measured on the calibration tiles, per output channel, the shift is
subtracted from the convolution's bias, one convolution after the other in graph order, so
that each correction is measured on inputs already corrected upstream (corrected all at
once, the later layers overshoot: their shift was partly their inputs').

Only the Q/DQ file's float biases change (calibration/quantize.py leaves biases unquantized,
as TensorRT wants them); the calibration ranges, and so the TensorRT caches, stay as
calibrated. A TensorRT engine built from the caches (implicit INT8: DLA below TensorRT 11)
reads the FP32 graph and so goes without the correction.

The INT8 means are measured in the Q/DQ graph's own arithmetic (QuantizeLinear /
DequantizeLinear with their float semantics around float convolutions: scales.cpu_session),
the same on every machine up to float32 rounding, not in ONNX Runtime's fused integer
kernels, whose results depend on the CPU and the release (on AVX2 without VNNI they differ
from the Q/DQ semantics by a fifth of the output range on the tests' chain): the correction
then fits the model every backend is meant to compute, not this CPU's kernels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from .scales import cpu_session

Feeds = dict[str, np.ndarray]


def session_with_outputs(model: onnx.ModelProto, outputs: list[str]):
    """A session on ``model`` that also returns the intermediate tensors ``outputs`` (Q/DQ in
    exact float arithmetic, module docstring)."""
    return cpu_session(_with_outputs(model, outputs).SerializeToString(), optimize=True)


def _with_outputs(model: onnx.ModelProto, outputs: list[str]) -> onnx.ModelProto:
    extended = onnx.ModelProto()
    extended.CopyFrom(model)
    present = {o.name for o in extended.graph.output}
    for name in outputs:
        if name not in present:
            extended.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return extended


def upstream(model: onnx.ModelProto, outputs: list[str]) -> onnx.ModelProto:
    """The part of ``model`` that computes ``outputs``, and only those as its outputs: ONNX
    Runtime runs every node of a graph whatever is fetched, so measuring an early layer on the
    whole network costs the whole network. A graph with subgraphs (If, Loop) is kept whole."""
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return _with_outputs(model, outputs)
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output}
    keep, stack = set(), list(outputs)
    while stack:
        index = producer.get(stack.pop())
        if index is not None and index not in keep:
            keep.add(index)
            stack.extend(graph.node[index].input)
    nodes = [n for i, n in enumerate(graph.node) if i in keep]
    used = {name for n in nodes for name in n.input} | set(outputs)
    cut = onnx.helper.make_graph(nodes, graph.name, [i for i in graph.input if i.name in used],
                                 [onnx.helper.make_empty_tensor_value_info(name) for name in outputs],
                                 [t for t in graph.initializer if t.name in used])
    result = onnx.helper.make_model(cut, opset_imports=model.opset_import, ir_version=model.ir_version)
    return result


def channel_means(model: onnx.ModelProto, outputs: list[str], feeds: list[Feeds]) -> dict[str, np.ndarray]:
    """Per-channel (axis 1) mean of each tensor in ``outputs`` over all ``feeds`` batches."""
    session = session_with_outputs(model, outputs)
    inputs = {i.name for i in session.get_inputs()}  # an upstream cut may not read every stage input
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for batch in feeds:
        batch = {name: value for name, value in batch.items() if name in inputs}
        for name, value in zip(outputs, session.run(outputs, batch)):
            value = np.asarray(value, np.float64)
            axes = tuple(i for i in range(value.ndim) if i != 1)
            sums[name] = sums.get(name, 0.0) + value.sum(axis=axes)
            counts[name] = counts.get(name, 0) + value.size // value.shape[1]
    return {name: sums[name] / counts[name] for name in outputs}


def fp32_name(tensor: str) -> str:
    return tensor.removesuffix("_QuantizeLinear_Input")


def corrected_convolutions(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The convolutions with a float bias initializer, in graph (topological) order."""
    floats = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    return [n for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 2 and n.input[2] in floats]


def _shift_bias(model: onnx.ModelProto, conv: onnx.NodeProto, delta: np.ndarray) -> None:
    """bias += delta on the convolution's float bias initializer."""
    bias = next(i for i in model.graph.initializer if i.name == conv.input[2])
    value = numpy_helper.to_array(bias).astype(np.float64) + delta
    bias.CopyFrom(numpy_helper.from_array(value.astype(np.float32), bias.name))


def correct_biases(fp32: Path, qdq: Path, feeds: list[Feeds],
                   progress: Callable[[str, int, int], None] = lambda *_: None) -> dict[str, list[float]]:
    """Rewrites ``qdq`` in place with corrected biases; returns, per convolution output, the
    per-channel shift that was removed (FP32 mean - INT8 mean before the correction)."""
    reference_model = onnx.load(str(fp32))
    model = onnx.load(str(qdq))
    reference_outputs = {n.output[0] for n in corrected_convolutions(reference_model)}
    # A convolution is matched by its output tensor: ONNX Runtime keeps the FP32 names, but
    # for a quantized graph output (that name moves to the DequantizeLinear after it).
    convs = [(n, fp32_name(n.output[0])) for n in corrected_convolutions(model)
             if fp32_name(n.output[0]) in reference_outputs]
    if not convs or not feeds:
        return {}
    reference = channel_means(reference_model, [name for _, name in convs], feeds)
    shifts = {}
    for i, (conv, name) in enumerate(convs):
        progress(f"bias correction {conv.name or name}", i, len(convs))
        output = conv.output[0]
        delta = reference[name] - channel_means(upstream(model, [output]), [output], feeds)[output]
        _shift_bias(model, conv, delta)
        shifts[name] = [float(v) for v in delta]
    onnx.save(model, str(qdq))
    return shifts
