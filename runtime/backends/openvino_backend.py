"""OpenVINO on the CPU. It reads the ONNX file (FP32 or Q/DQ INT8) directly.

The precision hint is pinned to f32: on CPUs with bf16 units OpenVINO would otherwise
run "FP32" stages in bf16 and lose ~0.01 dB without saying so.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import openvino as ov

from ..errors import EdgeRestoreError

_core: ov.Core | None = None
_core_lock = threading.Lock()


def _get_core() -> ov.Core:
    """One Core per process, created by whichever thread loads a stage first."""
    global _core
    with _core_lock:
        if _core is None:
            _core = ov.Core()
        return _core


class OpenVinoStage:
    def __init__(self, path: Path, threads: int | None = None):
        core = _get_core()
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            model = core.read_model(str(path))
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as err:
            message = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
            raise EdgeRestoreError(f"openvino cannot load '{path}': {message}") from None
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        self.output_names = [port.get_any_name() for port in self.compiled.outputs]
        self.request = self.compiled.create_infer_request()
        # An infer request runs one inference at a time (OpenVINO's compiled model is thread-safe,
        # its requests are not): callers on several threads take turns.
        self._lock = threading.Lock()

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            results = self.request.infer({name: np.ascontiguousarray(feeds[name]) for name in self.input_names})
            # Copy: the request reuses its output buffers on the next call.
            return {name: np.array(results[port]) for name, port in zip(self.output_names, self.compiled.outputs)}


def load(path: Path, threads: int | None = None) -> OpenVinoStage:
    return OpenVinoStage(path, threads)
