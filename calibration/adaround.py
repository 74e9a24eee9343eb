"""Learned weight rounding (AdaRound: Nagel et al., "Up or Down? Adaptive Rounding for
Post-Training Quantization", ICML 2020), layer by layer on cached inputs.

Rounding each weight to its nearest grid point minimises the weight error, not the error of
the layer's output: a layer's rounding errors add up over its inputs, and rounding some
weights the other way can cancel them. AdaRound learns, per weight, whether to round up or
down, minimising ``|| conv(q(x), W_q) - conv(x, W) ||^2`` over calibration inputs ``x``
(``q``: the INT8 grid of the layer's input), with a regulariser that drives every soft
rounding to 0 or 1.

For a convolution that error is a quadratic form in the weights: with ``X`` the input
patches (one row per output position), ``Xq`` the same quantized,
``E(W') = tr(W' Gqq W'^T) - 2 tr(W' Gqx W^T) + tr(W Gxx W^T)`` where ``Gqq = Xq^T Xq``, etc.
So the cache is three Gram matrices per layer (K x K, K = in-channels x kernel area),
accumulated once over all calibration tiles; the optimisation then costs
the same per step whatever the number of patches. Each layer's inputs are the FP32 model's
(layers are fitted independently, so the result does not depend on which layers the
sensitivity search keeps in FP32). A quarter of the patches is held out: a layer whose
learned rounding is not better than nearest rounding there keeps nearest rounding.

The result is a set of FP32 weights already on the grid (``scale * integer``, the scale
being the one ONNX Runtime's per-channel symmetric quantizer computes from them), so the
quantizer writes exactly the learned integers (calibration/quantize.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from .bias_correction import Feeds, session_with_outputs
from .quantize import SIGNED_LEVELS, UNSIGNED_LEVELS, nonnegative_tensors

# Rectified sigmoid stretch (the paper's zeta, gamma) and regulariser schedule.
ZETA, GAMMA = 1.1, -0.1
# The error is normalised by nearest rounding's and the regulariser averaged over the weights,
# so one setting fits every layer. On tests/test_adaround.py's chain (held-out error, learned
# / nearest, for its three convolutions): regulariser 0.01 -> 1.11, 1.30, 1.16 (the soft
# roundings never settle and thresholding them loses); 0.1 -> 0.89, 1.14, 0.94; 1 -> 0.51,
# 0.66, 0.79; 3 -> 0.48, 0.62, 0.75; 10 -> 0.48, 0.61, 0.77 (1,000 steps; 2,000 change < 0.02).
# Steps, on seven of DnCNN-S's middle convolutions (same ratio): 500 -> 0.51-0.77, 1,000 ->
# 0.35-0.58, 2,000 -> 0.19-0.30, at about 2 s per 1,000 steps and layer here. 1,000 keeps the
# export within its time; the rest of DnCNN's INT8 loss is in the activations (README).
ITERATIONS = 1000
WARMUP = 0.2  # share of iterations without the regulariser
BETA = (20.0, 2.0)  # annealed from the first to the second
REGULARIZATION = 3.0  # weight of the rounding regulariser against the normalised error
LEARNING_RATE = 1e-2
PATCHES = 16384  # input patches per layer (sampled evenly over the cached tiles)
ROWS_PER_RUN = 4  # tiles per ONNX Runtime call while caching (bounds memory: every layer's input at once)


@dataclass
class LayerResult:
    node: str
    nearest: float  # held-out output MSE with nearest rounding
    learned: float  # the same with the learned rounding
    kept: bool  # whether the learned rounding is used

    def to_json(self) -> dict:
        return {"nearest_mse": self.nearest, "adaround_mse": self.learned, "used": self.kept}


@dataclass
class StageRounding:
    weights: dict[str, np.ndarray]  # conv node -> its weights on the grid (learned rounding)
    layers: list[LayerResult]

    def to_json(self) -> dict:
        return {layer.node: layer.to_json() for layer in self.layers}


def eligible(model: onnx.ModelProto, amax: dict[str, float]) -> list[onnx.NodeProto]:
    """Convolutions AdaRound handles: constant 4-D weights, one group, an input the Q/DQ
    graph quantizes (a calibrated range)."""
    constants = {t.name: t for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type != "Conv" or node.input[0] not in amax or node.input[1] not in constants:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("group", 1) == 1 and len(constants[node.input[1]].dims) == 4:
            found.append(node)
    return found


def grid_scale(weight: np.ndarray, qmax: int) -> np.ndarray:
    """Per-output-channel scale of a symmetric grid [-qmax, qmax], as ONNX Runtime's quantizer
    computes it (float32: absmax * 2 / (2 qmax)); 1 for an all-zero channel."""
    absmax = np.abs(weight.reshape(len(weight), -1)).max(1).astype(np.float32)
    scale = (absmax * np.float32(2) / np.float32(2 * qmax)).astype(np.float32)
    return np.where(scale > 0, scale, np.float32(1)).astype(np.float32)


def round_stage(fp32: Path, feeds: list[Feeds], amax: dict[str, float], qmax: int,
                progress: Callable[[str, int, int], None] = lambda *_: None, seed: int = 0,
                unsigned: bool = True) -> StageRounding:
    """Fits every eligible convolution of the stage file ``fp32``; ``seed`` picks the patches;
    ``unsigned``: non-negative inputs are quantized on the UINT8 grid (calibration/quantize.py)."""
    model = onnx.load(str(fp32))
    nodes = eligible(model, amax)
    if not nodes or not feeds:
        return StageRounding({}, [])
    progress("AdaRound: caching layer inputs", 0, len(nodes))
    nonnegative = nonnegative_tensors(model) if unsigned else set()
    grams = _cache(model, nodes, feeds, amax, nonnegative, np.random.default_rng(seed))
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weights, layers = {}, []
    for i, node in enumerate(nodes):
        progress(f"AdaRound {node.name}", i, len(nodes))
        weight = constants[node.input[1]].astype(np.float32)
        rounded, result = _fit(node.name, weight, grams[node.name], qmax)
        layers.append(result)
        if result.kept:
            weights[node.name] = rounded
    return StageRounding(weights, layers)


class _Grams:
    """Gram matrices of one layer's patches, fitting and held-out halves."""

    def __init__(self, size: int):
        self.fit = [np.zeros((size, size)) for _ in range(3)]  # qq, qx, xx
        self.check = [np.zeros((size, size)) for _ in range(3)]
        self.check_rows = 0

    def add(self, x: np.ndarray, xq: np.ndarray, held: np.ndarray) -> None:
        self.check_rows += int(held.sum())
        for target, rows in ((self.fit, ~held), (self.check, held)):
            # float32 products of a few thousand rows, summed in float64 across chunks
            a, b = xq[rows], x[rows]
            target[0] += a.T @ a
            target[1] += a.T @ b
            target[2] += b.T @ b


def input_grid(amax: float, unsigned: bool) -> tuple[np.float32, int, int]:
    """(step, lowest integer, highest integer) of a layer input's Q/DQ grid."""
    levels = UNSIGNED_LEVELS if unsigned else SIGNED_LEVELS
    return np.float32(amax / levels), (0 if unsigned else -levels), levels


def _cache(model, nodes, feeds, amax, nonnegative, rng) -> dict[str, _Grams]:
    inputs = list(dict.fromkeys(node.input[0] for node in nodes))
    session = session_with_outputs(model, inputs)
    rows = sum(len(next(iter(batch.values()))) for batch in feeds)
    per_row = max(1, PATCHES // rows)
    grams: dict[str, _Grams] = {}
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    for batch in feeds:
        count = len(next(iter(batch.values())))
        for start in range(0, count, ROWS_PER_RUN):
            chunk = {name: value[start:start + ROWS_PER_RUN] for name, value in batch.items()}
            values = dict(zip(inputs, session.run(inputs, chunk)))
            for node in nodes:
                sample = _patches(values[node.input[0]], node, shapes[node.input[1]][2:], per_row, rng)
                step, low, high = input_grid(amax[node.input[0]], node.input[0] in nonnegative)
                quantized = np.clip(np.round(sample / step), low, high).astype(np.float32) * step
                held = rng.random(len(sample)) < 0.25
                grams.setdefault(node.name, _Grams(sample.shape[1])).add(sample, quantized, held)
    return grams


def _patches(x: np.ndarray, node: onnx.NodeProto, kernel: tuple[int, int], per_row: int,
             rng: np.random.Generator) -> np.ndarray:
    """``per_row`` random input patches per row of ``x`` (N, C, H, W), one per output position
    of ``node``, flattened as its weights are (C, kh, kw)."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    top, left, bottom, right = attrs.get("pads", (0, 0, 0, 0))
    sy, sx = attrs.get("strides", (1, 1))
    dy, dx = attrs.get("dilations", (1, 1))
    kh, kw = kernel
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    n, c, h, w = padded.shape
    out_h, out_w = (h - dy * (kh - 1) - 1) // sy + 1, (w - dx * (kw - 1) - 1) // sx + 1
    count = min(per_row, out_h * out_w)
    rows = np.repeat(np.arange(n), count)
    positions = np.concatenate([rng.choice(out_h * out_w, count, replace=False) for _ in range(n)])
    ys, xs = positions // out_w * sy, positions % out_w * sx
    taps = [padded[rows, :, ys + i * dy, xs + j * dx] for i in range(kh) for j in range(kw)]  # each (P, C)
    return np.stack(taps, axis=2).reshape(len(rows), c * kh * kw)


def _error(w_soft, w, grams):
    """Sum of squared output errors over the patches the Gram matrices were built from."""
    qq, qx, xx = grams
    return (w_soft @ qq * w_soft).sum() - 2 * (w_soft @ qx * w).sum() + (w @ xx * w).sum()


def _fit(name: str, weight: np.ndarray, grams: _Grams, qmax: int) -> tuple[np.ndarray, LayerResult]:
    import torch

    shape = weight.shape
    scale = grid_scale(weight, qmax)[:, None]
    w = torch.from_numpy(weight.reshape(len(weight), -1).astype(np.float64))
    s = torch.from_numpy(scale.astype(np.float64))
    fit = [torch.from_numpy(g) for g in grams.fit]
    check = [torch.from_numpy(g) for g in grams.check]
    floor = torch.floor(w / s)
    nearest = torch.clamp(torch.round(w / s), -qmax, qmax) * s
    e_nearest = float(_error(nearest, w, fit))
    if e_nearest <= 0:
        return weight, LayerResult(name, 0.0, 0.0, False)
    rest = (w / s - floor).clamp(1e-4, 1 - 1e-4)
    v = (-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)).float()
    qq, s32, floor32 = fit[0].float(), s.float(), floor.float()
    # E(W') = tr(W' Gqq W'^T) - 2 <W', W Gqx^T> + const: the linear term's matrix once, not per
    # step. The gradient is written out (one K x K product per step; autograd's graph costs
    # more than the arithmetic on these small matrices).
    linear = (w @ fit[1].T).float()
    v.grad = torch.zeros_like(v)
    optimizer = torch.optim.Adam([v], lr=LEARNING_RATE)
    warmup = int(WARMUP * ITERATIONS)
    with torch.no_grad():
        for step in range(ITERATIONS):
            sig = torch.sigmoid(v)
            stretched = sig * (ZETA - GAMMA) + GAMMA
            h = stretched.clamp(0, 1)
            unclipped = floor32 + h
            soft = unclipped.clamp(-qmax, qmax) * s32
            d_soft = 2 * (soft @ qq - linear) / e_nearest  # d(E / E_nearest) / d soft
            d_h = d_soft * s32 * ((unclipped >= -qmax) & (unclipped <= qmax))
            if step >= warmup:
                beta = BETA[0] + (BETA[1] - BETA[0]) * (step - warmup) / max(1, ITERATIONS - warmup)
                centred = 2 * h - 1
                # d/dh of REGULARIZATION * mean(1 - |2h - 1|^beta)
                d_h = d_h - REGULARIZATION / h.numel() * beta * centred.abs().pow(beta - 1) * centred.sign() * 2
            v.grad.copy_(d_h * (ZETA - GAMMA) * sig * (1 - sig) * ((stretched > 0) & (stretched < 1)))
            optimizer.step()
    integers = torch.clamp(floor + (v.detach() >= 0).double(), -qmax, qmax)
    # Each channel's largest weight stays at the end of the grid: the quantizer derives the
    # scale from the largest weight it is given, so the scale stays the one fitted here.
    top = (w / s).abs().argmax(1, keepdim=True)
    integers.scatter_(1, top, torch.sign(w.gather(1, top)) * qmax)
    learned = integers * s
    values = max(1, grams.check_rows) * len(weight)  # MSE per output value on the held-out patches
    held_nearest = float(_error(nearest, w, check)) / values
    held_learned = float(_error(learned, w, check)) / values
    kept = held_learned < held_nearest
    # on the grid: scale * integer, in float32 (the quantizer recovers the integers exactly)
    on_grid = (integers.float() * s32).numpy().astype(np.float32).reshape(shape)
    return on_grid, LayerResult(name, held_nearest, held_learned, kept)
