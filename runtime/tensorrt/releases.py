"""The TensorRT releases edgerestore targets, by the short names the command line takes.

Each JetPack pins one TensorRT, CUDA and Python (REFERENCE.md section 4):

=================  ========  ====  ======  =======================================
JetPack            TensorRT  CUDA  Python  edgerestore on the device
=================  ========  ====  ======  =======================================
5.1.x (Xavier,     8.5.2     11.4  3.8     bundles only: engines with trtexec (the
Orin)                                      Python runtime needs Python >= 3.10)
6.0 (Orin)         8.6.2     12.2  3.10    build, restore, profile
6.1 / 6.2 (Orin)   10.3      12.6  3.10    build, restore, profile
=================  ========  ====  ======  =======================================

TensorRT 11 (x86-64 and server GPUs) does not support JetPack.
"""

from __future__ import annotations

from ..errors import EdgeRestoreError

TRT_RELEASES = {"8.5": (8, 5, 2), "8.6": (8, 6, 2), "10.3": (10, 3, 0), "11": (11, 0, 0)}


def parse_trt_version(text: str) -> tuple[int, int, int]:
    """``10.3`` (a named release), or an exact ``MAJOR.MINOR.PATCH`` such as ``8.5.1``."""
    if text in TRT_RELEASES:
        return TRT_RELEASES[text]
    parts = text.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        major, minor, patch = (int(p) for p in parts)
        if 7 <= major and minor < 100 and patch < 100:
            return major, minor, patch
    raise EdgeRestoreError(f"unknown TensorRT version '{text}': use {', '.join(TRT_RELEASES)} "
                           "or an exact MAJOR.MINOR.PATCH such as 8.5.1")
