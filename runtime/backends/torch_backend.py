"""PyTorch reference backend: interprets the stage's ONNX graph with torch ops.

It exists to check the other backends against PyTorch numerics without importing
any model class (the runtime reads only bundles). The converter libraries that do
this need torchvision, which has no CPU-only wheel, so the op set we export is
interpreted here directly; an op outside it is a clear error, not a wrong result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from ..errors import EdgeRestoreError

# Stage calls take their activations from one pool (freed between calls): the memory budget
# counts the largest call, not the sum over stages (runtime/budget.py).
SHARES_ACTIVATIONS = True


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _conv(x, w, b=None, *, pads=(0, 0, 0, 0), strides=(1, 1), dilations=(1, 1), group=1, **_):
    top, left, bottom, right = pads
    if (top, left) != (bottom, right):
        x = F.pad(x, (left, right, top, bottom))
        top = left = 0
    return F.conv2d(x, w, b, stride=tuple(strides), padding=(top, left), dilation=tuple(dilations), groups=group)


def _gemm(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0, **_):
    a = a.T if transA else a
    b = b.T if transB else b
    y = alpha * (a @ b)
    return y if c is None else y + beta * c


def _flatten(x, *, axis=1, **_):
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


def _reshape(x, shape, **_):
    shape = [x.shape[i] if int(s) == 0 else int(s) for i, s in enumerate(shape.tolist())]
    return x.reshape(shape)


def _split(x, split=None, *, axis=0, num_outputs=None, **kw):
    sizes = split.tolist() if split is not None else kw.get("split")
    if sizes is None:
        return torch.chunk(x, num_outputs, dim=axis)
    return torch.split(x, [int(s) for s in sizes], dim=axis)


def _slice(x, starts, ends, axes=None, steps=None, **_):
    index = [slice(None)] * x.dim()
    axes = axes.tolist() if axes is not None else list(range(len(starts)))
    steps = steps.tolist() if steps is not None else [1] * len(starts)
    for s, e, a, st in zip(starts.tolist(), ends.tolist(), axes, steps):
        index[a] = slice(int(s), int(min(e, 2**62)), int(st))
    return x[tuple(index)]


def _pad(x, pads, value=None, axes=None, *, mode="constant", **_):
    if mode != "constant" or axes is not None:
        raise EdgeRestoreError(f"torch backend supports only constant Pad over all axes, got mode={mode}")
    pads = [int(p) for p in pads.tolist()]
    n = len(pads) // 2
    # ONNX: [x1_begin, x2_begin, ..., x1_end, ...]; torch: last axis first, (begin, end) pairs
    torch_pads = [v for axis in reversed(range(n)) for v in (pads[axis], pads[axis + n])]
    return F.pad(x, torch_pads, value=float(value) if value is not None else 0.0)


def _conv_transpose(x, w, b=None, *, pads=(0, 0, 0, 0), strides=(1, 1), dilations=(1, 1), group=1,
                    output_padding=(0, 0), **_):
    top, left, bottom, right = pads
    if (top, left) != (bottom, right):
        raise EdgeRestoreError(f"torch backend supports only symmetric ConvTranspose pads, got {list(pads)}")
    return F.conv_transpose2d(x, w, b, stride=tuple(strides), padding=(top, left), output_padding=tuple(output_padding),
                              groups=group, dilation=tuple(dilations))


def _resize(x, roi=None, scales=None, sizes=None, *, mode="nearest", coordinate_transformation_mode="half_pixel",
            nearest_mode="round_prefer_floor", **_):
    # PyTorch's "nearest" is ONNX nearest with asymmetric coordinates and floor rounding,
    # which is what F.interpolate(mode="nearest") exports as.
    mode, coordinate_transformation_mode, nearest_mode = (
        v.decode() if isinstance(v, bytes) else v for v in (mode, coordinate_transformation_mode, nearest_mode))
    if mode != "nearest" or coordinate_transformation_mode != "asymmetric" or nearest_mode != "floor":
        raise EdgeRestoreError(f"torch backend supports only nearest/asymmetric/floor Resize, got {mode}/"
                               f"{coordinate_transformation_mode}/{nearest_mode}")
    if sizes is not None and sizes.numel():
        return F.interpolate(x, size=[int(s) for s in sizes.tolist()[2:]], mode="nearest")
    return F.interpolate(x, scale_factor=[float(s) for s in scales.tolist()[2:]], mode="nearest")


def _unsqueeze(x, axes=None, **kw):
    for axis in sorted(int(a) for a in (axes.tolist() if axes is not None else kw["axes"])):
        x = x.unsqueeze(axis)
    return x


_OPS: dict[str, Callable[..., Any]] = {
    "Conv": _conv,
    "Relu": lambda x, **_: F.relu(x),
    "LeakyRelu": lambda x, *, alpha=0.01, **_: F.leaky_relu(x, alpha),
    "Sigmoid": lambda x, **_: torch.sigmoid(x),
    "Tanh": lambda x, **_: torch.tanh(x),
    "Add": lambda a, b, **_: a + b,
    "Sub": lambda a, b, **_: a - b,
    "Mul": lambda a, b, **_: a * b,
    "Div": lambda a, b, **_: a / b,
    "MatMul": lambda a, b, **_: a @ b,
    "Gemm": _gemm,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Concat": lambda *xs, axis, **_: torch.cat(xs, dim=axis),
    "Split": _split,
    "Slice": _slice,
    "Softmax": lambda x, *, axis=-1, **_: torch.softmax(x, dim=axis),
    "Identity": lambda x, **_: x,
    "Transpose": lambda x, *, perm, **_: x.permute(*perm),
    "Pad": _pad,
    "Clip": lambda x, lo=None, hi=None, **_: torch.clamp(x, lo, hi),
    "ConvTranspose": _conv_transpose,
    "Resize": _resize,
    "InstanceNormalization": lambda x, scale, b, *, epsilon=1e-5, **_: F.instance_norm(x, weight=scale, bias=b,
                                                                                         eps=epsilon),
    "BatchNormalization": lambda x, scale, b, mean, var, *, epsilon=1e-5, **_: F.batch_norm(
        x, mean, var, scale, b, False, 0.0, epsilon),
    "Unsqueeze": _unsqueeze,
}


class TorchStage:
    def __init__(self, path: Path):
        try:
            self.graph = onnx.load(str(path)).graph
        except Exception as err:
            raise EdgeRestoreError(f"torch backend cannot read '{path}': {type(err).__name__}: {err}") from None
        unknown = sorted({n.op_type for n in self.graph.node if n.op_type not in _OPS and n.op_type != "Constant"})
        if unknown:
            raise EdgeRestoreError(f"torch backend does not implement ONNX op(s) {', '.join(unknown)} in '{path}'; "
                                   "use --backend onnxruntime or openvino")
        self.weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in self.graph.initializer}
        self.input_names = [i.name for i in self.graph.input if i.name not in self.weights]
        self.output_names = [o.name for o in self.graph.output]

    @torch.inference_mode()
    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values: dict[str, Any] = dict(self.weights)
        values.update({name: torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in self.input_names})
        for node in self.graph.node:
            attrs = _attrs(node)
            if node.op_type == "Constant":
                values[node.output[0]] = torch.from_numpy(numpy_helper.to_array(attrs["value"]).copy())
                continue
            args = [values[name] if name else None for name in node.input]
            result = _OPS[node.op_type](*args, **attrs)
            results = result if isinstance(result, (tuple, list)) else (result,)
            values.update(zip(node.output, results))
        return {name: values[name].numpy() for name in self.output_names}


def load(path: Path, threads: int | None = None) -> TorchStage:
    return TorchStage(path)
