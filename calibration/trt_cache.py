"""TensorRT calibration caches (implicit INT8, DLA on JetPack 5/6), text format.

First line ``TRT-<version int>-<calibrator>``, then one ``<tensor name>: <8 hex digits>``
line per tensor: the big-endian IEEE float32 of ``scale = amax / 127``. TensorRT ignores
a cache whose header names another version or calibrator, so the header is written for
the TensorRT version the user targets.

TensorRT's version integer is ``major*1000 + minor*100 + patch`` up to 9.x (8.5.2 ->
8502) and ``major*10000 + minor*100 + patch`` from 10.0 on (10.3.0 -> 100300), as
``NV_TENSORRT_VERSION`` is defined in the respective headers.

A tensor without a line gets no INT8 scale: TensorRT then runs the layers that read or
write it in higher precision, which is how the FP32 layers of our precision policy
carry over to implicit INT8.
"""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

from edgerestore.runtime.errors import EdgeRestoreError
from edgerestore.runtime.tensorrt.releases import TRT_RELEASES, parse_trt_version  # noqa: F401 - re-exported

# The short names (8.5 = JetPack 5.1, 8.6 = JetPack 6.0, 10.3 = JetPack 6.1/6.2, 11) and their
# parsing live with the TensorRT runtime, which `check --trt` shares them with.
DEFAULT_TRT_VERSION = "10.3"
# Symmetric INT8 as TensorRT uses it: [-127, 127].
QMAX = 127.0

_LINE = re.compile(r"^(?P<name>.+): (?P<hex>[0-9a-f]{8})$")


def version_int(major: int, minor: int, patch: int) -> int:
    return (major * 10000 if major >= 10 else major * 1000) + minor * 100 + patch


def header(version: tuple[int, int, int], method: str) -> str:
    """TensorRT's max calibrator writes ``MinMaxCalibration``; every histogram method
    (percentile, entropy, mse) ships as the entropy-2 calibrator's cache, the one
    ``trtexec --calib`` and most deployments read."""
    calibrator = "MinMaxCalibration" if method == "minmax" else "EntropyCalibration2"
    return f"TRT-{version_int(*version)}-{calibrator}"


def scale_hex(amax: float) -> str:
    return struct.pack(">f", amax / QMAX).hex()


def render(head: str, amax: dict[str, float]) -> str:
    lines = [head]
    for name, value in amax.items():
        if not (math.isfinite(value) and value > 0):
            raise EdgeRestoreError(f"tensor '{name}' has no usable INT8 range (amax {value}); cannot write its scale")
        if "\n" in name or ": " in name:
            raise EdgeRestoreError(f"tensor name {name!r} cannot be written to a TensorRT calibration cache")
        lines.append(f"{name}: {scale_hex(value)}")
    return "\n".join(lines) + "\n"


def read(path: Path) -> tuple[str, dict[str, float]]:
    """(header, tensor -> scale) of a cache file; a malformed line is an error."""
    lines = Path(path).read_text().splitlines()
    if not lines or not lines[0].startswith("TRT-"):
        raise EdgeRestoreError(f"'{path}' is not a TensorRT calibration cache (no TRT- header)")
    scales = {}
    for line in lines[1:]:
        match = _LINE.match(line)
        if not match:
            raise EdgeRestoreError(f"'{path}': malformed calibration cache line {line!r}")
        scales[match["name"]] = struct.unpack(">f", bytes.fromhex(match["hex"]))[0]
    return lines[0], scales
