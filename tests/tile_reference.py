"""The numpy reference of the tile math (origins, ramp weights, extract, merge).

The runtime uses the C++/CUDA library (runtime/csrc/tiles.h); this straightforward version
exists only so the tests can check the library against something written independently.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32


def ref_origins(length: int, tile: int, overlap: int) -> list[int]:
    if length == tile:
        return [0]
    stride = tile - overlap
    return list(range(0, length - tile, stride)) + [length - tile]


def ref_axis_weights(origin: int, length: int, tile: int, overlap: int, halo: int, ramp: int) -> np.ndarray:
    ramp_w = min(ramp, overlap // 2)
    margin = max(0, min(halo, overlap // 2 - ramp_w))
    d = np.arange(tile)

    def inner(dist):  # distance from an inner edge -> weight, in float32 as the library does
        return np.clip((dist - margin + 1).astype(F32) / F32(ramp_w + 1), F32(0), F32(1))

    low = np.ones(tile, F32) if origin == 0 else inner(d)
    high = np.ones(tile, F32) if origin + tile == length else inner(tile - 1 - d)
    return np.minimum(low, high)


def ref_merge(tiles: np.ndarray, h: int, w: int, tile: int, overlap: int, halo: int, ramp: int,
              dtype=F32) -> np.ndarray:
    """Straightforward accumulate w * tile and w over the tiles in order, divide -> HWC."""
    c = tiles.shape[1]
    acc = np.zeros((c, h, w), dtype)
    norm = np.zeros((h, w), dtype)
    n = 0
    for oy in ref_origins(h, tile, overlap):
        wy = ref_axis_weights(oy, h, tile, overlap, halo, ramp)
        for ox in ref_origins(w, tile, overlap):
            wx = ref_axis_weights(ox, w, tile, overlap, halo, ramp)
            wgt = np.minimum(wy[:, None], wx[None, :]).astype(dtype)
            acc[:, oy:oy + tile, ox:ox + tile] += wgt * tiles[n].astype(dtype)
            norm[oy:oy + tile, ox:ox + tile] += wgt
            n += 1
    assert n == len(tiles)
    return (acc / norm).transpose(1, 2, 0)


def ref_to_u8(value: np.ndarray, lo: float, hi: float) -> np.ndarray:
    lo, hi = F32(lo), F32(hi)
    return np.rint(np.clip((value - lo) / (hi - lo), F32(0), F32(1)) * F32(255)).astype(np.uint8)


def ref_extract(image: np.ndarray, tile: int, overlap: int, lo: float, hi: float) -> np.ndarray:
    h, w, _ = image.shape
    x = image.astype(F32) / F32(255) if image.dtype == np.uint8 else image.astype(F32)
    tiles = [x[oy:oy + tile, ox:ox + tile].transpose(2, 0, 1)
             for oy in ref_origins(h, tile, overlap) for ox in ref_origins(w, tile, overlap)]
    return F32(lo) + (F32(hi) - F32(lo)) * np.stack(tiles)
