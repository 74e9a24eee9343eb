"""The C++/CUDA tile library (runtime/csrc, bound by runtime/tilelib.py).

The numpy reference here is written from the specification (REFERENCE.md 3, the issue), not
from runtime/tiling.py: origins range(0, L-T, S) + [L-T]; axis weight 1 on an image-border edge,
else clip((d - margin + 1) / (ramp_w + 1), 0, 1) from each inner edge; 2-D weight = min of the
axes; accumulate w * tile and w in tile order in float32, divide.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgerestore.runtime import tilelib
from edgerestore.runtime.errors import EdgeRestoreError
from edgerestore.runtime.tiling import TileGrid

CSRC = Path(__file__).resolve().parents[1] / "runtime" / "csrc"
F32 = np.float32


from tile_reference import ref_axis_weights, ref_extract, ref_merge, ref_origins, ref_to_u8  # noqa: E402


def test_reference_weights_are_path_restores_mask():
    ramp = np.array([(k + 1) / 6 for k in range(5)], F32)
    inner = ref_axis_weights(53, 300, 63, 10, 0, 5)
    assert np.array_equal(inner[:5], ramp) and np.array_equal(inner[-5:], ramp[::-1]) and np.all(inner[5:-5] == 1)
    assert np.all(ref_axis_weights(0, 300, 63, 10, 0, 5)[:5] == 1)  # image border: not attenuated
    assert ref_origins(200, 63, 10) == [0, 53, 106, 137]


# (height, width, channels, tile, overlap, halo, ramp)
GEOMETRIES = [
    (63, 63, 3, 63, 10, 0, 5),        # one tile
    (64, 97, 1, 63, 10, 0, 5),        # flush tile one pixel further
    (120, 131, 3, 63, 10, 0, 5),      # 120: the flush tile makes pixels 57..62 triple-covered
    (257, 301, 1, 64, 20, 5, 5),      # halo -> zero-weight margin
    (400, 333, 3, 128, 44, 17, 5),
    (100, 100, 3, 37, 0, 0, 5),       # no overlap
    (150, 170, 3, 48, 20, 3, 0),      # ramp 0: a step
    (70, 90, 1, 20, 19, 0, 2),        # stride 1: 20 covering tiles per axis (generic path)
    (1000, 1000, 3, 63, 10, 0, 5),
    (1080, 1920, 3, 63, 10, 0, 5),
]
IDS = [f"{h}x{w}x{c}-t{t}o{o}h{halo}r{r}" for h, w, c, t, o, halo, r in GEOMETRIES]


def _grid(h, w, t, o, halo, r) -> TileGrid:
    return TileGrid(h, w, t, o, halo, r)


# ---------------------------------------------------------------- (1) extract -> merge is exact
@pytest.mark.parametrize("h,w,c,t,o,halo,r", [g for g in GEOMETRIES if g[0] * g[1] <= 1_000_000] + [
    (999, 577, 1, 48, 16, 3, 5), (1000, 1000, 1, 96, 32, 8, 5)], ids=lambda v: str(v))
def test_extract_merge_reproduces_uint8_frames(h, w, c, t, o, halo, r):
    grid = _grid(h, w, t, o, halo, r)
    frame = np.random.default_rng(h * w + c).integers(0, 256, (h, w, c), dtype=np.uint8)
    tiles = tilelib.extract(frame, grid)
    assert tiles.shape == (len(grid), c, t, t) and tiles.dtype == F32
    assert np.array_equal(tilelib.merge_u8(tiles, grid), frame)
    if c == 3:  # another model range
        assert np.array_equal(tilelib.merge_u8(tilelib.extract(frame, grid, -1, 1), grid, -1, 1), frame)


def test_roundtrip_gray_2d_frame():
    frame = np.random.default_rng(3).integers(0, 256, (100, 130), dtype=np.uint8)
    grid = TileGrid(100, 130, 63, 10)
    assert np.array_equal(tilelib.merge_u8(tilelib.extract(frame, grid), grid)[..., 0], frame)


# ---------------------------------------------------------------- (2) merge == numpy reference
@pytest.mark.parametrize("h,w,c,t,o,halo,r", GEOMETRIES, ids=IDS)
def test_merge_equals_numpy_reference(h, w, c, t, o, halo, r):
    grid = _grid(h, w, t, o, halo, r)
    rng = np.random.default_rng(7)
    tiles = (rng.random((len(grid), c, t, t), dtype=F32) * F32(1.4) - F32(0.2))  # some out of [0, 1]
    ref32 = ref_merge(tiles, h, w, t, o, halo, r)
    out = tilelib.merge(tiles, grid)
    assert out.shape == (h, w, c) and out.dtype == F32
    np.testing.assert_allclose(out, ref_merge(tiles, h, w, t, o, halo, r, np.float64), rtol=0, atol=1e-6)
    assert np.array_equal(out, ref32)  # float32 in tile order: the same operations
    for lo, hi in [(0.0, 1.0), (-1.0, 1.0), (0.1, 0.8)]:
        assert np.array_equal(tilelib.merge_u8(tiles, grid, lo, hi), ref_to_u8(ref32, lo, hi)), (lo, hi)


@pytest.mark.parametrize("h,w,c,t,o,halo,r", [
    (257, 301, 3, 64, 20, 5, 5),   # zero-weight margins
    (120, 131, 3, 63, 10, 0, 5),   # triple cover by the flush tile, 1-6 pixel x segments at the right edge
    (97, 1000, 1, 63, 10, 0, 5),   # gray: the fused 1-channel kernel
    (90, 200, 2, 40, 12, 0, 3),    # 2 channels: the block kernel under AVX2 too
], ids=lambda v: str(v))
def test_merge_paths_and_instruction_sets_agree(monkeypatch, h, w, c, t, o, halo, r):
    """The SIMD paths (AVX2: the fused uint8 kernel for 1 and 3 channels, which writes ahead
    into segments to its right), the per-pixel path (what the CUDA kernels run) and the
    portable / AVX2 builds give identical bits, non-finite tile values included, and write
    nothing outside a pitched output crop."""
    grid = TileGrid(h, w, t, o, halo, r)
    tiles = np.random.default_rng(1).standard_normal((len(grid), c, t, t)).astype(F32)
    tiles.reshape(-1)[::997] = np.nan
    tiles.reshape(-1)[5::1009] = np.inf
    tiles.reshape(-1)[7::1013] = -np.inf
    results = []
    for isa in ("generic", "auto"):
        monkeypatch.setenv("EDGERESTORE_TILES_ISA", isa)
        assert isa == "auto" or tilelib.cpu_isa() == "generic"
        for pixelwise in (False, True):
            canvas = np.full((h + 3, w + 9, c), 7, np.uint8)
            tilelib.merge_u8(tiles, grid, -1, 1, out=canvas[1:h + 1, 2:w + 2], pixelwise=pixelwise)
            unit = tilelib.merge_u8(tiles, grid, pixelwise=pixelwise)
            results.append((tilelib.merge(tiles, grid, pixelwise=pixelwise).view(np.uint32),
                            canvas[1:h + 1, 2:w + 2].copy(), unit))
            canvas[1:h + 1, 2:w + 2] = 7
            assert np.all(canvas == 7), (isa, pixelwise)  # nothing written outside the crop
    for f, u, unit in results[1:]:
        assert np.array_equal(f, results[0][0]) and np.array_equal(u, results[0][1])
        assert np.array_equal(unit, results[0][2])


# ---------------------------------------------------------------- (3) extract == slicing
@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("lo,hi", [(0.0, 1.0), (-1.0, 1.0)])
def test_extract_equals_slicing(c, dtype, lo, hi):
    h, w, t, o = 131, 250, 63, 10
    rng = np.random.default_rng(c)
    frame = (rng.integers(0, 256, (h, w, c), dtype=np.uint8) if dtype == np.uint8
             else rng.standard_normal((h, w, c)).astype(F32))
    grid = TileGrid(h, w, t, o)
    tiles = tilelib.extract(frame, grid, lo, hi)
    assert np.array_equal(tiles, ref_extract(frame, t, o, lo, hi))
    if dtype == np.float32 and (lo, hi) == (0.0, 1.0):  # a plain copy, bit for bit
        assert np.array_equal(tiles, ref_extract(frame, t, o, 0, 1)) and np.array_equal(tiles[0, :, 0, :5],
                                                                                       frame[0, :5].T)


# ---------------------------------------------------------------- (3b) whole frames
@pytest.mark.parametrize("c", [1, 3, 4])
@pytest.mark.parametrize("lo,hi", [(0.0, 1.0), (-1.0, 1.0), (0.0, 255.0)])
def test_whole_frame_planes_equal_the_reference(c, lo, hi):
    h, w = 37, 61
    rng = np.random.default_rng(c)
    frame = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
    planes = tilelib.planes_from_u8(frame, lo, hi)
    expected = F32(lo) + (F32(hi) - F32(lo)) * (frame.astype(F32) / F32(255)).transpose(2, 0, 1)
    assert planes.shape == (c, h, w) and np.array_equal(planes, expected)
    assert np.array_equal(tilelib.planes_to_u8(planes, h, w, lo, hi), frame)  # the round trip is exact
    # A restored (padded) result: out-of-range values, halfway values, a crop of the planes.
    restored = np.concatenate([planes, planes[:, :5]], 1) * F32(1.3) - F32(0.1)
    restored[:, 0, :4] = F32(lo) + (F32(hi) - F32(lo)) * F32(0.5) / F32(255) * np.array([1, 3, 5, 7], F32)
    out = tilelib.planes_to_u8(restored, h, w - 2, lo, hi)
    assert np.array_equal(out, ref_to_u8(restored[:, :h, :w - 2].transpose(1, 2, 0), lo, hi))


@pytest.mark.parametrize("c", [1, 3])
def test_whole_frame_is_a_single_tile(c):
    """A square frame run whole and as one tile of its size: the same values both ways."""
    side = 64
    frame = np.random.default_rng(7).integers(0, 256, (side, side, c), dtype=np.uint8)
    grid = TileGrid(side, side, side, 0)
    assert np.array_equal(tilelib.planes_from_u8(frame, -1, 1), tilelib.extract(frame, grid, -1, 1)[0])
    restored = np.random.default_rng(8).uniform(-1.2, 1.2, (1, c, side, side)).astype(F32)
    assert np.array_equal(tilelib.planes_to_u8(restored[0], side, side, -1, 1),
                          tilelib.merge_u8(restored, grid, -1, 1))


def test_whole_frame_reads_pitched_frames_and_checks_arguments():
    parent = np.random.default_rng(9).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    crop = parent[5:75, 11:101]
    assert np.array_equal(tilelib.planes_from_u8(crop), tilelib.planes_from_u8(np.ascontiguousarray(crop)))
    with pytest.raises(EdgeRestoreError, match="uint8"):
        tilelib.planes_from_u8(crop.astype(F32))
    with pytest.raises(EdgeRestoreError, match="does not fit"):
        tilelib.planes_to_u8(np.zeros((3, 10, 10), F32), 11, 10)
    with pytest.raises(EdgeRestoreError, match="hi != lo"):
        tilelib.planes_to_u8(np.zeros((3, 10, 10), F32), 10, 10, 1.0, 1.0)


# ---------------------------------------------------------------- (4) pitched frames
@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_pitched_source_is_read_in_place(c, dtype):
    rng = np.random.default_rng(4)
    parent = (rng.integers(0, 256, (300, 420, c), dtype=np.uint8) if dtype == np.uint8
              else rng.random((300, 420, c), dtype=F32))
    crop = parent[17:217, 33:364]  # rows parent.strides[0] bytes apart, start inside the parent
    grid = TileGrid(200, 331, 63, 10)
    view, pitch = tilelib._frame_layout(crop)
    assert view.ctypes.data == crop.ctypes.data and pitch == parent.strides[0]  # no copy
    assert np.array_equal(tilelib.extract(crop, grid), tilelib.extract(np.ascontiguousarray(crop), grid))
    assert np.array_equal(tilelib.extract(crop, grid), ref_extract(crop, 63, 10, 0, 1))


def test_other_layouts_are_copied_and_pitched_output():
    frame = np.random.default_rng(5).integers(0, 256, (120, 140, 3), dtype=np.uint8)
    grid = TileGrid(120, 140, 63, 10)
    bgr = frame[..., ::-1]  # negative channel stride: copied, still right
    assert np.array_equal(tilelib.extract(bgr, grid), ref_extract(np.ascontiguousarray(bgr), 63, 10, 0, 1))
    tiles = tilelib.extract(frame, grid)
    canvas = np.full((200, 300, 3), 7, np.uint8)
    result = tilelib.merge_u8(tiles, grid, out=canvas[40:160, 100:240])
    assert result.base is canvas and np.array_equal(canvas[40:160, 100:240], frame)
    canvas[40:160, 100:240] = 7
    assert np.all(canvas == 7)  # nothing written outside the crop
    framef = np.zeros((120, 2 * 140, 3), F32)[:, ::2]  # pixel stride 2: not writable in place
    with pytest.raises(EdgeRestoreError, match="dense pixels"):
        tilelib.merge(tiles, grid, out=framef)


def test_validation_errors_are_clear():
    grid = TileGrid(100, 100, 63, 10)
    tiles = np.zeros((len(grid), 3, 63, 63), F32)
    with pytest.raises(EdgeRestoreError, match="float32"):
        tilelib.merge(tiles.astype(np.float64), grid)
    with pytest.raises(EdgeRestoreError, match="shape"):
        tilelib.merge(tiles[:-1], grid)
    with pytest.raises(EdgeRestoreError, match="uint8 or float32"):
        tilelib.extract(np.zeros((100, 100, 3), np.float64), grid)
    with pytest.raises(EdgeRestoreError, match="grid is for"):
        tilelib.extract(np.zeros((90, 100, 3), np.uint8), grid)
    with pytest.raises(EdgeRestoreError, match="hi != lo"):
        tilelib.merge_u8(tiles, grid, 1.0, 1.0)
    with pytest.raises(EdgeRestoreError, match="invalid tiling"):
        tilelib.merge(tiles, TileGrid(100, 100, 63, 10, halo=-1))
    assert tilelib.merge(np.ascontiguousarray(tiles.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2), grid).shape \
        == (100, 100, 3)  # non-contiguous tiles are copied


def test_missing_library_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGERESTORE_TILELIB", str(tmp_path))
    with pytest.raises(EdgeRestoreError, match="EDGERESTORE_TILELIB"):
        tilelib.library_path()


# ---------------------------------------------------------------- (5) CUDA build: sm_87 code
def _find_tool(name: str) -> str | None:
    env = os.environ.get(name.upper())
    if env and Path(env).is_file():
        return env
    found = shutil.which(name)
    if found:
        return found
    for home in [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda",
                 *sorted(str(p) for p in Path("/usr/local").glob("cuda-*"))]:
        if home and (Path(home) / "bin" / name).is_file():
            return str(Path(home) / "bin" / name)
    return None


def fatbin_entries(blob: bytes) -> list[tuple[str, int]]:
    """(kind, sm) of every entry of the fatbin containers in blob: kind 'elf' (SASS) or 'ptx'.
    Container: u32 magic 0xBA55ED50, u16 version, u16 header size, u64 size; entries: u16 kind
    (1 PTX, 2 ELF), u16, u32 header size, u64 payload size, ..., u32 sm at offset 0x1C."""
    entries, pos = [], 0
    while pos + 16 <= len(blob):
        magic, _, header, size = struct.unpack_from("<IHHQ", blob, pos)
        if magic != 0xBA55ED50:
            break
        entry, end = pos + header, pos + header + size
        while entry < end:
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", blob, entry)
            (sm,) = struct.unpack_from("<I", blob, entry + 0x1C)
            entries.append(({1: "ptx", 2: "elf"}.get(kind, str(kind)), sm))
            entry += entry_header + payload
        pos = (end + 7) & ~7
    return entries


def device_code(path: Path) -> list[tuple[str, int]]:
    """Device code in a fatbin file or in an ELF shared library's .nv_fatbin section."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF":
        return fatbin_entries(data)
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    entsize, count, names = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", data, shoff + i * entsize) for i in range(count)]
    strtab = sections[names][4]
    for name, _, _, _, offset, size in sections:
        if data[strtab + name:data.index(b"\0", strtab + name)] == b".nv_fatbin":
            return fatbin_entries(data[offset:offset + size])
    return []


def cuobjdump_elves(path: Path) -> list[int] | None:
    tool = _find_tool("cuobjdump")
    if tool is None:
        return None
    listing = subprocess.run([tool, "--list-elf", str(path)], capture_output=True, text=True, check=True).stdout
    return sorted(int(part.split(".")[0]) for part in listing.split("sm_")[1:])


@pytest.fixture(scope="module")
def nvcc() -> str:
    tool = _find_tool("nvcc")
    if tool is None:
        pytest.skip("nvcc not found (no CUDA toolkit): the CUDA tile kernels cannot be compiled here")
    return tool


def test_cuda_source_compiles_to_sm87(nvcc, tmp_path):
    fatbin = tmp_path / "tiles.fatbin"
    subprocess.run([nvcc, "-fatbin", "-std=c++17", "--fmad=false", "-gencode", "arch=compute_87,code=sm_87",
                    "-I", str(CSRC), str(CSRC / "tiles_cuda.cu"), "-o", str(fatbin)], check=True,
                   capture_output=True)
    assert ("elf", 87) in device_code(fatbin)
    listed = cuobjdump_elves(fatbin)
    assert listed is None or listed == [87]


def test_built_cuda_library_holds_sm87(nvcc):
    path = tilelib.cuda_library_path()
    if path is None:
        pytest.skip("the CUDA tile library was not built (EDGERESTORE_CUDA=OFF, or CMake found no toolkit)")
    code = device_code(path)
    assert ("elf", 87) in code, code
    listed = cuobjdump_elves(path)
    assert listed is None or 87 in listed, listed


# ---------------------------------------------------------------- (6) GPU run
def _cuda_gpus() -> int:
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


class _Device:
    """Device buffers through the CUDA tile library's helpers (no other CUDA binding needed)."""

    def __init__(self, lib):
        self.lib, self.buffers = lib, []

    def upload(self, array: np.ndarray) -> int:
        ptr = self.empty(array.nbytes)
        assert self.lib.er_cuda_memcpy_htod(ptr, array.ctypes.data, array.nbytes) == 0
        return ptr

    def empty(self, nbytes: int) -> int:
        ptr = self.lib.er_cuda_malloc(nbytes)
        assert ptr, self.lib.er_cuda_error_string(self.lib.er_cuda_last_error())
        self.buffers.append(ptr)
        return ptr

    def download(self, ptr: int, like: np.ndarray) -> np.ndarray:
        out = np.empty_like(like)
        assert self.lib.er_cuda_memcpy_dtoh(out.ctypes.data, ptr, out.nbytes) == 0
        return out

    def free(self):
        for ptr in self.buffers:
            self.lib.er_cuda_free(ptr)


def test_gpu_kernels_equal_the_cpu_library():
    if _cuda_gpus() == 0:
        pytest.skip("no CUDA GPU")
    lib = tilelib.load_cuda()
    if lib is None:
        pytest.skip("the CUDA tile library was not built")
    assert lib.er_cuda_device_count() > 0
    dev = _Device(lib)
    try:
        for h, w, c, t, o, halo, r in [(1080, 1920, 3, 63, 10, 0, 5), (257, 301, 1, 64, 20, 5, 5),
                                       (120, 131, 3, 63, 10, 0, 5), (70, 90, 1, 20, 19, 0, 2)]:
            grid = TileGrid(h, w, t, o, halo, r)
            frame = np.random.default_rng(h).integers(0, 256, (h, w, c), dtype=np.uint8)
            tiles = np.empty((len(grid), c, t, t), F32)
            d_frame, d_tiles = dev.upload(frame), dev.empty(tiles.nbytes)
            assert lib.er_cuda_extract_u8(d_frame, w * c, h, w, c, t, o, 0.0, 1.0, d_tiles, None) == 0
            assert lib.er_cuda_synchronize(None) == 0
            assert np.array_equal(dev.download(d_tiles, tiles), tilelib.extract(frame, grid))
            restored = np.random.default_rng(w).standard_normal(tiles.shape).astype(F32)
            d_rest = dev.upload(restored)
            d_out8, d_outf = dev.empty(frame.nbytes), dev.empty(frame.size * 4)
            assert lib.er_cuda_merge_u8(d_rest, h, w, c, t, o, halo, r, -1.0, 1.0, d_out8, w * c, None) == 0
            assert lib.er_cuda_merge_f32(d_rest, h, w, c, t, o, halo, r, d_outf, w * c * 4, None) == 0
            assert lib.er_cuda_synchronize(None) == 0
            assert np.array_equal(dev.download(d_out8, frame), tilelib.merge_u8(restored, grid, -1, 1))
            gpu_f = dev.download(d_outf, np.empty((h, w, c), F32))
            assert np.array_equal(gpu_f.view(np.uint32), tilelib.merge(restored, grid).view(np.uint32))
            framef = frame.astype(F32) / F32(255)
            d_framef = dev.upload(framef)
            assert lib.er_cuda_extract_f32(d_framef, w * c * 4, h, w, c, t, o, 0.0, 1.0, d_tiles, None) == 0
            assert lib.er_cuda_synchronize(None) == 0
            assert np.array_equal(dev.download(d_tiles, tiles), tilelib.extract(framef, grid))
    finally:
        dev.free()
