"""Packages the runtime works without, and the one line that says how to get one.

``pip install edgerestore`` is the runtime alone: what a Jetson takes, where torch, TensorRT
and OpenCV come from JetPack. Everything else is an extra (``pyproject.toml``), and a
feature that needs a missing one fails with ``error: <feature> needs <package>: <install>``
instead of a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import EdgeRestoreError

_JETSON_OPENCV = "on a Jetson: JetPack's python3-opencv, with a venv made with --system-site-packages"

# top-level module -> (the package's name for people, how to install it)
PACKAGES: dict[str, tuple[str, str]] = {
    "cv2": ("OpenCV", f"pip install 'edgerestore[opencv]' ({_JETSON_OPENCV})"),
    "skimage": ("scikit-image", "pip install 'edgerestore[eval]'"),
    "matplotlib": ("matplotlib", "pip install 'edgerestore[plot]'"),
    "torch": ("PyTorch", "pip install 'edgerestore[export]'"),
    "onnxslim": ("onnxslim", "pip install 'edgerestore[export]'"),
    "onnxruntime": ("ONNX Runtime", "pip install 'edgerestore[onnxruntime]'"),
    "openvino": ("OpenVINO", "pip install 'edgerestore[openvino]'"),
    "ray": ("Ray Data", "pip install 'edgerestore[ray]'"),
    "av": ("PyAV", "pip install 'edgerestore[video]'"),
}


def missing(module: str, purpose: str, alternative: str | None = None) -> str:
    """The one-line reason ``purpose`` cannot run: ``"<purpose> needs <package>: <install>"``,
    then ``"; or <alternative>"`` when there is a way around it."""
    name, install = PACKAGES[module.partition(".")[0]]
    return f"{purpose} needs {name}: {install}" + (f"; or {alternative}" if alternative else "")


def require(module: str, purpose: str, alternative: str | None = None) -> ModuleType:
    """Import ``module`` (e.g. ``"cv2"``, ``"skimage.metrics"``) or raise EdgeRestoreError
    with :func:`missing`'s line. A package that is installed but fails to import (a missing
    system library, say) raises its own error: reinstalling it is not the fix."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] != module.partition(".")[0]:
            raise
        raise EdgeRestoreError(missing(module, purpose, alternative)) from None


def load_if_installed(module: str) -> ModuleType | None:
    """Import ``module`` if installed, else None (for code with a path that works without it)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] != module.partition(".")[0]:
            raise
        return None


def missing_for_command(exc: ModuleNotFoundError, command: str) -> EdgeRestoreError | None:
    """For a subcommand whose module failed to import: the one-line error naming the extra
    to install, or None when the missing module is not one of the optional packages."""
    top = (exc.name or "").partition(".")[0]
    if top not in PACKAGES:
        return None
    return EdgeRestoreError(missing(top, f"edgerestore {command}"))
