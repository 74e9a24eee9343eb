"""ctypes binding to the C++ tile library (``runtime/csrc``: tiles.h, tiles_cpu.cpp).

The library does what :mod:`runtime.tiling` does in numpy - extract tiles from a frame and
merge restored tiles with the weighted ramp - with one C++ header of per-pixel functions that
is compiled into the CPU library used here (OpenMP) and into the CUDA kernels
(``edgerestore_tiles_cuda``, see :func:`load_cuda`). Geometry and weights are those of
:class:`runtime.tiling.TileGrid`; the merge accumulates in float32 in tile order.

Where the library is looked for, first match wins:

1. ``$EDGERESTORE_TILELIB``: the library file itself, or a folder holding it (for a build made
   by hand, e.g. ``cmake -S . -B /tmp/tilebuild && cmake --build /tmp/tilebuild``);
2. this module's folder (a regular install puts it beside this file);
3. the other folders of the ``edgerestore.runtime`` package path (an editable install keeps
   sources in the repository and compiled files in site-packages).

The CUDA library is looked for the same way (``$EDGERESTORE_TILELIB_CUDA``, else the folders
above); it is optional.

On x86-64 the CPU library carries portable and AVX2 builds of its merge kernels and picks one
at run time (:func:`cpu_isa`); ``EDGERESTORE_TILES_ISA=generic`` forces the portable ones.
Threads: OpenMP, ``OMP_NUM_THREADS`` (read when the library loads); idle threads sleep
(``OMP_WAIT_POLICY=PASSIVE`` unless set) so they leave the cores to the backends between calls.
"""

from __future__ import annotations

import ctypes
import os
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import EdgeRestoreError
from .tiling import TileGrid

ABI_VERSION = 2
CUDA_ABI_VERSION = 1  # the CUDA library has no whole-frame functions (yet)
MERGE_PIXELWISE = 1  # flag: evaluate the per-pixel gather exactly as the CUDA kernels do

_c_int, _c_i64, _c_float, _ptr = ctypes.c_int, ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
_GEOMETRY = [_c_int] * 5  # height, width, channels, tile, overlap
_SIGNATURES = {
    "er_version": ([], _c_int),
    "er_max_threads": ([], _c_int),
    "er_cpu_isa": ([], _c_int),
    "er_status_string": ([_c_int], ctypes.c_char_p),
    "er_tile_count": ([_c_int] * 4, _c_i64),
    "er_extract_u8": ([_ptr, _c_i64, *_GEOMETRY, _c_float, _c_float, _ptr], _c_int),
    "er_extract_f32": ([_ptr, _c_i64, *_GEOMETRY, _c_float, _c_float, _ptr], _c_int),
    "er_merge_f32": ([_ptr, *_GEOMETRY, _c_int, _c_int, _ptr, _c_i64, _c_int], _c_int),
    "er_merge_u8": ([_ptr, *_GEOMETRY, _c_int, _c_int, _c_float, _c_float, _ptr, _c_i64, _c_int], _c_int),
    "er_planes_from_u8": ([_ptr, _c_i64, _c_int, _c_int, _c_int, _c_float, _c_float, _ptr], _c_int),
    "er_planes_to_u8": ([_ptr, *[_c_int] * 5, _c_float, _c_float, _ptr, _c_i64], _c_int),
}
_CUDA_SIGNATURES = {
    "er_cuda_version": ([], _c_int),
    "er_cuda_last_error": ([], _c_int),
    "er_cuda_error_string": ([_c_int], ctypes.c_char_p),
    "er_cuda_extract_u8": ([_ptr, _c_i64, *_GEOMETRY, _c_float, _c_float, _ptr, _ptr], _c_int),
    "er_cuda_extract_f32": ([_ptr, _c_i64, *_GEOMETRY, _c_float, _c_float, _ptr, _ptr], _c_int),
    "er_cuda_merge_f32": ([_ptr, *_GEOMETRY, _c_int, _c_int, _ptr, _c_i64, _ptr], _c_int),
    "er_cuda_merge_u8": ([_ptr, *_GEOMETRY, _c_int, _c_int, _c_float, _c_float, _ptr, _c_i64, _ptr], _c_int),
    "er_cuda_device_count": ([], _c_int),
    "er_cuda_malloc": ([_c_i64], _ptr),
    "er_cuda_free": ([_ptr], _c_int),
    "er_cuda_memcpy_htod": ([_ptr, _ptr, _c_i64], _c_int),
    "er_cuda_memcpy_dtoh": ([_ptr, _ptr, _c_i64], _c_int),
    "er_cuda_synchronize": ([_ptr], _c_int),
}
_SUFFIXES = (".so", ".dylib", ".dll", ".pyd")


def _search_folders() -> list[Path]:
    folders = [Path(__file__).resolve().parent]
    package = sys.modules.get(__package__) if __package__ else None
    for entry in getattr(package, "__path__", None) or []:
        folder = Path(entry).resolve()
        if folder not in folders:
            folders.append(folder)
    return folders


def _find(name: str, env: str, cuda: bool) -> Path | None:
    def matches(folder: Path) -> list[Path]:
        return sorted(p for p in folder.glob(f"*{name}*")
                      if p.is_file() and p.suffix in _SUFFIXES and (("cuda" in p.name) == cuda))

    override = os.environ.get(env)
    if override:
        path = Path(override)
        if path.is_file():
            return path
        found = matches(path) if path.is_dir() else []
        if not found:
            raise EdgeRestoreError(f"${env} is set to {override}, which is not the {name} library or a folder "
                                   "holding it")
        return found[0]
    if cuda and os.environ.get("EDGERESTORE_TILELIB"):  # a hand-made build folder holds both
        folder = Path(os.environ["EDGERESTORE_TILELIB"])
        found = matches(folder if folder.is_dir() else folder.parent)
        if found:
            return found[0]
    for folder in _search_folders():
        found = matches(folder)
        if found:
            return found[0]
    return None


def library_path() -> Path:
    """Path of the CPU tile library; an EdgeRestoreError when it was not built."""
    path = _find("edgerestore_tiles", "EDGERESTORE_TILELIB", cuda=False)
    if path is None:
        where = ", ".join(str(f) for f in _search_folders())
        raise EdgeRestoreError(f"the tile library (edgerestore_tiles) was not found in {where}: reinstall the "
                               "package (`pip install -e .` builds it with CMake) or point $EDGERESTORE_TILELIB "
                               "at a build of it")
    return path


def _bind(lib: ctypes.CDLL, signatures: dict) -> ctypes.CDLL:
    for name, (args, res) in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    return lib


@lru_cache(maxsize=None)
def load() -> ctypes.CDLL:
    """The CPU tile library, loaded once."""
    path = library_path()
    # OpenMP's default lets idle worker threads spin after each parallel loop; between two tile
    # calls those spinning threads took the cores from the ONNX Runtime/OpenVINO thread pools
    # that run the stages (measured on 2 cores: a tiny frame's extract 7.8 ms vs 0.06 ms, the
    # stage 6.5 ms vs 4.0 ms). libgomp reads this when it first loads; a user's setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        lib = _bind(ctypes.CDLL(str(path)), _SIGNATURES)
    except (OSError, AttributeError) as exc:
        raise EdgeRestoreError(f"cannot load the tile library {path}: {exc}") from exc
    if lib.er_version() != ABI_VERSION:
        raise EdgeRestoreError(f"the tile library {path} has ABI version {lib.er_version()}, this module expects "
                               f"{ABI_VERSION}: rebuild it (`pip install -e .`)")
    return lib


def cuda_library_path() -> Path | None:
    """Path of the CUDA tile library, None when it was not built (no CUDA toolkit at build time)."""
    return _find("edgerestore_tiles_cuda", "EDGERESTORE_TILELIB_CUDA", cuda=True)


@lru_cache(maxsize=None)
def load_cuda() -> ctypes.CDLL | None:
    """The CUDA tile library (launchers take device pointers and a stream as void*), or None."""
    path = cuda_library_path()
    if path is None:
        return None
    try:
        lib = _bind(ctypes.CDLL(str(path)), _CUDA_SIGNATURES)
    except (OSError, AttributeError) as exc:
        raise EdgeRestoreError(f"cannot load the CUDA tile library {path}: {exc}") from exc
    if lib.er_cuda_version() != CUDA_ABI_VERSION:
        raise EdgeRestoreError(f"the CUDA tile library {path} has ABI version {lib.er_cuda_version()}, this module "
                               f"expects {CUDA_ABI_VERSION}: rebuild it")
    return lib


def max_threads() -> int:
    """OpenMP threads the CPU library uses (set OMP_NUM_THREADS before the first call to change it)."""
    return int(load().er_max_threads())


def cpu_isa() -> str:
    """Merge kernels the CPU library runs now: 'avx2' or 'generic'."""
    return "avx2" if load().er_cpu_isa() == 1 else "generic"


def _check(status: int, what: str) -> None:
    if status:
        raise EdgeRestoreError(f"tile library {what} failed: {load().er_status_string(status).decode()}")


def _frame_layout(image: np.ndarray) -> tuple[np.ndarray, int]:
    """(H, W, C) view whose pixels and channels are dense, plus its row pitch in bytes;
    rows may be any positive multiple of the element size apart (a crop of a larger frame)."""
    item = image.itemsize
    h, w, c = image.shape
    s0, s1, s2 = image.strides
    dense_rows = (s2 == item or c == 1) and (s1 == c * item or w == 1)
    if not (dense_rows and image.flags.aligned and (s0 >= w * c * item and s0 % item == 0 or h == 1)):
        image = np.ascontiguousarray(image)
        s0 = image.strides[0]
    return image, max(s0, w * c * item)


def _as_frame(image: np.ndarray, grid: TileGrid, name: str) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise EdgeRestoreError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] < 1:
        raise EdgeRestoreError(f"{name} must be HxW or HxWxC, got shape {image.shape}")
    if image.shape[:2] != (grid.height, grid.width):
        raise EdgeRestoreError(f"{name} is {image.shape[1]}x{image.shape[0]} but the tile grid is for "
                               f"{grid.width}x{grid.height}")
    return image


def tile_count(grid: TileGrid) -> int:
    return int(load().er_tile_count(grid.height, grid.width, grid.tile, grid.overlap))


def extract(image: np.ndarray, grid: TileGrid, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """HxWxC (or HxW) frame -> float32 (N, C, T, T) tiles in row-major tile order.

    uint8 frames are normalized: value = lo + (hi - lo) * pixel / 255. float32 frames map
    value = lo + (hi - lo) * pixel, an exact copy with the default lo=0, hi=1. Rows of the frame
    may be pitched (a crop of a larger array is read in place).
    """
    image = _as_frame(image, grid, "image")
    if image.dtype == np.uint8:
        fn = load().er_extract_u8
    elif image.dtype == np.float32:
        fn = load().er_extract_f32
    else:
        raise EdgeRestoreError(f"tile extraction takes uint8 or float32 frames, got {image.dtype}")
    image, pitch = _frame_layout(image)
    h, w, c = image.shape
    tiles = np.empty((len(grid), c, grid.tile, grid.tile), np.float32)
    _check(fn(image.ctypes.data, pitch, h, w, c, grid.tile, grid.overlap, lo, hi, tiles.ctypes.data), "extract")
    return tiles


def _as_tiles(tiles: np.ndarray, grid: TileGrid) -> np.ndarray:
    if not isinstance(tiles, np.ndarray) or tiles.dtype != np.float32:
        got = tiles.dtype if isinstance(tiles, np.ndarray) else type(tiles).__name__
        raise EdgeRestoreError(f"tiles must be a float32 numpy array, got {got}")
    if tiles.ndim != 4 or tiles.shape[0] != len(grid) or tiles.shape[2:] != (grid.tile, grid.tile) \
            or tiles.shape[1] < 1:
        raise EdgeRestoreError(f"tiles must have shape ({len(grid)}, C, {grid.tile}, {grid.tile}) for this grid, "
                               f"got {tiles.shape}")
    if not (tiles.flags.c_contiguous and tiles.flags.aligned):
        tiles = np.ascontiguousarray(tiles)
    return tiles


def _output(out: np.ndarray | None, grid: TileGrid, channels: int, dtype) -> tuple[np.ndarray, np.ndarray, int]:
    """(array returned, dense-row view written, its pitch)."""
    if out is None:
        out = np.empty((grid.height, grid.width, channels), dtype)
        return out, out, out.strides[0]
    if not isinstance(out, np.ndarray) or out.dtype != dtype:
        raise EdgeRestoreError(f"out must be a {np.dtype(dtype).name} numpy array")
    view = out[:, :, None] if out.ndim == 2 else out
    if view.shape != (grid.height, grid.width, channels):
        raise EdgeRestoreError(f"out must have shape {(grid.height, grid.width, channels)}, got {out.shape}")
    item = view.itemsize
    s0, s1, s2 = view.strides
    if not ((s2 == item or channels == 1) and (s1 == channels * item or grid.width == 1) and view.flags.aligned
            and view.flags.writeable and s0 >= grid.width * channels * item and s0 % item == 0):
        raise EdgeRestoreError("out must be writeable with dense pixels (rows may be pitched)")
    return out, view, s0


def merge(tiles: np.ndarray, grid: TileGrid, out: np.ndarray | None = None, pixelwise: bool = False) -> np.ndarray:
    """(N, C, T, T) float32 tiles -> HxWxC float32 frame, the weighted average of the covering
    tiles (unclipped). ``out`` may be a preallocated (pitched) HxWxC float32 frame."""
    tiles = _as_tiles(tiles, grid)
    c = tiles.shape[1]
    result, view, pitch = _output(out, grid, c, np.float32)
    _check(load().er_merge_f32(tiles.ctypes.data, grid.height, grid.width, c, grid.tile, grid.overlap, grid.halo,
                               grid.ramp, view.ctypes.data, pitch, MERGE_PIXELWISE if pixelwise else 0), "merge")
    return result


def merge_u8(tiles: np.ndarray, grid: TileGrid, lo: float = 0.0, hi: float = 1.0, out: np.ndarray | None = None,
             pixelwise: bool = False) -> np.ndarray:
    """(N, C, T, T) float32 tiles -> HxWxC uint8 frame: the weighted average mapped from
    [lo, hi] to [0, 1], clamped, times 255, rounded half to even (np.rint)."""
    tiles = _as_tiles(tiles, grid)
    if not hi != lo:
        raise EdgeRestoreError(f"merge_u8 needs hi != lo, got lo={lo} hi={hi}")
    c = tiles.shape[1]
    result, view, pitch = _output(out, grid, c, np.uint8)
    _check(load().er_merge_u8(tiles.ctypes.data, grid.height, grid.width, c, grid.tile, grid.overlap, grid.halo,
                              grid.ramp, lo, hi, view.ctypes.data, pitch, MERGE_PIXELWISE if pixelwise else 0),
           "merge")
    return result


def planes_from_u8(image: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """A whole uint8 HxWxC (or HxW) frame -> float32 planes (C, H, W): each value as
    :func:`extract` gives it (lo + (hi - lo) * pixel / 255)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise EdgeRestoreError("planes_from_u8 takes a uint8 numpy frame")
    frame = image[:, :, None] if image.ndim == 2 else image
    if frame.ndim != 3 or frame.shape[2] < 1:
        raise EdgeRestoreError(f"image must be HxW or HxWxC, got shape {image.shape}")
    frame, pitch = _frame_layout(frame)
    h, w, c = frame.shape
    out = np.empty((c, h, w), np.float32)
    _check(load().er_planes_from_u8(frame.ctypes.data, pitch, h, w, c, lo, hi, out.ctypes.data), "planes_from_u8")
    return out


def planes_to_u8(planes: np.ndarray, height: int, width: int, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """float32 planes (C, PH, PW) -> the top-left ``height`` x ``width`` as a uint8 HxWxC frame,
    each pixel as :func:`merge_u8` writes one that a single tile covers: (value - lo) / (hi - lo)
    clamped to [0, 1], times 255, rounded half to even."""
    if not isinstance(planes, np.ndarray) or planes.dtype != np.float32 or planes.ndim != 3:
        raise EdgeRestoreError("planes_to_u8 takes float32 planes (C, H, W)")
    if not hi != lo:
        raise EdgeRestoreError(f"planes_to_u8 needs hi != lo, got lo={lo} hi={hi}")
    planes = np.ascontiguousarray(planes)
    c, ph, pw = planes.shape
    if not (0 < height <= ph and 0 < width <= pw):
        raise EdgeRestoreError(f"a {width}x{height} frame does not fit in planes of {pw}x{ph}")
    out = np.empty((height, width, c), np.uint8)
    _check(load().er_planes_to_u8(planes.ctypes.data, ph, pw, height, width, c, lo, hi, out.ctypes.data,
                                  out.strides[0]), "planes_to_u8")
    return out
