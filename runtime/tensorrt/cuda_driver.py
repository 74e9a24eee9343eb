"""The few CUDA driver API calls the TensorRT build and runtime need, through ctypes.

The GPU's name and compute capability name the engine folder at build time and are checked
at load time; reading them from the driver (libcuda, present wherever a GPU is) keeps the
build free of pycuda and gives both sides the same string. CUDA graph capture is here too:
pycuda does not wrap stream capture in every release, the driver API has since CUDA 11.4.
"""

from __future__ import annotations

import ctypes
import sys
from functools import lru_cache

from ..errors import EdgeRestoreError

_ATTRIBUTE_CC_MAJOR, _ATTRIBUTE_CC_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_{MAJOR,MINOR}
_CAPTURE_MODE_GLOBAL = 0  # CU_STREAM_CAPTURE_MODE_GLOBAL, as TensorRT's developer guide captures enqueues
_LIBRARY = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"


@lru_cache(maxsize=None)
def _driver() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(_LIBRARY)
    except OSError:
        raise EdgeRestoreError(f"no CUDA driver ({_LIBRARY}): TensorRT needs an NVIDIA GPU and its driver") from None
    _call(lib, "cuInit", ctypes.c_uint(0))
    return lib


def _call(lib: ctypes.CDLL, name: str, *args) -> None:
    status = getattr(lib, name)(*args)
    if status:
        text = ctypes.c_char_p()
        lib.cuGetErrorName(status, ctypes.byref(text))
        raise EdgeRestoreError(f"CUDA driver call {name} failed: {(text.value or b'error').decode()} ({status})")


def device_count() -> int:
    """Visible CUDA devices; 0 without a driver or GPU (never raises)."""
    try:
        lib = _driver()
        count = ctypes.c_int(0)
        _call(lib, "cuDeviceGetCount", ctypes.byref(count))
        return count.value
    except EdgeRestoreError:
        return 0


def device_identity(ordinal: int = 0) -> tuple[str, tuple[int, int]]:
    """(name, (major, minor)) of CUDA device ``ordinal``, as the driver reports them."""
    lib = _driver()
    device = ctypes.c_int()
    _call(lib, "cuDeviceGet", ctypes.byref(device), ctypes.c_int(ordinal))
    name = ctypes.create_string_buffer(256)
    _call(lib, "cuDeviceGetName", name, ctypes.c_int(len(name)), device)
    major, minor = ctypes.c_int(), ctypes.c_int()
    _call(lib, "cuDeviceGetAttribute", ctypes.byref(major), ctypes.c_int(_ATTRIBUTE_CC_MAJOR), device)
    _call(lib, "cuDeviceGetAttribute", ctypes.byref(minor), ctypes.c_int(_ATTRIBUTE_CC_MINOR), device)
    return name.value.decode(), (major.value, minor.value)


class CudaGraph:
    """One captured sequence of work on a stream, replayed with :meth:`launch`.

    Usage: ``graph = CudaGraph.capture(stream_handle, enqueue)`` where ``enqueue()`` puts the
    work on that stream; the stream must not be the legacy default stream."""

    def __init__(self, graph: ctypes.c_void_p, executable: ctypes.c_void_p):
        self._graph, self._exec = graph, executable

    @classmethod
    def capture(cls, stream: int, enqueue) -> "CudaGraph":
        lib = _driver()
        handle = ctypes.c_void_p(stream)
        _call(lib, "cuStreamBeginCapture_v2", handle, ctypes.c_int(_CAPTURE_MODE_GLOBAL))
        graph = ctypes.c_void_p()
        try:
            enqueue()
        finally:  # always end the capture, or the stream stays unusable
            _call(lib, "cuStreamEndCapture", handle, ctypes.byref(graph))
        executable = ctypes.c_void_p()
        _call(lib, "cuGraphInstantiateWithFlags", ctypes.byref(executable), graph, ctypes.c_ulonglong(0))
        return cls(graph, executable)

    def launch(self, stream: int) -> None:
        _call(_driver(), "cuGraphLaunch", self._exec, ctypes.c_void_p(stream))

    def __del__(self):
        try:
            lib = _driver()
            if self._exec:
                lib.cuGraphExecDestroy(self._exec)
            if self._graph:
                lib.cuGraphDestroy(self._graph)
        except Exception:  # interpreter shutdown: the driver may be gone already
            pass
