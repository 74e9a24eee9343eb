"""edgerestore: export, quantize and run image-restoration networks on edge devices.

    import edgerestore

    with edgerestore.load("pr.bundle") as session:       # the bundle's stages on this machine
        clean = session.restore(frame)                    # numpy frame in, numpy frame out

``load`` returns a :class:`~edgerestore.runtime.session.Session`; the README's "Python API"
section has the rest. Importing this package loads neither PyTorch nor OpenCV: an embedded
runtime needs neither. (This file is installed as the package's ``__init__``; the build maps
the repository's folders to ``edgerestore.models``, ``.export``, ``.calibration``, ``.runtime``.)
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgerestore")
except PackageNotFoundError:  # pragma: no cover - running from an unbuilt tree
    __version__ = "0+unknown"

_NAMES = {"load": "edgerestore.runtime.session", "Session": "edgerestore.runtime.session",
          "Result": "edgerestore.runtime.session", "EdgeRestoreError": "edgerestore.runtime.errors"}

__all__ = ["__version__", *_NAMES]


def __getattr__(name: str):
    """The session API, imported on first use (``import edgerestore`` stays instant);
    ``edgerestore.distributed``: batch jobs on a Ray cluster (:mod:`.runtime.distributed`)."""
    if name == "distributed":
        return import_module("edgerestore.runtime.distributed")
    if name not in _NAMES:
        raise AttributeError(f"module 'edgerestore' has no attribute {name!r}")
    return getattr(import_module(_NAMES[name]), name)
