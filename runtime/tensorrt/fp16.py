"""An FP16 copy of a stage graph, for TensorRT >= 11 (strong typing only).

TensorRT 11 removed the FP16 builder flag: a network runs in the types its graph declares
(REFERENCE.md section 4), so an FP16 engine needs an FP16 graph. A bundle exports FP32
graphs; ``build --precision fp16`` casts them here, in memory, just before parsing (the
bundle and its manifest stay as exported; the engine's json records ``"cast": "fp16"``).

The cast is ONNX Runtime's float16 converter (``onnxruntime.transformers.float16``, shipped
in the onnxruntime wheel: the ``onnxruntime`` extra): weights and activations become
float16, with Casts at the graph's edges so inputs and outputs stay float32 -- what the
runtime feeds and reads for every precision. Its default block list is for ONNX Runtime's
kernels; TensorRT runs those ops in FP16, so the list here is ours: normalizations with
per-sample statistics stay FP32 (their sums of squares leave FP16's range on unnormalized
activations), behind Casts the converter inserts. The converter appends its Casts at the end
of the node list; the nodes are put back in topological order, as ONNX requires (TensorRT's
parser sorts them itself, :func:`.check.check_model` and onnx's checker do not).
"""

from __future__ import annotations

import copy

import onnx

from ..errors import EdgeRestoreError

KEEP_FP32 = ("InstanceNormalization", "LayerNormalization", "GroupNormalization")


def cast_to_fp16(model: onnx.ModelProto, stage: str) -> onnx.ModelProto:
    from ..optional import require

    # lazy: only TensorRT >= 11 builds need it (a TensorRT 11 machine is no Jetson: the extra installs there)
    float16 = require("onnxruntime.transformers.float16", f"an FP16 engine of stage '{stage}' on TensorRT >= 11",
                      "build --precision fp32 or int8")
    convert_float_to_float16 = float16.convert_float_to_float16

    try:
        cast = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(KEEP_FP32))
    except Exception as err:  # the converter raises plain ValueError/RuntimeError on graphs it cannot handle
        raise EdgeRestoreError(f"cannot cast stage '{stage}' to FP16 for TensorRT's strong typing "
                               f"({type(err).__name__}: {err}); build --precision fp32 or int8 instead") from None
    _sort_topologically(cast.graph)
    return cast


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so every node follows the producers of its inputs: rounds of the nodes
    whose inputs are all available, each round in the original order."""
    available = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {""}
    nodes = [copy.deepcopy(node) for node in graph.node]  # detached: the field is cleared below
    pending, ordered = list(range(len(nodes))), []
    while pending:
        ready = [i for i in pending if all(name in available for name in nodes[i].input)]
        if not ready:
            raise EdgeRestoreError(f"graph '{graph.name}' has a cycle or an undefined input after the FP16 cast")
        for i in ready:
            available.update(nodes[i].output)
        ordered += ready
        done = set(ready)
        pending = [i for i in pending if i not in done]
    graph.ClearField("node")
    graph.node.extend(nodes[i] for i in ordered)
