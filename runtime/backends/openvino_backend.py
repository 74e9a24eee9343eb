"""OpenVINO on the CPU. It reads the ONNX file (FP32 or Q/DQ INT8) directly.

The precision hint is pinned to f32: on CPUs with bf16 units OpenVINO would otherwise
run "FP32" stages in bf16 and lose ~0.01 dB without saying so.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import openvino as ov

from ..errors import EdgeRestoreError

# Every stage keeps its own buffers at the size of its largest batch: the memory budget
# counts them all (runtime/budget.py).
SHARES_ACTIVATIONS = False
# A 64-channel block stage held 7.6 MB per 63x63 tile of its batch (3.05 MB of live
# activations by the manifest's estimate, plus its input and output): 2x.
ACTIVATION_FACTOR = 2.0

_core: ov.Core | None = None
_core_lock = threading.Lock()


def _get_core() -> ov.Core:
    """One Core per process, created by whichever thread loads a stage first, with a model
    cache: OpenVINO stores each compiled stage there and loads it back instead of compiling
    it again (a bundle's stages load ~10x faster the second time)."""
    global _core
    with _core_lock:
        if _core is None:
            _core = ov.Core()
            cache = cache_dir()
            if cache is not None:
                _core.set_property({"CACHE_DIR": str(cache)})
        return _core


def cache_dir() -> Path | None:
    """``$EDGERESTORE_CACHE_DIR/openvino``, else ``$XDG_CACHE_HOME`` (``~/.cache``)
    ``/edgerestore/openvino``; None where it cannot be created (a read-only home): no cache."""
    root = os.environ.get("EDGERESTORE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "edgerestore")
    path = Path(root) / "openvino"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return path if os.access(path, os.W_OK) else None


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
