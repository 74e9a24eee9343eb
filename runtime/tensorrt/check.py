"""TensorRT compatibility check of a bundle's stage graphs, without TensorRT (onnx only).

Why it lives in ``runtime/tensorrt`` and not in ``export/``: it reads nothing but a bundle,
so it runs wherever a bundle goes -- in CI right after ``export`` (``edgerestore check``),
and on the Jetson, where ``edgerestore build --tensorrt`` runs it before handing anything to
TensorRT, so a bad graph fails with the stage and node named instead of a parser trace.

What it checks, per stage file (FP32 and, when present, FP16 and the INT8 Q/DQ graph), against
the floor every target shares, TensorRT 8.5 (:mod:`.ops` holds the data and its source):

* ops in TensorRT's ONNX operator table, their restrictions (Pad and Resize modes, constant
  weights/axes, 2-D/3-D convolutions and pools), the default-domain opset within range;
* no data-dependent shapes: ops whose output shape depends on values (NonZero, ...) and shape
  inputs (Reshape's shape, Slice's bounds, ...) computed from tensor values;
* engine profiles: every input axis except the batch is static, or is a tile H/W that the
  manifest's tile size pins. Dynamic H/W with no tile size to pin them is a warning on the
  GPU (a profile could still span a range, but the build has no range to give it) and an
  error with ``dla=True`` (DLA runs static shapes only);
* INT8 Q/DQ: all three inputs present (8.5 requires the zero point), int8 zero point 0
  (symmetric), positive constant scales, per-axis scales on weights only, and per-channel
  weights on the output-channel axis (axis 0 for Conv, 1 for ConvTranspose, the output axis
  of Gemm/MatMul) -- per-tensor Conv weights are refused: they cost restoration quality and
  are never what our quantizer means to write. int32 Q/DQ (ONNX Runtime's quantized biases)
  are refused: TensorRT's DequantizeLinear takes int8 (8.5 table; TensorRT 10 adds FP8/INT4,
  not INT32), and the parser fails on them ("only activation types allowed as input to this
  layer", onnx/onnx-tensorrt#850, microsoft/onnxruntime#14229).

Per TensorRT version (``versions``, default every named release: 8.5, 8.6, 10.3, 11), one
note per stage file and op that the parser imports as a plugin there (InstanceNormalization
on 8.x, :data:`.ops.PLUGIN_OPS`): not an error -- ``build`` and the TensorRT backend register
TensorRT's plugins, trtexec loads them -- but a runtime of one's own must call
``initLibNvInferPlugins``, and DLA runs no plugin layer.

int8 weights stored as initializers behind a DequantizeLinear (no Q) are accepted: the Q/DQ
graph is only ever built on TensorRT >= 10 (:mod:`.policy`), which parses them; on 8.x the
build uses the FP32 graph and the calibration cache, whose 8.x parser wants float weights
with a Q/DQ pair instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from ..bundle import Bundle
from ..errors import EdgeRestoreError
from . import ops
from .releases import TRT_RELEASES
from .signed import to_signed_int8

ERROR, WARNING, NOTE = "error", "warning", "note"
Version = tuple[int, int, int]
ALL_RELEASES: tuple[Version, ...] = tuple(sorted(TRT_RELEASES.values()))
_DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" | "warning" | "note"
    stage: str
    precision: str
    node: str  # "Conv_3 (Conv)", or "input 'image'" / "graph" for graph-level findings
    reason: str

    def line(self) -> str:
        return f"{self.severity}: {self.stage} [{self.precision}] {self.node}: {self.reason}"

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def check_bundle(bundle: Bundle, dla: bool = False, tile: int | None = None,
                 versions: tuple[Version, ...] = ALL_RELEASES) -> list[Finding]:
    """Findings for every stage file of ``bundle``. ``tile`` overrides the manifest's tile
    size as the pin for dynamic H/W (what ``build --tile`` would use); ``versions`` are the
    TensorRT releases the per-version notes are for."""
    pin = tile if tile is not None else bundle.tiling.get("tile")
    findings = []
    for stage, info in bundle.stages.items():
        for precision in sorted(info.files):
            path = bundle.stage_path(stage, precision)  # also verifies the checksum
            graph, unsigned = to_signed_int8(load_graph(path))  # what TensorRT's build parses (.signed)
            if unsigned:
                findings.append(Finding(NOTE, stage, precision, "graph",
                                        f"{unsigned} Q/DQ pairs on non-negative activations are unsigned (256 levels "
                                        "on ONNX Runtime and OpenVINO); TensorRT builds them as signed INT8 over the "
                                        "same range (128 levels)"))
            findings += check_model(graph, stage, precision, pin, dla, versions)
    return findings


def load_graph(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except Exception as err:  # protobuf raises DecodeError, onnx raises its own types
        raise EdgeRestoreError(f"cannot read ONNX file '{path}': {type(err).__name__}: {err}") from None


def check_model(model: onnx.ModelProto, stage: str = "stage", precision: str = "fp32", tile: int | None = None,
                dla: bool = False, versions: tuple[Version, ...] = ALL_RELEASES) -> list[Finding]:
    graph = _Graph(model.graph)
    found: list[tuple[str, str, str]] = []
    found += _opset(model)
    found += _operators(model.graph)
    found += _plugins(model.graph, versions, dla)
    for index, node in enumerate(model.graph.node):
        found += [(severity, _label(node, index), reason) for severity, reason in _restrictions(node, graph)]
    found += _shape_inputs(model.graph)
    found += _quantization(model.graph, graph)
    found += _input_dims(model.graph, graph, tile, dla)
    return [Finding(severity, stage, precision, node, reason) for severity, node, reason in found]


# -- graph helpers ----------------------------------------------------------------------
class _Graph:
    """Constants and producers of one graph (the top level; subgraphs only get op checks)."""

    def __init__(self, graph: onnx.GraphProto):
        self.values: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        for node in graph.node:
            for name in node.output:
                self.producer[name] = node
            if node.op_type == "Constant":
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                if value is not None:
                    self.values[node.output[0]] = value

    def constant(self, name: str) -> np.ndarray | None:
        tensor = self.values.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def is_constant(self, name: str) -> bool:
        return name in self.values

    def is_weight(self, name: str) -> bool:
        """A constant, or a DequantizeLinear of one (Q/DQ graphs keep weights quantized)."""
        return self.is_constant(name) or self.dequantized_weight(name) is not None

    def dequantized_weight(self, name: str) -> tuple[onnx.NodeProto, tuple[int, ...]] | None:
        """(the DequantizeLinear, weight shape) when ``name`` is DQ(const) or DQ(Q(const))."""
        dq = self.producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            return None
        source = dq.input[0]
        q = self.producer.get(source)
        if q is not None and q.op_type == "QuantizeLinear":
            source = q.input[0]
        tensor = self.values.get(source)
        return None if tensor is None else (dq, tuple(tensor.dims))


def _label(node: onnx.NodeProto, index: int) -> str:
    return f"{node.name or f'#{index}'} ({node.op_type})"


def _attr(node: onnx.NodeProto, name: str, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            value = onnx.helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _walk(graph: onnx.GraphProto) -> Iterator[tuple[int, onnx.NodeProto]]:
    """Nodes of a graph and of the subgraphs of its If/Loop/Scan nodes."""
    for index, node in enumerate(graph.node):
        yield index, node
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _walk(sub)


# -- the checks ---------------------------------------------------------------------------
def _opset(model: onnx.ModelProto) -> list[tuple[str, str, str]]:
    for entry in model.opset_import:
        if entry.domain in _DEFAULT_DOMAINS and not ops.MIN_OPSET <= entry.version <= ops.MAX_OPSET:
            return [(ERROR, "graph", f"opset {entry.version} is outside the range TensorRT 8.5 parses "
                                     f"({ops.MIN_OPSET}..{ops.MAX_OPSET}); export with opset {ops.MAX_OPSET}")]
    return []


def _operators(graph: onnx.GraphProto) -> list[tuple[str, str, str]]:
    found = []
    for index, node in _walk(graph):
        label, op = _label(node, index), node.op_type
        if node.domain not in _DEFAULT_DOMAINS:
            found.append((ERROR, label, f"op from domain '{node.domain}' is not an ONNX op: TensorRT would need a "
                                        "plugin for it"))
        elif op in ops.DATA_DEPENDENT_SHAPE:
            found.append((ERROR, label, f"{op} has a data-dependent output shape: no static engine profile or "
                                        "tile batch can hold it"))
        elif op in ops.UNSUPPORTED:
            found.append((ERROR, label, f"{op} is not supported by TensorRT's ONNX parser (8.5 operator table)"))
        elif op not in ops.SUPPORTED:
            found.append((ERROR, label, f"{op} is not in TensorRT's ONNX operator table (8.5)"))
    return found


def _plugins(graph: onnx.GraphProto, versions: tuple[Version, ...], dla: bool) -> list[tuple[str, str, str]]:
    counts: dict[str, int] = {}
    for _, node in _walk(graph):
        if node.domain in _DEFAULT_DOMAINS and node.op_type in ops.PLUGIN_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    found = []
    for op, count in counts.items():
        on = [v for v in sorted(versions) if ops.plugin_for(op, v)]
        if not on:
            continue
        names = ", ".join(".".join(map(str, v)) for v in on)
        where = "DLA cannot run a plugin layer: it runs on the GPU (GPU fallback); " if dla else ""
        found.append((NOTE, "graph", f"{count} {op} node{'s' * (count > 1)} imported as the TensorRT plugin "
                                     f"{ops.plugin_for(op, on[0])} on TensorRT {names}: {where}`build` and "
                                     "`--backend tensorrt` register TensorRT's plugins and trtexec loads them; a "
                                     "runtime of your own must call initLibNvInferPlugins before parsing and before "
                                     "deserializing"))
    return found


def _restrictions(node: onnx.NodeProto, graph: _Graph) -> Iterator[tuple[str, str]]:
    op = node.op_type
    for slot in ops.CONSTANT_INPUTS.get(op, ()):
        if slot < len(node.input) and node.input[slot] and not graph.is_weight(node.input[slot]):
            what = "weights" if op in ops.WEIGHT_AXIS else f"input {slot} ('{node.input[slot]}')"
            yield ERROR, f"{op} {what} must be a constant (initializer) for TensorRT"
    if op == "Pad":
        mode = _attr(node, "mode", "constant")
        if mode not in ops.PAD_MODES:
            yield ERROR, f"Pad mode '{mode}' is not supported (TensorRT pads {', '.join(sorted(ops.PAD_MODES))})"
    elif op == "Resize":
        yield from _resize(node)
    elif op in ("Conv", "ConvTranspose"):
        weight = graph.values.get(node.input[1]) if len(node.input) > 1 else None
        shape = tuple(weight.dims) if weight is not None else (graph.dequantized_weight(node.input[1]) or (None, None))[1]
        if shape is not None and len(shape) not in ops.SPATIAL_RANKS:
            yield ERROR, f"{op} with {len(shape) - 2}-D kernels: TensorRT runs 2-D and 3-D convolutions only"
    elif op in ("MaxPool", "AveragePool", "LpPool"):
        kernel = _attr(node, "kernel_shape", [])
        if len(kernel) + 2 not in ops.SPATIAL_RANKS:
            yield ERROR, f"{op} over {len(kernel)} axes: TensorRT pools 2-D and 3-D only"
        if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
            yield ERROR, "MaxPool's Indices output is not supported by TensorRT"


def _resize(node: onnx.NodeProto) -> Iterator[tuple[str, str]]:
    mode = _attr(node, "mode", "nearest")
    transform = _attr(node, "coordinate_transformation_mode", "half_pixel")
    nearest = _attr(node, "nearest_mode", "round_prefer_floor")
    if mode not in ops.RESIZE_MODES:
        yield ERROR, f"Resize mode '{mode}' is not supported (TensorRT: {', '.join(sorted(ops.RESIZE_MODES))})"
    if transform not in ops.RESIZE_COORDINATE_MODES:
        yield ERROR, (f"Resize coordinate_transformation_mode '{transform}' is not supported "
                      f"(TensorRT: {', '.join(sorted(ops.RESIZE_COORDINATE_MODES))})")
    if mode == "nearest" and nearest not in ops.RESIZE_NEAREST_MODES:
        yield ERROR, f"Resize nearest_mode '{nearest}' is not supported"
    if transform == "tf_half_pixel_for_nn" and nearest != "round_prefer_floor":
        yield ERROR, "Resize tf_half_pixel_for_nn works with nearest_mode round_prefer_floor only"


# Taint levels of a tensor for shape inputs: known at build time, or only at run time.
_CONST, _SHAPE, _DATA = 0, 1, 2


def _shape_inputs(graph: onnx.GraphProto) -> list[tuple[str, str, str]]:
    """Shape inputs must come from constants and Shape/Size of tensors, never from values."""
    level = {t.name: _CONST for t in graph.initializer}
    level.update({i.name: _DATA for i in graph.input if i.name not in level})
    found = []
    for index, node in enumerate(graph.node):
        for slot in ops.SHAPE_INPUTS.get(node.op_type, ()):
            name = node.input[slot] if slot < len(node.input) else ""
            if name and level.get(name, _CONST) == _DATA:
                found.append((ERROR, _label(node, index), f"shape input '{name}' is computed from tensor values: a "
                                                          "data-dependent shape TensorRT cannot fix at build time"))
        if node.op_type in ("Shape", "Size"):
            out = _SHAPE
        elif node.op_type == "Constant":
            out = _CONST
        else:
            out = max((level.get(name, _CONST) for name in node.input if name), default=_CONST)
        for name in node.output:
            level[name] = out
    return found


def _quantization(graph: onnx.GraphProto, g: _Graph) -> list[tuple[str, str, str]]:
    found = []
    for index, node in enumerate(graph.node):
        label = _label(node, index)
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            found += [(ERROR, label, reason) for reason in _qdq_node(node, g)]
        elif node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(node.input) > 1:
            found += [(ERROR, label, reason) for reason in _weight_scales(node, g)]
    return found


def _qdq_node(node: onnx.NodeProto, g: _Graph) -> Iterator[str]:
    if len(node.input) < 3 or not node.input[2]:
        yield "no zero-point input: TensorRT 8.5 needs all three Q/DQ inputs (an int8 zero point of 0)"
    else:
        zero = g.constant(node.input[2])
        if zero is None:
            yield "zero point must be a constant"
        elif zero.dtype == np.int32:
            yield ("int32 Q/DQ (a quantized bias): TensorRT's Q/DQ take int8 only and quantize biases themselves "
                   "(ONNX Runtime's quantize_static: extra_options QuantizeBias=False)")
        elif zero.dtype != np.int8:
            yield f"zero point of type {zero.dtype}: TensorRT quantizes to signed int8 only (symmetric, zero point 0)"
        elif np.any(zero != 0):
            yield f"zero point {zero.ravel()[np.flatnonzero(zero)[0]]} != 0: asymmetric quantization; TensorRT " \
                  "supports symmetric Q/DQ only"
    scale = g.constant(node.input[1])
    if scale is None:
        yield "scale must be a constant"
        return
    if not np.all(scale > 0):
        yield "scales must be positive"
    if scale.size > 1:
        data = node.input[0]
        on_weights = g.is_constant(data) or (g.producer.get(data) is not None
                                             and g.producer[data].op_type == "QuantizeLinear"
                                             and g.is_constant(g.producer[data].input[0]))
        if not on_weights:
            yield "per-axis scales on an activation: TensorRT quantizes activations per tensor only"


def _expected_weight_axis(node: onnx.NodeProto, rank: int) -> int:
    if node.op_type in ops.WEIGHT_AXIS:
        return ops.WEIGHT_AXIS[node.op_type]
    if node.op_type == "Gemm":
        return 0 if _attr(node, "transB", 0) else 1
    return rank - 1  # MatMul: x @ W, W is (in, out)


def _weight_scales(node: onnx.NodeProto, g: _Graph) -> Iterator[str]:
    found = g.dequantized_weight(node.input[1])
    if found is None:
        return
    dq, shape = found
    scale = g.constant(dq.input[1])
    if scale is None:
        return  # reported on the DequantizeLinear itself
    expected = _expected_weight_axis(node, len(shape))
    if scale.size == 1:
        if node.op_type in ops.WEIGHT_AXIS and shape[expected] > 1:  # one output channel: the same thing
            yield (f"per-tensor weight scale: {node.op_type} weights need per-channel scales on axis {expected} "
                   "(one per output channel)")
        return
    axis = _attr(dq, "axis", 1)
    axis = axis + len(shape) if axis < 0 else axis
    if axis != expected:
        yield f"weight scales on axis {axis}: TensorRT expects per-channel axis {expected} for {node.op_type} weights"
    elif scale.size != shape[axis]:
        yield f"{scale.size} weight scales for {shape[axis]} output channels"


def _input_dims(graph: onnx.GraphProto, g: _Graph, tile: int | None, dla: bool) -> list[tuple[str, str, str]]:
    found = []
    for value in graph.input:
        if g.is_constant(value.name):
            continue  # an initializer listed as input (old exporters)
        dims = value.type.tensor_type.shape.dim
        label = f"input '{value.name}'"
        dynamic = {axis: dim.dim_param or "?" for axis, dim in enumerate(dims)
                   if axis > 0 and not dim.HasField("dim_value")}  # the batch gets the profile's range
        spatial = [name for axis, name in dynamic.items() if len(dims) == 4 and axis in (2, 3)]
        if spatial and not tile:
            severity = ERROR if dla else WARNING
            why = "DLA runs static shapes only" if dla else "the build has no spatial range for the profile"
            found.append((severity, label, f"dynamic H/W ({', '.join(spatial)}) and the manifest has no tile size to "
                                           f"pin them: {why}"))
        for axis, name in dynamic.items():
            if not (len(dims) == 4 and axis in (2, 3)):
                found.append((ERROR, label, f"axis {axis} ('{name}') is dynamic: only the batch and a tile's H/W may "
                                            "be"))
    return found
