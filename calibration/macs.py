"""How much of a model's arithmetic runs in INT8: the MACs of each compute layer.

An INT8 bundle that keeps its heavy layers in FP32 is an FP32 bundle with extra steps, so
every INT8 report states the share of multiply-accumulates its INT8 layers carry. A layer's
MACs are its weight elements per output position (``policy.layer_weights``) times its output
positions (the compute ops are ``scales.COMPUTE_OPS``: Conv, Gemm, MatMul), read from ONNX shape inference at a probe input size: strides, pixel-unshuffle
and pooling change how many positions a layer computes, which weights alone do not show.

Each stage counts once, at the size of the first calibration input it saw (a routed model's
branches all count: the share describes the bundle, not one route; a stage that a loop runs
at several scales counts at one of them).
"""

from __future__ import annotations

import numpy as np
import onnx

from edgerestore.runtime.bundle import Bundle
from edgerestore.runtime.errors import EdgeRestoreError

from .policy import Layer

PROBE = 64  # spatial size given to dynamic axes; shares do not depend on it for conv networks
# Warn when the INT8 layers carry less than this share of the MACs.
WARN_SHARE = 0.5


InputShapes = dict[str, dict[str, tuple[int, ...]]]  # stage -> graph input -> shape


def layer_macs(bundle: Bundle, layers: list[Layer], inputs: InputShapes | None = None,
               probe: int = PROBE) -> dict[Layer, float]:
    """MACs per run of each layer's stage (batch 1) with its inputs shaped as ``inputs`` says
    (a stage's real inputs: several inputs of one stage may have different sizes, e.g. a
    recurrent state at a quarter of the image's), else ``probe`` for every unknown axis."""
    macs: dict[Layer, float] = {}
    for stage in dict.fromkeys(stage for stage, _ in layers):
        wanted = {node for s, node in layers if s == stage}
        model = onnx.load(str(bundle.stage_path(stage, "fp32")))
        graph = _with_concrete_inputs(model, probe, (inputs or {}).get(stage, {})).graph
        weights = {t.name: tuple(t.dims) for t in graph.initializer}
        shapes = {**weights, **{v.name: _dims(v) for v in (*graph.input, *graph.value_info, *graph.output)}}
        for node in graph.node:
            if node.name in wanted:
                macs[(stage, node.name)] = _node_macs(node, shapes, stage)
    return macs


def int8_mac_share(bundle: Bundle, layers: list[Layer], fp32_layers: list[Layer] | set[Layer],
                   inputs: InputShapes | None = None) -> float:
    """The share of the MACs of ``layers`` (every compute layer) that the INT8 ones carry."""
    macs = layer_macs(bundle, layers, inputs)
    total = sum(macs.values())
    kept = set(fp32_layers)
    return sum(v for layer, v in macs.items() if layer not in kept) / total if total else 0.0


def _with_concrete_inputs(model: onnx.ModelProto, probe: int, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A copy whose graph inputs have the given ``shapes`` (batch axis set to 1), others batch 1
    and ``probe`` for every other unknown axis; shape-inferred."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    initializers = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        given = shapes.get(value.name)
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if given is not None or not dim.HasField("dim_value") or dim.dim_value <= 0:
                size = 1 if axis == 0 else given[axis] if given is not None else probe
                dim.Clear()
                dim.dim_value = size
    return onnx.shape_inference.infer_shapes(model, strict_mode=False)


def _dims(value: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    shape = value.type.tensor_type.shape
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in shape.dim)
    return dims if dims and all(d > 0 for d in dims) else None


def _node_macs(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...] | None], stage: str) -> float:
    weight = shapes.get(node.input[1]) if len(node.input) > 1 else None
    out = shapes.get(node.output[0])
    if weight is None or out is None:
        raise EdgeRestoreError(f"stage '{stage}': cannot size '{node.name}' ({node.op_type}) for the INT8 MAC share; "
                               "its shapes are not inferable")
    per_position = float(np.prod(weight))
    if node.op_type == "Conv":  # weight (M, C/g, kh, kw): each output position takes all of it
        return per_position * float(np.prod(out[2:]))
    # Gemm / MatMul: weight (K, N); one row of the output per K x N
    return per_position * float(np.prod(out[:-1]))
