"""The route map picture over the image: how much of the full network each tile ran
(switches with a cheap branch, e.g. bypass/complex), or which chain of branches each tile
took (switches that pick among equals, e.g. one tool out of twelve)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .executor import switches
from .optional import require
from .session import Result

PURPOSE = "drawing a route map (--route-map)"

# Categorical colours (RGB), one per branch index of a switch; repeats past the end.
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (255, 215, 0), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120)]


def route_map(image: np.ndarray, record: Result, plan: list[dict[str, Any]] | None = None) -> np.ndarray:
    """uint8 HxWxC image + the last restore's record -> uint8 HxWx3 picture.

    Each tile is painted with its executed share of the full-path compute (viridis:
    dark = cheap, yellow = full path) over a grayscale copy of the image; tile borders
    are drawn so individual decisions stay visible. When ``plan`` has a switch without a
    cheap branch, tiles are coloured by their first branch and labelled with their chain
    instead (:func:`chains`).
    """
    cv2 = require("cv2", PURPOSE)
    grid = record.grid
    if grid is None:
        raise ValueError("route maps need a tiled restore")
    if plan is not None and any(s.get("cheap") is None for s in switches(plan).values()):
        return _chain_map(image, record, plan)
    n = len(grid)
    share = (record.macs / record.full_macs).reshape(-1, n).mean(0)  # planes of a gray model averaged
    heat = np.zeros((grid.height, grid.width), np.float32)
    for (oy, ox), value in zip(_origins(record), share):
        heat[oy:oy + grid.tile, ox:ox + grid.tile] = value
    colors = cv2.applyColorMap(np.rint(heat * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)[..., ::-1]
    return _outline(_overlay(image, colors), record)


def chains(record: Result, plan: list[dict[str, Any]]) -> list[str]:
    """Per tile (first plane), the labels of the branches it ran, in plan order, joined by
    '>' (a branch's ``label``, else its name; stop branches and unreached switches add
    nothing; '-' = no branch ran)."""
    return [">".join(str(b.get("label", b["name"])) for b in taken) or "-" for taken in _taken(record, plan)]


def _taken(record: Result, plan: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Per tile (first plane), the non-stop branches it ran, in plan order."""
    steps = switches(plan)
    names = [name for name in steps if name in record.decisions]
    out = []
    for row in range(len(record.grid)):
        choices = [(steps[name], int(record.decisions[name][row])) for name in names]
        out.append([s["branches"][c] for s, c in choices if c >= 0 and not s["branches"][c].get("stop")])
    return out


def _chain_map(image: np.ndarray, record: Result, plan: list[dict[str, Any]]) -> np.ndarray:
    """Each tile's cell (the part no later tile covers) coloured by the first branch of its
    chain (a fixed colour per branch index; gray: no branch ran) and labelled with the chain."""
    cv2 = require("cv2", PURPOSE)
    grid = record.grid
    first_switch = next(iter(switches(plan).values()))
    index = {id(b): i for i, b in enumerate(first_switch["branches"])}
    colors = np.zeros((grid.height, grid.width, 3), np.uint8)
    cells = _cells(record)
    for (y0, y1, x0, x1), taken in zip(cells, _taken(record, plan)):
        first = index.get(id(taken[0])) if taken else None
        colors[y0:y1, x0:x1] = PALETTE[first % len(PALETTE)] if first is not None else (60, 60, 60)
    picture = _overlay(image, colors)
    for (y0, y1, x0, x1), chain in zip(cells, chains(record, plan)):
        cv2.rectangle(picture, (x0, y0), (x1 - 1, y1 - 1), (255, 255, 255), 1)
        for color, width in (((0, 0, 0), 3), ((255, 255, 255), 1)):
            cv2.putText(picture, chain, (x0 + 3, y0 + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, color, width, cv2.LINE_AA)
    return picture


def _cells(record: Result) -> list[tuple[int, int, int, int]]:
    """Per tile, ``(y0, y1, x0, x1)`` from its origin to the next tile's origin (or the border)."""
    grid = record.grid
    ys = [*grid.origins_y, grid.height]
    xs = [*grid.origins_x, grid.width]
    return [(ys[i], ys[i + 1], xs[j], xs[j + 1]) for i in range(len(ys) - 1) for j in range(len(xs) - 1)]


def _origins(record: Result) -> list[tuple[int, int]]:
    return [(oy, ox) for oy in record.grid.origins_y for ox in record.grid.origins_x]


def _overlay(image: np.ndarray, colors: np.ndarray) -> np.ndarray:
    gray = image.mean(axis=2, keepdims=True) if image.ndim == 3 else image[..., None]
    return np.ascontiguousarray((0.45 * gray + 0.55 * colors).astype(np.uint8))


def _outline(picture: np.ndarray, record: Result) -> np.ndarray:
    cv2 = require("cv2", PURPOSE)
    t = record.grid.tile
    for oy, ox in _origins(record):
        cv2.rectangle(picture, (ox, oy), (ox + t - 1, oy + t - 1), (255, 255, 255), 1)
    return picture
