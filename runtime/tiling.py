"""Tile geometry of the weighted-ramp merge (Path-Restore's, generalised).

Origins along an axis: ``range(0, L - T, S) + [L - T]`` with ``S = T - overlap``, so
the last tile sits flush with the border. A tile's merge weight along an axis is 1
in its interior; towards an edge that lies *inside* the image it is 0 over ``margin``
pixels (outputs that saw the tile's zero padding), then ramps (k+1)/(ramp+1); edges
on the image border are not attenuated. The 2-D weight is the min of the two axes.
With margin 0 and ramp 5 this is exactly Path-Restore's 63/53 mask.

The per-pixel extract/merge math itself lives in one C++/CUDA header (runtime/csrc/tiles.h),
bound by :mod:`runtime.tilelib`; this module only fixes the geometry both sides agree on.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def axis_origins(length: int, tile: int, stride: int) -> list[int]:
    if length == tile:
        return [0]
    return list(range(0, length - tile, stride)) + [length - tile]
