"""The route map picture: how much of the full network each tile ran, over the image."""

from __future__ import annotations

import cv2
import numpy as np

from .restore import RouteRecord


def route_map(image: np.ndarray, record: RouteRecord) -> np.ndarray:
    """uint8 HxWxC image + the last restore's record -> uint8 HxWx3 picture.

    Each tile is painted with its executed share of the full-path compute (viridis:
    dark = cheap, yellow = full path) over a grayscale copy of the image; tile borders
    are drawn so individual decisions stay visible.
    """
    grid = record.grid
    if grid is None:
        raise ValueError("route maps need a tiled restore")
    n = len(grid)
    share = (record.macs / record.full_macs).reshape(-1, n).mean(0)  # planes of a gray model averaged
    heat = np.zeros((grid.height, grid.width), np.float32)
    index = 0
    for oy in grid.origins_y:
        for ox in grid.origins_x:
            heat[oy:oy + grid.tile, ox:ox + grid.tile] = share[index]
            index += 1
    colors = cv2.applyColorMap(np.rint(heat * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)[..., ::-1]
    gray = image.mean(axis=2, keepdims=True) if image.ndim == 3 else image[..., None]
    picture = (0.45 * gray + 0.55 * colors).astype(np.uint8)
    picture = np.ascontiguousarray(picture)
    for oy in grid.origins_y:
        for ox in grid.origins_x:
            cv2.rectangle(picture, (ox, oy), (ox + grid.tile - 1, oy + grid.tile - 1), (255, 255, 255), 1)
    return picture
