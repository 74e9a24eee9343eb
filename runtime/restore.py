"""Frames in, frames out: tiling (or whole-image padding) around the plan executor."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .bundle import Bundle
from .errors import EdgeRestoreError
from .executor import Executor, RoutePolicy, switches
from .tilelib import extract, merge
from .tiling import TileGrid

ROUTE_POLICIES = ("tile", "vote", "soft", "soft-vote")
# Soft policies: switches that declare "blend" mix their two most probable branches.
SOFT_BRANCHES = 2

PhaseHook = Callable[[str, float], None]  # (phase, seconds): "extract" / "merge" of the tile library


@dataclass
class RouteRecord:
    """What the last restore executed: per row (tile, or image in whole mode) the
    branch taken at each switch, and executed vs full-path MACs."""

    grid: TileGrid | None
    decisions: dict[str, np.ndarray]
    macs: np.ndarray
    full_macs: float  # per row, every switch on its most expensive branch

    @property
    def mac_ratio(self) -> float:
        """Executed compute as a share of the full (all-complex) path."""
        return float(self.macs.sum() / (self.full_macs * len(self.macs))) if self.full_macs else 1.0

    def cheap_share(self, plan: list[dict]) -> float | None:
        """Share of (row, switch) decisions that took the switch's cheap branch (bypass)."""
        steps = switches(plan)
        taken = [(choice[choice >= 0] == steps[name]["cheap"]) for name, choice in self.decisions.items()
                 if steps.get(name, {}).get("cheap") is not None]
        return float(np.concatenate(taken).mean()) if taken else None


@dataclass(frozen=True)
class TileSettings:
    tile: int
    overlap: int
    halo: int
    ramp: int
    fixed: bool
    explicit: bool  # chosen by the user: never shrunk to fit a small image


class Restorer:
    """Restore float HxWxC images (values in [0, 1]) with one bundle.

    ``tile``/``overlap`` override the bundle's defaults; ``whole=True`` runs the full
    image at once (padded to the size multiple) where the model allows it; ``whole=None``
    (the default) follows the bundle: whole images for models that declare it, unless
    ``tile``/``overlap`` ask for tiles. Images are float in [0, 1] (``imageio.to_float``);
    the restorer maps them to the model's value range and back.
    ``route_policy``: ``"tile"`` (each tile follows its own router) or ``"vote"`` (at every
    switch all tiles of an image take the majority branch); ``"soft"`` / ``"soft-vote"``: as
    those, but switches that declare ``blend`` mix their two most probable branches (per tile,
    or by the image's mean probabilities); see :class:`RoutePolicy`.
    """

    def __init__(self, bundle: Bundle | str, backend: str = "auto", precision: str | None = None,
                 tile: int | None = None, overlap: int | None = None, whole: bool | None = None, batch_size: int = 16,
                 min_confidence: float = 0.5, route_policy: str = "tile"):
        if route_policy not in ROUTE_POLICIES:
            raise EdgeRestoreError(f"unknown route policy '{route_policy}'; use one of {', '.join(ROUTE_POLICIES)}")
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
        self.executor = Executor(self.bundle, backend, precision,
                                 RoutePolicy(min_confidence, vote=route_policy in ("vote", "soft-vote"),
                                             blend=SOFT_BRANCHES if route_policy.startswith("soft") else 1))
        self.executor.load_all()
        defaults = self.bundle.tiling
        if whole is None:
            whole = bool(defaults.get("whole")) and tile is None and overlap is None
        if whole and defaults.get("fixed"):
            raise EdgeRestoreError(f"model '{self.bundle.name}' runs on fixed {defaults['tile']}x{defaults['tile']} "
                                   "tiles; --whole is not available for it")
        if tile is not None and defaults.get("fixed") and tile != defaults["tile"]:
            raise EdgeRestoreError(f"model '{self.bundle.name}' only runs on {defaults['tile']}x{defaults['tile']} tiles")
        tile_size = tile if tile is not None else int(defaults["tile"])
        if overlap is None:
            overlap = int(defaults["overlap"])
            if tile is not None and overlap >= tile:
                raise EdgeRestoreError(f"--tile {tile} is not larger than the default overlap {overlap} of "
                                       f"'{self.bundle.name}'; pass a smaller --overlap too")
        multiple = int(self.bundle.io.get("size_multiple", 1))
        if tile_size % multiple:
            raise EdgeRestoreError(f"--tile {tile_size} must be a multiple of {multiple} for '{self.bundle.name}'")
        self.whole = whole
        self.tiles = TileSettings(tile_size, overlap, int(defaults.get("halo", 0)), int(defaults.get("ramp", 5)),
                                  bool(defaults.get("fixed")), tile is not None)
        self.batch_size = max(1, batch_size)
        self.seconds = 0.0  # time spent restoring, accumulated across calls
        self.route: RouteRecord | None = None  # of the last call
        self._grid: TileGrid | None = None
        # Around the tile library's extract and merge, as the executor's stage_hooks are
        # around each stage: the profiler times the frame from the calls that run it.
        self.phase_hooks: list[PhaseHook] = []
        # One frame at a time: the executor's plan state, the stage runners (an OpenVINO infer
        # request, a TensorRT context) and `route` belong to the call in progress.
        self._busy = threading.Lock()

    @property
    def backend(self) -> str:
        return self.executor.backend

    @property
    def precision(self) -> str:
        return self.executor.precision

    def restore(self, image: np.ndarray) -> np.ndarray:
        """HxWxC float image in [0, 1] (C = 1 or 3) -> restored HxWxC float32 image, unclipped.
        A Restorer restores one image at a time: a call while another thread's call runs is
        refused (use one Restorer per thread)."""
        if not self._busy.acquire(blocking=False):
            raise EdgeRestoreError("this Restorer is already restoring an image on another thread; "
                                   "a Restorer runs one image at a time: create one per thread")
        try:
            return self._restore(image)
        finally:
            self._busy.release()

    def _restore(self, image: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        low, high = self.bundle.io.get("range", (0.0, 1.0))
        planes = self._to_model_channels(np.asarray(image, np.float32))
        if (low, high) != (0.0, 1.0):  # e.g. [-1, 1] for GAN generators
            planes = planes * np.float32(high - low) + np.float32(low)
        out = self._restore_whole(planes) if self.whole else self._restore_tiled(planes)
        if (low, high) != (0.0, 1.0):
            out = (out - np.float32(low)) / np.float32(high - low)
        result = self._from_model_channels(out, image.shape[2])
        self.seconds += time.perf_counter() - start
        return result

    def _to_model_channels(self, image: np.ndarray) -> np.ndarray:
        """-> (B, H, W, C_model): a gray model restores each color plane as its own image."""
        c, wanted = image.shape[2], self.bundle.channels
        if c == wanted:
            return image[None]
        if wanted == 1:
            return image.transpose(2, 0, 1)[..., None]
        if c == 1:
            return np.repeat(image, wanted, axis=2)[None]
        raise EdgeRestoreError(f"model '{self.bundle.name}' takes {wanted}-channel images, got {c} channels")

    def _from_model_channels(self, planes: np.ndarray, channels: int) -> np.ndarray:
        """Inverse of :meth:`_to_model_channels`."""
        if len(planes) > 1:  # color planes restored one by one by a gray model
            return planes[..., 0].transpose(1, 2, 0)
        if planes.shape[-1] != channels:  # gray image through a color model
            return planes[0].mean(axis=2, keepdims=True)
        return planes[0]

    def _restore_whole(self, planes: np.ndarray) -> np.ndarray:
        b, h, w, c = planes.shape
        m = int(self.bundle.io.get("size_multiple", 1))
        ph, pw = -h % m, -w % m
        # "constant": zeros in the model's range, as e.g. DeblurGAN-v2's predictor pads.
        mode = "constant" if self.bundle.io.get("pad") == "constant" or min(h, w) <= max(ph, pw) else "reflect"
        x = np.pad(planes, ((0, 0), (0, ph), (0, pw), (0, 0)), mode=mode) if ph or pw else planes
        self._grid = None
        y = self._run(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        return y.transpose(0, 2, 3, 1)[:, :h, :w]

    def _restore_tiled(self, planes: np.ndarray) -> np.ndarray:
        b, h, w, c = planes.shape
        t = self.tiles
        tile = t.tile
        if not t.fixed and not t.explicit:
            tile = min(tile, h, w)  # a default tile never refuses a small image
            multiple = int(self.bundle.io.get("size_multiple", 1))
            tile = max(tile - tile % multiple, min(multiple, tile))  # ... nor breaks the size multiple
        overlap = min(t.overlap, tile - 1)  # only binds when the default tile shrank
        grid = TileGrid(h, w, tile, overlap, t.halo, t.ramp)
        self._grid = grid
        start = time.perf_counter()
        tiles = np.concatenate([extract(plane, grid) for plane in planes])
        self._phase("extract", start)
        out = self._run(tiles, image_rows=len(grid))
        n = len(grid)
        start = time.perf_counter()
        merged = np.stack([merge(out[i * n:(i + 1) * n], grid) for i in range(b)])
        self._phase("merge", start)
        return merged

    def _phase(self, name: str, start: float) -> None:
        seconds = time.perf_counter() - start
        for hook in self.phase_hooks:
            hook(name, seconds)

    def _run(self, batch: np.ndarray, image_rows: int = 1) -> np.ndarray:
        io = self.bundle.io
        outputs, traces = [], []
        # A vote decides over all tiles of one image: they go through one executor run.
        chunk = image_rows if self.executor.policy.vote else self.batch_size
        for start in range(0, len(batch), chunk):
            env = self.executor.run({io["input"]: batch[start:start + chunk]})
            outputs.append(env[io["output"]])
            traces.append(self.executor.trace)
        # A switch that no row of a chunk reached (all stopped before it) is absent from that
        # chunk's trace: -1 there, as for unreached rows.
        names = dict.fromkeys(name for trace in traces for name in trace.decisions)
        decisions = {name: np.concatenate([t.decisions.get(name, np.full(len(t.macs), -1)) for t in traces])
                     for name in names}
        self.route = RouteRecord(self._grid, decisions, np.concatenate([t.macs for t in traces]),
                                 self.executor.full_path_macs(batch.shape[1:]))
        return np.concatenate(outputs)
