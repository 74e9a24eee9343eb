"""Backends run one stage file on a batch. They know nothing of tiles or routing.

Like Polygraphy's loaders, each backend does one job: turn an ONNX path into a
callable ``feeds -> outputs`` (dicts of numpy arrays keyed by graph tensor names).
"""

from __future__ import annotations

import importlib
import importlib.util  # find_spec: `import importlib` alone does not load the submodule
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from ..bundle import Bundle
from ..errors import EdgeRestoreError
from ..optional import PACKAGES, missing


class StageRunner(Protocol):
    """``runner(feeds)`` runs a batch; the arrays it returns belong to the caller (the runner
    does not reuse them on its next call)."""

    input_names: list[str]
    output_names: list[str]

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


# name -> (module, the Python package it needs); order = preference of "auto" on a CPU.
# Each is an extra of its own (pyproject.toml); optional.PACKAGES says how to install it.
_BACKENDS: dict[str, tuple[str, str]] = {
    "openvino": ("openvino_backend", "openvino"),
    "onnxruntime": ("onnxruntime_backend", "onnxruntime"),
    "torch": ("torch_backend", "torch"),
    # INT8 as the Q/DQ graph defines it, in float (calibration's reference; never "auto"'s pick,
    # since onnxruntime, which it needs, comes first)
    "qdq-reference": ("qdq_reference_backend", "onnxruntime"),
}
# Backends that run engines built for the device (`edgerestore build`), not the stage ONNX:
# never picked by "auto", not in available(). Their modules also define
# load_from_bundle(bundle, stage, precision) and precisions(bundle).
_DEVICE_BACKENDS: dict[str, tuple[str, str]] = {
    "tensorrt": ("tensorrt_backend", "tensorrt"),
}
NAMES = ("auto", *_BACKENDS, *_DEVICE_BACKENDS)
# Backends that exist to check the others against, not to deploy on
REFERENCES = ("torch", "qdq-reference")


def available(deployment: bool = False) -> list[str]:
    """Installed CPU backends, in "auto" preference order; ``deployment``: only those a
    product runs on (not the torch interpreter nor the Q/DQ reference)."""
    return [name for name, (_, package) in _BACKENDS.items() if importlib.util.find_spec(package) is not None
            and not (deployment and name in REFERENCES)]


def resolve(name: str) -> str:
    """Map ``auto`` to the fastest installed CPU backend and check the others exist."""
    if name == "auto":
        found = available()
        if not found:
            raise EdgeRestoreError("no CPU backend installed: pip install 'edgerestore[onnxruntime]' or "
                                   "'edgerestore[openvino]' (or run engines built for this device: --backend tensorrt)")
        return found[0]
    known = {**_BACKENDS, **_DEVICE_BACKENDS}
    if name not in known:
        raise EdgeRestoreError(f"unknown backend '{name}'; choose from {', '.join(NAMES)}")
    package = known[name][1]
    if importlib.util.find_spec(package) is None:
        if package in PACKAGES:
            raise EdgeRestoreError(missing(package, f"backend '{name}'"))
        raise EdgeRestoreError(f"backend '{name}' needs the Python package '{package}', which is not installed")
    return name


def _module(name: str):
    module, _ = {**_BACKENDS, **_DEVICE_BACKENDS}[resolve(name)]
    return importlib.import_module(f"{__name__}.{module}")


def loader(name: str) -> Callable[[Path], StageRunner]:
    """The ``load(path) -> StageRunner`` function of a CPU backend (``auto`` resolved)."""
    module = _module(name)
    if not hasattr(module, "load"):
        raise EdgeRestoreError(f"backend '{name}' runs engines built into a bundle, not a stage file")
    return module.load


def load_stage(name: str, path: Path) -> StageRunner:
    return loader(name)(Path(path))


def open_stage(name: str, bundle: Bundle, stage: str, precision: str, threads: int | None = None) -> StageRunner:
    """A runner for ``stage`` of ``bundle`` at ``precision``: the stage file for CPU
    backends, the engine built for this device for device backends. ``threads``: the
    backend's threads for one call (None: its default)."""
    module = _module(name)
    if hasattr(module, "load_from_bundle"):
        return module.load_from_bundle(bundle, stage, precision)
    return module.load(bundle.stage_path(stage, precision), threads=threads)


def shares_activations(name: str) -> bool:
    """Whether the backend's stages allocate from one pool (only the largest call counts
    against the memory budget) or each keep their own buffers (all of them count)."""
    return bool(getattr(_module(name), "SHARES_ACTIVATIONS", False))


def activation_factor(name: str) -> float:
    """What the backend holds per tile of a stage call, as a multiple of the manifest's
    activation estimate (measured per backend; runtime/budget.py)."""
    from ..budget import ACTIVATION_FACTOR

    return float(getattr(_module(name), "ACTIVATION_FACTOR", ACTIVATION_FACTOR))


def precisions(name: str, bundle: Bundle) -> list[str]:
    """Precisions ``name`` can run ``bundle`` at, best first."""
    module = _module(name)
    return module.precisions(bundle) if hasattr(module, "precisions") else bundle.precisions
