"""Tile geometry and the weighted-ramp merge (Path-Restore's, generalised).

Origins along an axis: ``range(0, L - T, S) + [L - T]`` with ``S = T - overlap``, so
the last tile sits flush with the border. A tile's merge weight along an axis is 1
in its interior; towards an edge that lies *inside* the image it is 0 over ``margin``
pixels (outputs that saw the tile's zero padding), then ramps (k+1)/(ramp+1); edges
on the image border are not attenuated. The 2-D weight is the min of the two axes.
With margin 0 and ramp 5 this is exactly Path-Restore's 63/53 mask.

NOTE: this numpy version is the CPU path until the C++/CUDA tile library replaces it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import EdgeRestoreError


@dataclass(frozen=True)
class TileGrid:
    height: int
    width: int
    tile: int
    overlap: int
    halo: int = 0
    ramp: int = 5

    def __post_init__(self):
        if self.tile <= 0 or not 0 <= self.overlap < self.tile:
            raise EdgeRestoreError(f"invalid tiling: tile {self.tile}, overlap {self.overlap} "
                                   "(need tile > 0 and 0 <= overlap < tile)")
        if self.height < self.tile or self.width < self.tile:
            raise EdgeRestoreError(f"image {self.width}x{self.height} is smaller than the {self.tile}x{self.tile} tile; "
                                   "use a smaller --tile or --whole")

    @property
    def ramp_width(self) -> int:
        return min(self.ramp, self.overlap // 2)

    @property
    def margin(self) -> int:
        """Zero-weight band: the halo, as far as the overlap leaves room for it."""
        return max(0, min(self.halo, self.overlap // 2 - self.ramp_width))

    @property
    def origins_y(self) -> list[int]:
        return axis_origins(self.height, self.tile, self.tile - self.overlap)

    @property
    def origins_x(self) -> list[int]:
        return axis_origins(self.width, self.tile, self.tile - self.overlap)

    def __len__(self) -> int:
        return len(self.origins_y) * len(self.origins_x)

    def axis_weights(self, origin: int, length: int) -> np.ndarray:
        """Weights along one axis of the tile at ``origin`` in an axis of ``length``."""
        d = np.arange(self.tile, dtype=np.float32)
        ramp = lambda dist: np.clip((dist - self.margin + 1) / (self.ramp_width + 1), 0.0, 1.0)
        low = np.ones_like(d) if origin == 0 else ramp(d)
        high = np.ones_like(d) if origin + self.tile == length else ramp(self.tile - 1 - d)
        return np.minimum(low, high)


def axis_origins(length: int, tile: int, stride: int) -> list[int]:
    if length == tile:
        return [0]
    return list(range(0, length - tile, stride)) + [length - tile]


def extract(image: np.ndarray, grid: TileGrid) -> np.ndarray:
    """HxWxC float image -> (N, C, T, T) tiles in row-major tile order."""
    windows = np.lib.stride_tricks.sliding_window_view(image, (grid.tile, grid.tile), axis=(0, 1))
    tiles = windows[np.ix_(grid.origins_y, grid.origins_x)]  # (ny, nx, C, T, T)
    return np.ascontiguousarray(tiles.reshape(-1, *tiles.shape[2:]), dtype=np.float32)


def merge(tiles: np.ndarray, grid: TileGrid) -> np.ndarray:
    """(N, C, T, T) tiles -> HxWxC float image, weighted average of the covering tiles."""
    channels, t = tiles.shape[1], grid.tile
    acc = np.zeros((channels, grid.height, grid.width), np.float64)
    norm = np.zeros((grid.height, grid.width), np.float64)
    wy = [grid.axis_weights(o, grid.height) for o in grid.origins_y]
    wx = [grid.axis_weights(o, grid.width) for o in grid.origins_x]
    index = 0
    for iy, oy in enumerate(grid.origins_y):
        for ix, ox in enumerate(grid.origins_x):
            w = np.minimum(wy[iy][:, None], wx[ix][None, :])
            acc[:, oy:oy + t, ox:ox + t] += w * tiles[index]
            norm[oy:oy + t, ox:ox + t] += w
            index += 1
    return (acc / norm).transpose(1, 2, 0).astype(np.float32)
