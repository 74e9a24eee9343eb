"""Channel equalization of an FP32 stage before its INT8 calibration.

A per-tensor INT8 activation gives all its channels one step: in a Conv -> ReLU -> Conv
chain, a channel whose range is a tenth of the widest keeps a tenth of the levels. ReLU
commutes with a positive scale per channel (relu(x / s) = relu(x) / s), so dividing output
channel c of the first convolution (weights and bias) by s_c and multiplying input channel c
of the second by s_c leaves the stage's function unchanged while evening out the channel
ranges the second convolution's input is quantized with (cross-layer equalization: Nagel et
al., "Data-Free Quantization", 2019, section 4.1). The scales are SmoothQuant's (Xiao et al.,
2023): ``s_c = r_c ** alpha / w_c ** (1 - alpha)``, with ``r_c`` the channel's range on the
calibration feeds and ``w_c`` the largest weight reading it, since the second convolution's
per-output-channel weight grid has to absorb what the activation gives up. The first
convolution's weights are quantized per output channel and so do not notice their scaling.

The equalized graph replaces the stage's FP32 file in the bundle, so the Q/DQ graph, the
TensorRT caches (whose tensors are the FP32 graph's) and an FP16 engine all come from one
graph; :func:`equalize_stage` checks it against the original on the feeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgerestore.runtime.errors import EdgeRestoreError

from .bias_correction import Feeds, session_with_outputs
from .scales import PERCENTILE, cpu_session

# DnCNN-S on Set12, default policy and bias correction (README, "INT8 export"): alpha 0.5,
# 0.65, 0.7, 0.75, 0.8, 0.85, 1.0 lose 0.086, 0.071, 0.072, 0.063, 0.066, 0.068, 0.085 dB on
# ONNX Runtime.
DEFAULT_ALPHA = 0.75
# Scales are kept within this factor of 1, so no channel is blown up past what FP16 holds
# (a dead channel, range 0, would otherwise ask for an unbounded one).
MAX_SCALE = 1e3
# Equalized vs original outputs on the feeds, relative to the outputs' range: float32
# reassociation gives ~1e-6; more is a wrong rewrite.
TOLERANCE = 1e-4


@dataclass(frozen=True)
class Pair:
    first: str  # Conv whose output channels are divided
    activation: str  # the ReLU output between them: the tensor that gets even ranges
    second: str  # Conv whose input channels are multiplied


@dataclass
class Equalization:
    alpha: float
    pairs: list[Pair] = field(default_factory=list)
    scales: dict[str, list[float]] = field(default_factory=dict)  # activation -> s per channel
    max_rel_error: float = 0.0  # equalized vs original stage outputs on the feeds

    def to_json(self) -> dict:
        return {"alpha": self.alpha, "pairs": [[p.first, p.activation, p.second] for p in self.pairs],
                "scales": self.scales, "max_rel_error": self.max_rel_error}


def _attribute(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def equalizable_pairs(model: onnx.ModelProto) -> list[Pair]:
    """Conv -> Relu -> Conv chains where rescaling the middle tensor's channels is exact:
    dense convolutions with constant weights of their own, and a middle tensor nothing
    else reads (nor is a graph output)."""
    graph = model.graph
    constants = {i.name for i in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def own_conv(node: onnx.NodeProto) -> bool:
        return (node.op_type == "Conv" and _attribute(node, "group", 1) == 1
                and all(name in constants and len(readers[name]) == 1 for name in node.input[1:] if name))

    pairs = []
    for first in graph.node:
        if not own_conv(first) or first.output[0] in outputs:
            continue
        after = readers.get(first.output[0], [])
        if len(after) != 1 or after[0].op_type != "Relu" or after[0].output[0] in outputs:
            continue
        relu = after[0]
        nxt = readers.get(relu.output[0], [])
        if len(nxt) == 1 and own_conv(nxt[0]) and nxt[0].input[0] == relu.output[0]:
            pairs.append(Pair(first.name, relu.output[0], nxt[0].name))
    return pairs


def channel_ranges(model: onnx.ModelProto, tensors: list[str], feeds: list[Feeds],
                   percentile: float = PERCENTILE) -> dict[str, np.ndarray]:
    """Per channel (axis 1) of each tensor, the ``percentile``-th value of |x| over all
    feeds, kept exactly by streaming each channel's largest values batch by batch."""
    session = session_with_outputs(model, tensors)
    first = session.run(tensors, feeds[0]) if feeds else []
    total = {name: 0 for name in tensors}
    rows = [len(next(iter(batch.values()))) for batch in feeds]
    same_shape = all({k: v.shape[1:] for k, v in batch.items()} == {k: v.shape[1:] for k, v in feeds[0].items()}
                     for batch in feeds)
    for name, value in zip(tensors, first):
        if same_shape:  # tiles of one size: every row adds as many values as the first batch's rows
            total[name] = value.size // value.shape[1] // rows[0] * sum(rows)
    if not same_shape:  # a first pass: values per channel, hence how many of the largest to keep
        for batch in feeds:
            for name, value in zip(tensors, session.run(tensors, batch)):
                total[name] += value.size // value.shape[1]
    tops: dict[str, np.ndarray] = {}
    for i, batch in enumerate(feeds):
        for name, value in zip(tensors, first if i == 0 else session.run(tensors, batch)):
            k = min(total[name], int(np.ceil(total[name] * (1 - percentile / 100))) + 1)
            flat = np.abs(np.moveaxis(value, 1, 0).reshape(value.shape[1], -1))
            if name in tops:
                flat = np.concatenate([tops[name], flat], axis=1)
            keep = min(k, flat.shape[1])
            tops[name] = np.partition(flat, flat.shape[1] - keep, axis=1)[:, flat.shape[1] - keep:]
    return {name: _tail_value(tops[name], total[name], percentile) for name in tensors}


def _tail_value(top: np.ndarray, count: int, percentile: float) -> np.ndarray:
    """The ``percentile``-th value per row, given each row's largest values out of ``count``."""
    rank = percentile / 100 * (count - 1)  # position in the ascending order of all values
    ordered = np.sort(top, axis=1)
    index = np.clip(rank - (count - top.shape[1]), 0, top.shape[1] - 1)
    low = np.floor(index).astype(int)
    high = np.minimum(low + 1, top.shape[1] - 1)
    frac = index - low
    return ordered[:, low] * (1 - frac) + ordered[:, high] * frac


def _initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(i for i in model.graph.initializer if i.name == name)


def _set(tensor: onnx.TensorProto, value: np.ndarray) -> None:
    tensor.CopyFrom(numpy_helper.from_array(value.astype(np.float32), tensor.name))


def equalize(model: onnx.ModelProto, feeds: list[Feeds], alpha: float = DEFAULT_ALPHA) -> Equalization:
    """Rescales every equalizable pair of ``model`` in place; returns what it did."""
    result = Equalization(alpha, equalizable_pairs(model))
    if not result.pairs:
        return result
    # The middle tensors' ranges are measured once, on the original graph: rescaling one
    # pair leaves every other pair's middle tensor as it was (each rescaling is undone by
    # the next convolution), so the order does not matter.
    ranges = channel_ranges(model, [p.activation for p in result.pairs], feeds)
    nodes = {n.name: n for n in model.graph.node}
    for pair in result.pairs:
        first, second = nodes[pair.first], nodes[pair.second]
        w2 = numpy_helper.to_array(_initializer(model, second.input[1])).astype(np.float64)
        weight_range = np.abs(w2).max(axis=tuple(i for i in range(w2.ndim) if i != 1))
        r = ranges[pair.activation].astype(np.float64)
        live = (r > 0) & (weight_range > 0)
        s = np.ones_like(r)
        s[live] = r[live] ** alpha / weight_range[live] ** (1 - alpha)
        if live.any():  # a common factor changes nothing but the magnitudes: centre on 1
            s[live] /= np.exp(np.mean(np.log(s[live])))
        s = np.clip(s, 1 / MAX_SCALE, MAX_SCALE)
        w1 = numpy_helper.to_array(_initializer(model, first.input[1])).astype(np.float64)
        shape = (-1,) + (1,) * (w1.ndim - 1)
        _set(_initializer(model, first.input[1]), w1 / s.reshape(shape))
        if len(first.input) > 2 and first.input[2]:
            bias = _initializer(model, first.input[2])
            _set(bias, numpy_helper.to_array(bias).astype(np.float64) / s)
        _set(_initializer(model, second.input[1]), w2 * s.reshape((1, -1) + (1,) * (w2.ndim - 2)))
        result.scales[pair.activation] = [float(v) for v in s]
    return result


def max_rel_error(original: onnx.ModelProto, equalized: onnx.ModelProto, feeds: list[Feeds]) -> float:
    """Largest |equalized - original| over the feeds, relative to each output's range."""
    a, b = cpu_session(original.SerializeToString()), cpu_session(equalized.SerializeToString())
    worst = 0.0
    for batch in feeds:
        for x, y in zip(a.run(None, batch), b.run(None, batch)):
            x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
            peak = max(float(x.max() - x.min()), 1e-12) if x.size else 1.0
            worst = max(worst, float(np.abs(x - y).max()) / peak if x.size else 0.0)
    return worst


def equalize_stage(path: Path, feeds: list[Feeds], alpha: float = DEFAULT_ALPHA) -> Equalization:
    """Equalizes the FP32 stage file at ``path`` in place (left as it was when nothing
    qualifies) and checks the result on the first batch of ``feeds``."""
    original = onnx.load(str(path))
    model = onnx.ModelProto()
    model.CopyFrom(original)
    result = equalize(model, feeds, alpha)
    if not result.pairs:
        return result
    # An identity up to float32 rounding (relu(x / s) * s = relu(x)): one batch shows a mistake.
    result.max_rel_error = max_rel_error(original, model, feeds[:1])
    if not result.max_rel_error <= TOLERANCE:
        raise EdgeRestoreError(f"channel equalization of '{path.name}' changed its outputs by "
                               f"{result.max_rel_error:.2e} of their range (> {TOLERANCE:g}); "
                               "export with --no-equalize")
    onnx.save(model, str(path))
    return result
