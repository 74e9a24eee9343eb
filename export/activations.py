"""The activation memory of a stage graph: what the runtime's memory budget is made of.

A backend holds a stage's intermediate tensors while it runs: at most the tensors alive at
once, in the graph's (topological) order. That peak, per pixel of the stage's first input,
goes into the manifest (``activation_bytes_per_pixel``), and the runtime sizes its batches
from it (runtime/budget.py) without reading the graph again.

Shapes come from ONNX shape inference at one probe size with a batch of 1: dynamic spatial
axes are set to it, so every size the runtime picks scales by its pixel count. A tensor is
alive from the node that makes it (graph inputs: from the start) to its last reader (graph
outputs: to the end); initializers are weights, not activations.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import shape_inference

# The probe size: large enough that per-call constants (a pathfinder's FC layer) vanish in
# the per-pixel figure, small enough for shape inference to be instant.
PROBE = 64


def activation_bytes_per_pixel(model: onnx.ModelProto, probe: int = PROBE) -> float:
    """Peak bytes of live activations per pixel of the first graph input (batch 1)."""
    model = _with_probe_shapes(model, probe)
    inferred = shape_inference.infer_shapes(model, strict_mode=False)
    graph = inferred.graph
    sizes = {v.name: _bytes(v) for v in [*graph.input, *graph.value_info, *graph.output]}
    weights = {i.name for i in graph.initializer}
    last_use: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            last_use[name] = index
    for output in graph.output:
        last_use[output.name] = len(graph.node)
    live = {i.name for i in graph.input if i.name not in weights}
    peak = current = sum(sizes.get(name, 0) for name in live)
    for index, node in enumerate(graph.node):
        for name in node.output:
            if name and name not in live:
                live.add(name)
                current += sizes.get(name, 0)
        peak = max(peak, current)
        for name in [n for n in live if last_use.get(n, -1) <= index]:
            live.discard(name)
            current -= sizes.get(name, 0)
    first = graph.input[0].type.tensor_type.shape.dim
    pixels = int(np.prod([d.dim_value for d in first[2:]])) if len(first) > 2 else probe * probe
    return float(peak) / max(pixels, 1)


def _with_probe_shapes(model: onnx.ModelProto, probe: int) -> onnx.ModelProto:
    """A copy whose graph inputs have batch 1 and ``probe`` for every other dynamic axis."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.value_info[:]  # stale dynamic shapes would mask the inferred ones
    for value in copy.graph.input:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if not dim.HasField("dim_value"):
                dim.Clear()
                dim.dim_value = 1 if axis == 0 else probe
    for value in copy.graph.output:
        value.type.tensor_type.ClearField("shape")
    return copy


def _bytes(value: onnx.ValueInfoProto) -> int:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return 0
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tensor.shape.dim]
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).itemsize if tensor.elem_type else 4
    return int(np.prod(dims)) * itemsize if dims else itemsize
