"""ONNX Runtime, CPU execution provider.

A plan has many stages (15 for Path-Restore), each an InferenceSession. Left to itself each
session keeps its own memory arena at the peak of its largest batch; here they share one
arena, registered with ONNX Runtime's environment and used by every stage session through
``session.use_env_allocators``, so memory is that of the largest stage call, not the sum
over stages. Thread pools stay per session, with spinning off (an idle pool sleeps):
ONNX Runtime's global pools would require every session of the process to opt in,
including those its quantization tool creates during ``export --int8``.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..errors import EdgeRestoreError

# Stage calls take their activations from one pool (freed between calls): the memory budget
# counts the largest call, not the sum over stages (runtime/budget.py).
SHARES_ACTIVATIONS = True
# The shared arena held 490 MB at the peak of a 1280x720 Path-Restore frame run in batches of
# 32 tiles (3.05 MB of live activations each by the manifest's estimate): 5x, arena slack
# between stages of different shapes included.
ACTIVATION_FACTOR = 5.0


# A plan alternates between many sessions (15 stages for Path-Restore), each with its own
# thread pool: threads left spinning after one stage's call steal the cores from the next
# stage's call. Measured on a 2-core machine: 0.10 s vs 0.011 s per 9-tile block call.
SPINNING = "0"


_arena_registered = False
_arena_lock = threading.Lock()


def _share_arena() -> None:
    """The arena every stage session allocates from, registered once per process."""
    global _arena_registered
    with _arena_lock:
        if not _arena_registered:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            # arena_extend_strategy 1 (kSameAsRequested): grow by what a call needs, not by doubling
            ort.create_and_register_allocator(info, ort.OrtArenaCfg({"arena_extend_strategy": 1}))
            _arena_registered = True


class OrtStage:
    """``exact_qdq``: keep every QuantizeLinear / DequantizeLinear as its own float op around
    float convolutions (the Q/DQ graph's semantics; qdq_reference_backend.py) instead of
    fusing them into ONNX Runtime's integer kernels. Every other optimization stays on."""

    def __init__(self, path: Path, threads: int | None = None, exact_qdq: bool = False):
        _share_arena()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if exact_qdq:
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        if threads:
            options.intra_op_num_threads = int(threads)
        options.add_session_config_entry("session.use_env_allocators", "1")
        options.add_session_config_entry("session.intra_op.allow_spinning", SPINNING)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # ORT raises several private exception types for bad files
            raise EdgeRestoreError(f"onnxruntime cannot load '{path}': {_first_line(err)}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outputs))


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__


def load(path: Path, threads: int | None = None) -> OrtStage:
    return OrtStage(path, threads)


# Integer kernels ONNX Runtime's CPU provider fuses Q/DQ graphs into: a session computing the
# exact Q/DQ arithmetic runs none of them (tests/test_qdq_reference.py profiles for them).
INTEGER_KERNELS = frozenset({"QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul", "QGemm",
                             "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearLeakyRelu", "QLinearSigmoid",
                             "QLinearGlobalAveragePool", "QLinearAveragePool", "DynamicQuantizeMatMul",
                             "QLinearConvTranspose", "MatMulIntegerToFloat", "QLinearReduceMean",
                             "QLinearSoftmax", "QLinearWhere"})
