"""TensorRT engines through pycuda, one stage at a time, host arrays in and out.

Loading: :func:`load_from_bundle` takes the stage's engine for the executor's precision from
``BUNDLE/engines/<tensorrt version>/<gpu>/`` (``edgerestore build --tensorrt``), after TensorRT's
plugins are registered (an InstanceNormalization layer is a plugin on 8.x); an engine of
another TensorRT version or GPU, or built from another export of the stage, is refused with
both sides named (:func:`..tensorrt.engines.find_engine`). :func:`precisions` lists the
precisions with an engine for every stage, so ``--precision fp16`` works without an FP16 graph.

A call (the executor's contract: ``feeds -> outputs``, numpy arrays keyed by tensor name):

* one CUDA stream shared by every stage, so stages run in plan order on the GPU;
* pinned host buffers and device buffers per batch size, allocated on first use of that
  size and reused (a routed plan sees a handful of sizes: full batches and branch subsets);
* TensorRT >= 10: the name-based API (``set_input_shape``, ``set_tensor_address``,
  ``execute_async_v3``). TensorRT 8.x: binding indices (``set_binding_shape``,
  ``execute_async_v2(bindings)``), the interface every 8.x release shares (v3 appeared in
  8.5 only) and the one 10 removed;
* batches larger than the profile's max run in chunks; a fixed-batch engine (DLA) gets
  smaller batches zero-padded;
* CUDA graphs, opt-in (``EDGERESTORE_TRT_CUDA_GRAPHS=1`` or ``cuda_graphs=True``): the second
  call with a batch size captures the enqueue (the first is the warm-up TensorRT asks for
  before capture), later calls with that size replay it.

With the executor: it gathers a switch's rows, calls each branch stage on its rows and
scatters the outputs back on the host, and reads the router's logits on the host to decide.
This backend is the stage-level path: each stage call copies its inputs up and its outputs
down. A device-resident frame path (tiles extracted by the CUDA tile kernels on this
stream, kept on the GPU between stages, only the router's logits coming down) needs the
executor to hold device tensors and gather/scatter rows on the GPU; it is not built yet.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import tensorrt as trt

from ..bundle import Bundle
from ..errors import EdgeRestoreError
from ..tensorrt import engines
from ..tensorrt.build import current_target, tensorrt_logger
from ..tensorrt.cuda_driver import CudaGraph
from ..tensorrt.policy import parse_version

# Every stage keeps its own buffers at the size of its largest batch: the memory budget
# counts them all (runtime/budget.py).
SHARES_ACTIVATIONS = False

try:
    import pycuda.driver as cuda
    import pycuda.autoinit  # noqa: F401 - creates the CUDA context on device 0, the one engines are matched to
except ImportError:
    raise EdgeRestoreError("backend 'tensorrt' needs pycuda (`pip install pycuda`), which is not installed") from None

_LOGGER = tensorrt_logger(trt)  # registers TensorRT's plugins: engines with plugin layers deserialize only then
GRAPHS_ENV = "EDGERESTORE_TRT_CUDA_GRAPHS"


@lru_cache(maxsize=None)
def _stream() -> Any:
    return cuda.Stream()


@lru_cache(maxsize=None)
def _running() -> engines.Target:
    return current_target(trt)


def precisions(bundle: Bundle) -> list[str]:
    found = engines.engine_precisions(bundle, _running())
    if not found:
        raise EdgeRestoreError(f"bundle '{bundle.root}' has no complete set of TensorRT engines for "
                               f"{_running().describe()} ({engines.describe_available(bundle)}): run "
                               f"`edgerestore build {bundle.root} --tensorrt` on this machine")
    return found


def load_from_bundle(bundle: Bundle, stage: str, precision: str) -> "TrtStage":
    path, info = engines.find_engine(bundle, stage, precision, _running())
    return TrtStage(path.read_bytes(), stage, cuda_graphs=os.environ.get(GRAPHS_ENV) == "1")


class _TensorApi:
    """TensorRT >= 10: tensors by name, execute_async_v3."""

    def __init__(self, engine: Any, context: Any):
        self.engine, self.context = engine, context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))

    def profile(self, name: str) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(s) for s in self.engine.get_tensor_profile_shape(name, 0))

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        return bool(self.context.set_input_shape(name, shape))

    def output_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.context.get_tensor_shape(name))

    def enqueue(self, addresses: dict[str, int], stream: int) -> bool:
        for name, address in addresses.items():
            self.context.set_tensor_address(name, address)
        return bool(self.context.execute_async_v3(stream))


class _BindingApi:
    """TensorRT 8.x: binding indices, execute_async_v2."""

    def __init__(self, engine: Any, context: Any):
        self.engine, self.context = engine, context
        self.index = {engine.get_binding_name(i): i for i in range(engine.num_bindings)}
        self.inputs = [n for n, i in self.index.items() if engine.binding_is_input(i)]
        self.outputs = [n for n in self.index if n not in self.inputs]

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(trt.nptype(self.engine.get_binding_dtype(self.index[name])))

    def profile(self, name: str) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(s) for s in self.engine.get_profile_shape(0, self.index[name]))

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        return bool(self.context.set_binding_shape(self.index[name], shape))

    def output_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.context.get_binding_shape(self.index[name]))

    def enqueue(self, addresses: dict[str, int], stream: int) -> bool:
        bindings = [0] * len(self.index)
        for name, address in addresses.items():
            bindings[self.index[name]] = address
        return bool(self.context.execute_async_v2(bindings, stream))


@dataclass
class _Buffers:
    """Pinned host and device memory of every IO tensor for one batch size."""

    host: dict[str, np.ndarray]
    device: dict[str, Any]  # pycuda DeviceAllocation
    calls: int = 0
    graph: CudaGraph | None = None

    @property
    def addresses(self) -> dict[str, int]:
        return {name: int(allocation) for name, allocation in self.device.items()}


class TrtStage:
    def __init__(self, serialized: bytes, stage: str, cuda_graphs: bool = False):
        self.stage = stage
        self.engine = trt.Runtime(_LOGGER).deserialize_cuda_engine(serialized)
        if self.engine is None:
            raise EdgeRestoreError(f"TensorRT could not deserialize the engine of stage '{stage}' (messages above)")
        self.context = self.engine.create_execution_context()
        api = _TensorApi if parse_version(trt.__version__)[0] >= 10 else _BindingApi
        self.api = api(self.engine, self.context)
        self.input_names, self.output_names = self.api.inputs, self.api.outputs
        self.profiles = {name: self.api.profile(name) for name in self.input_names}
        low, _, high = self.profiles[self.input_names[0]]
        self.max_batch = high[0]
        self.fixed_batch = high[0] if low[0] == high[0] else None
        self.cuda_graphs = cuda_graphs
        self.stream = _stream()
        self._buffers: dict[int, _Buffers] = {}

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(feeds[self.input_names[0]])
        if n <= self.max_batch:
            return self._run(feeds, n)
        parts = [self._run({k: v[i:i + self.max_batch] for k, v in feeds.items()}, min(self.max_batch, n - i))
                 for i in range(0, n, self.max_batch)]
        return {name: np.concatenate([part[name] for part in parts]) for name in self.output_names}

    def _run(self, feeds: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        size = self.fixed_batch or n
        for name in self.input_names:
            self._check_feed(name, feeds[name])
            if not self.api.set_input_shape(name, (size, *self.profiles[name][2][1:])):
                raise EdgeRestoreError(f"stage '{self.stage}': TensorRT refuses input '{name}' with batch {size}")
        buffers = self._buffers.get(size) or self._allocate(size)
        for name in self.input_names:
            host = buffers.host[name]
            host[:n] = feeds[name]
            host[n:] = 0  # padding rows of a fixed-batch engine
            cuda.memcpy_htod_async(buffers.device[name], host, self.stream)
        self._enqueue(buffers)
        for name in self.output_names:
            cuda.memcpy_dtoh_async(buffers.host[name], buffers.device[name], self.stream)
        self.stream.synchronize()
        return {name: buffers.host[name][:n].copy() for name in self.output_names}

    def _check_feed(self, name: str, value: np.ndarray) -> None:
        expected = tuple(self.profiles[name][2][1:])
        if tuple(value.shape[1:]) != expected:
            hint = f" (built for {expected[-1]}x{expected[-2]} tiles: restore with --tile {expected[-1]} or rebuild " \
                   "with `build --tile N`)" if len(expected) == 3 else ""
            raise EdgeRestoreError(f"stage '{self.stage}': the TensorRT engine takes '{name}' rows of shape {expected}, "
                                   f"got {tuple(value.shape[1:])}{hint}")

    def _allocate(self, size: int) -> _Buffers:
        host, device = {}, {}
        shapes = {name: (size, *self.profiles[name][2][1:]) for name in self.input_names}
        shapes.update({name: self.api.output_shape(name) for name in self.output_names})
        for name, shape in shapes.items():
            if any(d < 0 for d in shape):
                raise EdgeRestoreError(f"stage '{self.stage}': output '{name}' has no static shape ({shape})")
            host[name] = cuda.pagelocked_empty(shape, self.api.dtype(name))
            device[name] = cuda.mem_alloc(max(host[name].nbytes, 1))
        self._buffers[size] = _Buffers(host, device)
        return self._buffers[size]

    def _enqueue(self, buffers: _Buffers) -> None:
        handle = self.stream.handle
        buffers.calls += 1
        if buffers.graph is not None:
            buffers.graph.launch(handle)
            return
        if self.cuda_graphs and buffers.calls == 2:  # the first call was TensorRT's warm-up enqueue
            buffers.graph = CudaGraph.capture(handle, lambda: self._enqueue_now(buffers, handle))
            buffers.graph.launch(handle)
            return
        self._enqueue_now(buffers, handle)

    def _enqueue_now(self, buffers: _Buffers, handle: int) -> None:
        if not self.api.enqueue(buffers.addresses, handle):
            raise EdgeRestoreError(f"TensorRT failed to run stage '{self.stage}' (messages above)")
