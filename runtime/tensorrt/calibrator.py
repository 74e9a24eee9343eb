"""Implicit INT8 (TensorRT 8.x; 10.x with DLA): scales from the bundle's calibration cache.

``export --int8`` writes ``calib/<stage>.cache`` (path recorded in the manifest as the
stage's ``calibration_cache``) in TensorRT's text format, with a header naming the TensorRT
version and calibrator it targets. TensorRT ignores a cache whose header does not match the
running version and calibrator -- and would then try to calibrate with no data -- so the
lookup below refuses a mismatch up front, and the calibrator class follows the header.

The calibrator only returns the cache: it has no images (``get_batch`` returns None), so
every INT8 scale comes from the cache, exactly the ones ``export --int8`` validated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgerestore.calibration import trt_cache

from ..bundle import Bundle
from ..errors import EdgeRestoreError

# Header calibrator name -> the TensorRT Python class whose cache it is.
CALIBRATORS = {
    "EntropyCalibration2": "IInt8EntropyCalibrator2",
    "EntropyCalibration": "IInt8EntropyCalibrator",
    "MinMaxCalibration": "IInt8MinMaxCalibrator",
    "LegacyCalibration": "IInt8LegacyCalibrator",
}
_HEADER = re.compile(r"^TRT-(?P<version>\d+)-(?P<calibrator>\w+)$")


@dataclass(frozen=True)
class CalibrationCache:
    path: Path
    data: bytes
    calibrator: str  # header name, a key of CALIBRATORS
    tensors: int  # how many tensors have a scale


def cache_path(bundle: Bundle, stage: str) -> Path:
    rel = bundle.manifest["stages"][stage].get("calibration_cache", f"calib/{stage}.cache")
    path = (bundle.root / rel).resolve()
    if Path(rel).is_absolute() or not path.is_relative_to(bundle.root.resolve()):
        raise EdgeRestoreError(f"bundle '{bundle.root}': calibration cache path '{rel}' points outside the bundle")
    return path


def load_cache(bundle: Bundle, stage: str, running: tuple[int, int, int]) -> CalibrationCache:
    """The stage's calibration cache, checked against the running TensorRT version."""
    path = cache_path(bundle, stage)
    if not path.is_file():
        raise EdgeRestoreError(f"bundle '{bundle.root}' has no calibration cache for stage '{stage}' ({path.name}): "
                               "implicit INT8 needs one; run `edgerestore export ... --int8 --trt-version "
                               f"{'.'.join(map(str, running))}` first")
    header, scales = trt_cache.read(path)
    match = _HEADER.match(header)
    if not match or match["calibrator"] not in CALIBRATORS:
        raise EdgeRestoreError(f"calibration cache '{path}' has an unknown header {header!r}")
    wanted = trt_cache.version_int(*running)
    if int(match["version"]) != wanted:
        raise EdgeRestoreError(f"calibration cache '{path}' was written for TensorRT version {match['version']} "
                               f"(header {header}) but this machine runs TensorRT {'.'.join(map(str, running))} "
                               f"({wanted}), and TensorRT ignores a cache written for another version: export again "
                               f"with --int8 --trt-version {'.'.join(map(str, running))}")
    if not scales:
        raise EdgeRestoreError(f"calibration cache '{path}' holds no scales")
    return CalibrationCache(path, path.read_bytes(), match["calibrator"], len(scales))


def make_calibrator(trt: Any, cache: CalibrationCache) -> Any:
    """An instance of the TensorRT calibrator class the cache was written for, returning only the cache."""
    base = getattr(trt, CALIBRATORS[cache.calibrator])

    class CacheOnlyCalibrator(base):
        def __init__(self):
            base.__init__(self)  # pybind11 trampolines need the base initialised explicitly

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names):  # noqa: ARG002 - no data on purpose: scales come from the cache
            return None

        def read_calibration_cache(self) -> bytes:
            return cache.data

        def write_calibration_cache(self, data) -> None:  # noqa: ARG002 - the bundle's cache stays as exported
            return None

    return CacheOnlyCalibrator()
