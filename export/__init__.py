"""torch -> ONNX stage graphs -> bundle (manifest + ONNX files), with a parity check.

The names load on first use (PEP 562), so ``edgerestore export --help`` and the other
imports of this package's CLI module need not load PyTorch."""

import importlib

_NAMES = {"ExportReport": "bundle_writer", "export_bundle": "bundle_writer", "write_bundle": "bundle_writer",
          "Parity": "parity"}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
