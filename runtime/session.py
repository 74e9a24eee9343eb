"""The session: what an application embeds to restore frames with one bundle.

    import edgerestore

    with edgerestore.load("pr.bundle", backend="openvino", memory_budget=1024) as session:
        clean = session.restore(frame)            # numpy in, numpy out: same dtype and layout
        result = session.run(frame)               # the frame as result.image, plus what ran

A frame is HxW or HxWxC (C = 1, 3, or 4 with alpha passed through), uint8, uint16 or float32
in [0, 1], RGB or (``order="BGR"``) OpenCV's BGR (:mod:`.frames`). Tiled models cut it into
overlapping tiles, band by band of tile rows (:mod:`.scheduler`): uint8 frames go through the
tile library from the first byte to the last (extract from the frame, fused uint8 merge into
the output frame; a frame run whole: one tile the frame's size, converted to planes and back
in one pass each); uint16 and float frames take the float path. Memory stays within
``memory_budget`` MB whatever the frame size or routing policy (:mod:`.budget`).

Threads: a session is internally locked; calls from several threads run one at a time. For
frames in parallel, load one session per thread.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from . import backends, frames
from .budget import DEFAULT_BUDGET_MB, MemoryPlan, plan_memory, stage_row_bytes
from .buckets import BucketedStage, BufferPool, StageHook
from .bundle import Bundle
from .errors import EdgeRestoreError
from .executor import PlanContext, RoutePolicy, full_path_macs, switches
from .scheduler import Chunk, DecisionHook, Scheduler
from .tilelib import extract, merge, merge_u8, planes_from_u8, planes_to_u8
from .tiling import TileGrid

ROUTE_POLICIES = ("tile", "vote", "soft", "soft-vote")
SOFT_BRANCHES = 2  # soft policies mix the two most probable branches of switches that declare "blend"
PhaseHook = Callable[[str, float], None]  # ("extract" | "merge", seconds)


@dataclass
class Result:
    """What one call restored and how: the frame, and per row (tile, or image in whole mode;
    plane after plane for a gray model on a colour frame) the branch each switch took and the
    multiply-accumulates executed."""

    image: np.ndarray
    grid: TileGrid | None
    decisions: dict[str, np.ndarray]  # switch -> branch per row, -1 where not reached
    macs: np.ndarray
    full_macs: float  # per row, every switch on its most expensive branch
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, dict[int, int]] = field(default_factory=dict)  # stage -> bucket size -> backend calls
    padded_rows: int = 0
    spilled_bytes: int = 0  # a vote's chunks written to disk while it waited (and read back)
    spill_seconds: float = 0.0  # the time those writes and reads took

    @property
    def gmac(self) -> float:
        return float(self.macs.sum()) / 1e9

    @property
    def full_gmac(self) -> float:
        return self.full_macs * len(self.macs) / 1e9

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


def load(bundle: str | Path | Bundle, backend: str = "auto", precision: str | None = None,
         memory_budget: float = DEFAULT_BUDGET_MB, threads: int | None = None, **options: Any) -> Session:
    """Open ``bundle`` for restoring frames: the session loads every stage now, so a broken
    bundle or backend fails here, not at the first frame. ``memory_budget`` (MB) bounds the
    memory frames take beyond the loaded model; ``threads`` the backend's threads (default:
    the backend's choice). Options: ``tile``, ``overlap``, ``whole`` (None: as the bundle
    says), ``min_confidence``, ``route_policy`` (tile, vote, soft, soft-vote)."""
    return Session(bundle, backend, precision, memory_budget, threads, **options)


class Session:
    def __init__(self, bundle: str | Path | Bundle, backend: str = "auto", precision: str | None = None,
                 memory_budget: float = DEFAULT_BUDGET_MB, threads: int | None = None, tile: int | None = None,
                 overlap: int | None = None, whole: bool | None = None, min_confidence: float = 0.5,
                 route_policy: str = "tile"):
        if route_policy not in ROUTE_POLICIES:
            raise EdgeRestoreError(f"unknown route policy '{route_policy}'; use one of {', '.join(ROUTE_POLICIES)}")
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
        self.backend = backends.resolve(backend)
        available = backends.precisions(self.backend, self.bundle)  # a device backend: what has engines
        self.precision = precision or (available[0] if available else "fp32")
        if self.precision not in available:
            raise EdgeRestoreError(f"bundle '{self.bundle.root}' has no {self.precision} stages "
                                   f"(has: {', '.join(available) or 'none'})")
        self.memory_budget = float(memory_budget)
        plan_memory(self.bundle, self.memory_budget, 1)  # a budget below the minimum fails here, not at a frame
        self.route_policy = route_policy
        policy = RoutePolicy(min_confidence, vote=route_policy in ("vote", "soft-vote"),
                             blend=SOFT_BRANCHES if route_policy.startswith("soft") else 1)
        self.context = PlanContext(self.bundle, policy)
        self.tiles, self.whole = _tile_settings(self.bundle, tile, overlap, whole)
        self._whole_asked = bool(whole)  # --whole: an image that does not fit is an error, not tiles
        self._runners = {name: backends.open_stage(self.backend, self.bundle, name, self.precision, threads=threads)
                         for name in self.bundle.stages}
        self._stages: dict[tuple[int, int], dict[str, BucketedStage]] = {}  # by row size (H, W)
        self._buffers = BufferPool()
        self._plans: dict[tuple[int, int], MemoryPlan] = {}
        # Around every backend call, switch decision and tile-library call of the frames this
        # session restores: the profiler, the calibration capture and route maps see what runs.
        self.stage_hooks: list[StageHook] = []
        self.decision_hooks: list[DecisionHook] = []
        self.phase_hooks: list[PhaseHook] = []
        self._lock = threading.RLock()
        self._closed = False

    # -- the API ------------------------------------------------------------------------------
    def restore(self, frame: np.ndarray, order: str = "RGB") -> np.ndarray:
        """The restored frame, in the dtype and layout of ``frame`` (float32: clipped to [0, 1])."""
        return self.run(frame, order).image

    def run(self, frame: np.ndarray, order: str = "RGB", clip: bool = True) -> Result:
        """Restore ``frame`` and say how (:class:`Result`). ``clip=False`` leaves a float32
        frame's values as the model gave them (for measuring a model, not for showing it)."""
        with self._lock:
            if self._closed:
                raise EdgeRestoreError("the session is closed")
            start = time.perf_counter()
            layout, planes = frames.split(frame, self.bundle.channels, order)
            record = _FrameRecord(self)
            outputs = [self._restore_plane(plane, record, clip) for plane in planes]
            image = frames.join(layout, outputs)
            return record.result(image, time.perf_counter() - start)

    def run_rows(self, tensors: dict[str, np.ndarray]) -> Result:
        """One pass of the plan over a batch of rows given as plan inputs (NCHW, in the model's
        range: tiles, or patches as a model's own test set has them), all rows one image for a
        vote; the output variable comes back as ``image``. No tiling, and no memory budget: the
        batch is what the caller holds. For comparing the bundle with a reference model."""
        with self._lock:
            if self._closed:
                raise EdgeRestoreError("the session is closed")
            start = time.perf_counter()
            first = next(iter(tensors.values()))
            rows, (h, w) = len(first), first.shape[-2:]
            record = _FrameRecord(self)
            out = record.run_rows(self._stages_for(h, w), self.memory_plan(h, w), [(np.arange(rows), dict(tensors))],
                                  rows, first.shape[1:], None)
            return record.result(out, time.perf_counter() - start)

    def stream(self, frames: Iterable[np.ndarray], queue_size: int = 4, realtime_fps: float | None = None,
               stats: Any = None, order: str = "RGB") -> Iterator[np.ndarray]:
        """Restored frames of an iterable of frames, in order, while the iterable is read on a
        thread of its own (decode and restore overlap); see :func:`.stream.restore_frames`."""
        from .stream import restore_frames

        return restore_frames(self, frames, queue_size, realtime_fps, stats, order)

    @property
    def runners(self) -> dict[str, backends.StageRunner]:
        """The backend's runner of each stage (what the buckets call)."""
        return self._runners

    def memory_plan(self, height: int, width: int | None = None) -> MemoryPlan:
        size = (height, height if width is None else width)
        if size not in self._plans:
            self._plans[size] = plan_memory(self.bundle, self.memory_budget, *size,
                                            shared=backends.shares_activations(self.backend),
                                            factor=backends.activation_factor(self.backend))
        return self._plans[size]

    def full_path_macs(self, item_shape: tuple[int, ...]) -> float:
        return full_path_macs(self.bundle, item_shape, self.context.policy.blend)

    def close(self) -> None:
        """Release the backends' sessions and buffers; the session restores nothing after."""
        with self._lock:
            self._closed = True
            self._runners.clear()
            self._stages.clear()
            self._buffers = BufferPool()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one plane ----------------------------------------------------------------------------
    def _restore_plane(self, plane: np.ndarray, record: _FrameRecord, clip: bool) -> np.ndarray:
        h, w = plane.shape[:2]
        if self.whole and self._whole_fits(h, w):
            return self._restore_whole(plane, record, clip)
        if self.whole and self._whole_asked:
            raise EdgeRestoreError(f"a whole {w}x{h} image does not fit in the memory budget of "
                                   f"{self.memory_budget:g} MB; give a larger --memory-budget, or leave out --whole "
                                   "to run it in tiles")
        return self._restore_tiled(plane, record, clip)

    def _whole_fits(self, h: int, w: int) -> bool:
        """Whether one image's plan variables and its largest stage call fit in the budget
        (else it runs tiled: DeblurGAN-v2 on a 12-megapixel photo, say)."""
        m = int(self.bundle.io.get("size_multiple", 1))
        height, width = h + (-h % m), w + (-w % m)
        plan = self.memory_plan(height, width)
        factor = backends.activation_factor(self.backend)
        calls = [stage_row_bytes(self.bundle, name, height * width, factor) for name in self.bundle.stages]
        held = max(calls) if backends.shares_activations(self.backend) else sum(calls)
        return plan.row_bytes + held <= plan.budget

    def _restore_whole(self, plane: np.ndarray, record: _FrameRecord, clip: bool) -> np.ndarray:
        low, high = self.bundle.io["range"]
        h, w, _ = plane.shape
        m = int(self.bundle.io.get("size_multiple", 1))
        ph, pw = -h % m, -w % m
        u8 = plane.dtype == np.uint8
        start = time.perf_counter()
        if u8:  # the tile library, one pass each way (numpy took ~10 passes: 30 ms of a 720p frame)
            values = planes_from_u8(plane, low, high)
        else:
            values = (frames.to_unit(plane) * np.float32(high - low) + np.float32(low)).transpose(2, 0, 1)
        # "constant": zeros in the model's range, as e.g. DeblurGAN-v2's predictor pads.
        mode = "constant" if self.bundle.io.get("pad") == "constant" or min(h, w) <= max(ph, pw) else "reflect"
        if ph or pw:
            values = np.pad(values, ((0, 0), (0, ph), (0, pw)), mode=mode)
        batch = np.ascontiguousarray(values[None])
        self._phase("extract", time.perf_counter() - start)
        chunks = [(np.arange(1), {self.bundle.io["input"]: batch})]
        out = record.run_rows(self._stages_for(h + ph, w + pw), self.memory_plan(h + ph, w + pw), chunks, 1,
                              batch.shape[1:], None)
        start = time.perf_counter()
        if u8:
            result = planes_to_u8(out[0], h, w, low, high)
        else:
            unit = (out[0].transpose(1, 2, 0)[:h, :w] - np.float32(low)) / np.float32(high - low)
            result = frames.from_unit(unit, plane.dtype, clip)
        self._phase("merge", time.perf_counter() - start)
        return result

    def _restore_tiled(self, plane: np.ndarray, record: _FrameRecord, clip: bool) -> np.ndarray:
        h, w, c = plane.shape
        grid = self._grid(h, w)
        low, high = (float(v) for v in self.bundle.io["range"])
        source = plane if plane.dtype in (np.uint8, np.float32) else frames.to_unit(plane)
        u8 = plane.dtype == np.uint8
        merger = _BandMerger(grid, (h, w), u8, low, high, self._phase)
        plan = self.memory_plan(grid.tile)
        stages = self._stages_for(grid.tile, grid.tile)
        per_row = len(grid.origins_x)
        band_rows = max(1, -(-max(s[0] for s in plan.bucket_sizes.values()) // per_row))
        band_rows = max(1, min(band_rows, plan.max_rows // per_row))

        def chunks():
            oy = grid.origins_y
            for r0 in range(0, len(oy), band_rows):
                r1 = min(r0 + band_rows, len(oy)) - 1
                start = time.perf_counter()
                band = source[oy[r0]:oy[r1] + grid.tile]
                tiles = extract(band, _band_grid(grid, band.shape[0]), low, high)
                self._phase("extract", time.perf_counter() - start)
                yield np.arange(r0 * per_row, (r1 + 1) * per_row), {self.bundle.io["input"]: tiles}

        def done(chunk: Chunk, outputs: np.ndarray) -> None:
            first = int(chunk.row_ids[0]) // per_row
            merger.add(first, outputs.reshape(-1, per_row, *outputs.shape[1:]))

        record.run_rows(stages, plan, chunks(), len(grid), (c, grid.tile, grid.tile), grid, done)
        out = merger.output
        if u8:
            return out
        unit = (out - np.float32(low)) / np.float32(high - low)
        return frames.from_unit(unit, plane.dtype, clip)

    def _grid(self, h: int, w: int) -> TileGrid:
        t = self.tiles
        tile = t.tile
        if not t.fixed and not t.explicit:
            tile = min(tile, h, w)  # a default tile never refuses a small image
            multiple = int(self.bundle.io.get("size_multiple", 1))
            tile = max(tile - tile % multiple, min(multiple, tile))  # ... nor breaks the size multiple
        overlap = min(t.overlap, tile - 1)  # only binds when the default tile shrank
        return TileGrid(h, w, tile, overlap, t.halo, t.ramp)

    def _stages_for(self, h: int, w: int) -> dict[str, BucketedStage]:
        if (h, w) not in self._stages:
            plan = self.memory_plan(h, w)
            stages = self.bundle.stages
            self._stages[(h, w)] = {
                name: BucketedStage(name, runner, _runner_sizes(runner, plan.bucket_sizes[name]),
                                    stages[name].macs_per_call + stages[name].macs_per_pixel * h * w, self._buffers)
                for name, runner in self._runners.items()}
        return self._stages[(h, w)]

    def _phase(self, name: str, seconds: float) -> None:
        for hook in self.phase_hooks:
            hook(name, seconds)


class _FrameRecord:
    """Collects one call's routing, compute and timings across its planes and chunks."""

    def __init__(self, session: Session):
        self.session = session
        self.grid: TileGrid | None = None
        self.decisions: dict[str, list[np.ndarray]] = defaultdict(list)
        self.macs: list[np.ndarray] = []
        self.full_macs = 0.0
        self.stage_seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.padded = 0
        self.spilled = 0
        self.spill_seconds = 0.0

    def run_rows(self, stages: dict[str, BucketedStage], plan: MemoryPlan, chunks, count: int, item_shape, grid,
                 done: Callable[[Chunk, np.ndarray], None] | None = None):
        """Run ``chunks`` (row ids, plan inputs) of ``count`` rows through the plan; hands each
        finished chunk's output to ``done``, or (without) returns the output of the one chunk."""
        session = self.session
        output_var = session.bundle.io["output"]
        whole: list[np.ndarray] = []
        macs = np.zeros(count)
        decisions: dict[str, np.ndarray] = {}
        before = {name: (dict(s.stats.calls), s.stats.padded) for name, s in stages.items()}

        def timed(stage, ids, feeds, outputs, seconds):
            self.stage_seconds[stage] += seconds

        def finished(chunk: Chunk) -> None:
            plan_pass = chunk.plan_pass
            macs[chunk.row_ids] = plan_pass.macs
            for name, choice in plan_pass.decisions.items():
                decisions.setdefault(name, np.full(count, -1))[chunk.row_ids] = choice
            out = plan_pass.env[output_var]
            if done is None:
                whole.append(out)
            else:
                done(chunk, out)

        scheduler = Scheduler(session.context, stages, plan.max_rows, [timed, *session.stage_hooks],
                              session.decision_hooks)
        scheduler.run(chunks, finished)
        for name, stage in stages.items():
            calls, padded = before[name]
            for size, n in stage.stats.calls.items():
                if n - calls.get(size, 0):
                    self.calls[name][size] += n - calls.get(size, 0)
            self.padded += stage.stats.padded - padded
        self.spilled += scheduler.stats.spilled_bytes
        self.spill_seconds += scheduler.stats.spill_seconds
        self.grid = grid
        self.macs.append(macs)
        for name, choice in decisions.items():
            self.decisions[name].append(choice)
        self.full_macs = session.full_path_macs(tuple(item_shape))
        return whole[0] if whole else None

    def result(self, image: np.ndarray, seconds: float) -> Result:
        return Result(image, self.grid, {k: np.concatenate(v) for k, v in self.decisions.items()},
                      np.concatenate(self.macs) if self.macs else np.zeros(0), self.full_macs, seconds,
                      dict(self.stage_seconds), {k: dict(v) for k, v in self.calls.items()}, self.padded, self.spilled,
                      self.spill_seconds)


class _BandMerger:
    """Merges tile rows into the output frame as soon as every tile covering a frame row is
    back. The tile library merges a band of tile rows as if it were a whole frame; the band's
    rows that only tiles inside it cover come out exactly as a merge of the whole frame would
    give them (the weights of a tile depend on its neighbours, and those are the same), so
    those rows are kept, and the tile rows that still cover later frame rows wait for the next
    band."""

    def __init__(self, grid: TileGrid, size: tuple[int, int], u8: bool, low: float, high: float, phase):
        self.grid, self.u8, self.low, self.high, self.phase = grid, u8, low, high, phase
        self.rows: dict[int, np.ndarray] = {}  # tile row -> its output tiles (nx, C, T, T)
        self.final = 0  # frame rows [0, final) are merged
        self.output: np.ndarray | None = None
        self.size = size

    def add(self, first_row: int, tiles: np.ndarray) -> None:
        for k in range(len(tiles)):
            self.rows[first_row + k] = tiles[k]
        self._merge()

    def _merge(self) -> None:
        g, oy = self.grid, self.grid.origins_y
        ny = len(oy)
        first = min(r for r in range(ny) if oy[r] + g.tile > self.final)  # the tile rows that still count
        last = first
        while last + 1 in self.rows:
            last += 1
        if first not in self.rows:
            return
        end = oy[last + 1] if last + 1 < ny else g.height
        if end <= self.final:
            return
        start = time.perf_counter()
        top = oy[first]
        band = _band_grid(g, oy[last] + g.tile - top)
        tiles = np.concatenate([self.rows[r] for r in range(first, last + 1)])
        channels = tiles.shape[1]
        if self.output is None:
            self.output = np.empty((*self.size, channels), np.uint8 if self.u8 else np.float32)
        merged = merge_u8(tiles, band, self.low, self.high) if self.u8 else merge(tiles, band)
        self.output[self.final:end] = merged[self.final - top:end - top]
        self.final = end
        for r in [r for r in self.rows if oy[r] + g.tile <= end]:
            del self.rows[r]
        self.phase("merge", time.perf_counter() - start)


def _runner_sizes(runner: Any, sizes: tuple[int, ...]) -> tuple[int, ...]:
    """The bucket sizes a runner can take: an engine built for a fixed batch (TensorRT on a
    DLA) takes only that; one whose profile stops at ``max_batch`` nothing larger."""
    fixed = getattr(runner, "fixed_batch", None)
    if fixed:
        return (int(fixed),)
    cap = getattr(runner, "max_batch", None)
    if cap and cap < sizes[0]:
        return (int(cap), *(s for s in sizes if s < cap))
    return sizes


def _band_grid(grid: TileGrid, height: int) -> TileGrid:
    """The grid of a band of whole tile rows: its tile rows sit where the frame's do."""
    return TileGrid(height, grid.width, grid.tile, grid.overlap, grid.halo, grid.ramp)


def _tile_settings(bundle: Bundle, tile: int | None, overlap: int | None,
                   whole: bool | None) -> tuple[TileSettings, bool]:
    defaults = bundle.tiling
    if whole is None:
        whole = bool(defaults.get("whole")) and tile is None and overlap is None
    if whole and defaults.get("fixed"):
        raise EdgeRestoreError(f"model '{bundle.name}' runs on fixed {defaults['tile']}x{defaults['tile']} "
                               "tiles; --whole is not available for it")
    if tile is not None and defaults.get("fixed") and tile != defaults["tile"]:
        raise EdgeRestoreError(f"model '{bundle.name}' only runs on {defaults['tile']}x{defaults['tile']} tiles")
    tile_size = tile if tile is not None else int(defaults["tile"])
    if overlap is None:
        overlap = int(defaults["overlap"])
        if tile is not None and overlap >= tile:
            raise EdgeRestoreError(f"--tile {tile} is not larger than the default overlap {overlap} of "
                                   f"'{bundle.name}'; pass a smaller --overlap too")
    multiple = int(bundle.io.get("size_multiple", 1))
    if tile_size % multiple:
        raise EdgeRestoreError(f"--tile {tile_size} must be a multiple of {multiple} for '{bundle.name}'")
    settings = TileSettings(tile_size, overlap, int(defaults.get("halo", 0)), int(defaults.get("ramp", 5)),
                            bool(defaults.get("fixed")), tile is not None)
    return settings, whole
