"""INT8 calibration: data sources, activation capture per stage (route-aware for routed
models), scale algorithms, Q/DQ ONNX through ONNX Runtime's quantizer, TensorRT
calibration caches and the precision policy (issue 4).

The names below load on first use: ``edgerestore build`` on a Jetson reads
:mod:`.trt_cache` (which runs this file first) and must not need ONNX Runtime, which
the quantizer imports."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DEFAULT_METHOD": "int8", "Int8Options": "int8", "Int8Report": "int8", "add_int8": "int8",
    "METHODS": "scales",
    "CalibrationDataReader": "sources", "FolderSplit": "sources", "ReaderSource": "sources", "Sample": "sources",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
