"""Backends run one stage file on a batch. They know nothing of tiles or routing.

Like Polygraphy's loaders, each backend does one job: turn an ONNX path into a
callable ``feeds -> outputs`` (dicts of numpy arrays keyed by graph tensor names).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from ..errors import EdgeRestoreError


class StageRunner(Protocol):
    input_names: list[str]
    output_names: list[str]

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


# name -> (module, the Python package it needs); order = preference of "auto" on a CPU.
_BACKENDS: dict[str, tuple[str, str]] = {
    "openvino": ("openvino_backend", "openvino"),
    "onnxruntime": ("onnxruntime_backend", "onnxruntime"),
    "torch": ("torch_backend", "torch"),
}
NAMES = ("auto", *_BACKENDS)


def available() -> list[str]:
    return [name for name, (_, package) in _BACKENDS.items() if importlib.util.find_spec(package) is not None]


def resolve(name: str) -> str:
    """Map ``auto`` to the fastest installed CPU backend and check the others exist."""
    if name == "auto":
        found = available()
        if not found:
            raise EdgeRestoreError("no backend installed: pip install openvino or onnxruntime")
        return found[0]
    if name not in _BACKENDS:
        raise EdgeRestoreError(f"unknown backend '{name}'; choose from {', '.join(NAMES)}")
    if name not in available():
        raise EdgeRestoreError(f"backend '{name}' needs the Python package '{_BACKENDS[name][1]}', which is not installed")
    return name


def loader(name: str) -> Callable[[Path], StageRunner]:
    """The ``load(path) -> StageRunner`` function of a backend (``auto`` resolved)."""
    module = importlib.import_module(f"{__name__}.{_BACKENDS[resolve(name)][0]}")
    return module.load


def load_stage(name: str, path: Path) -> StageRunner:
    return loader(name)(Path(path))
