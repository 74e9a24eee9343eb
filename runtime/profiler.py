"""Latency profile of a bundle: per-stage and end-to-end latency, FPS, compute, routing, memory.

The numbers come from the calls that restore the frame, nothing else: stage times from the
executor's ``stage_hooks`` (the time around each backend call), routing from its
``decision_hooks``, tile extract/merge from the restorer's ``phase_hooks``. The end-to-end
latency is the wall time of :meth:`Restorer.restore`; what it spends outside the stages
and the tile library (routing, gather/scatter of routed tiles, channel conversion) is the
``host`` row, so the rows add up to the frame.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import psutil

from .executor import switches
from .restore import Restorer

PERCENTILES = (50, 90, 99)
HOST = "host"  # routing, gather/scatter, conversions: frame time outside stages and tile library


@dataclass
class FrameRecord:
    latency: float
    stages: dict[str, float]  # seconds in each stage (all its calls) during this frame
    calls: dict[str, int]
    macs: float
    full_macs: float
    tiles: int


@dataclass
class StageTimer:
    """Attached to a restorer's hooks; :meth:`end_frame` closes one frame's record."""

    restorer: Restorer
    frames: list[FrameRecord] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  # stages in the order they first ran
    branch_counts: dict[str, np.ndarray] = field(default_factory=dict)  # switch -> rows per branch
    peak_rss: int = 0

    def __post_init__(self):
        self._seconds: dict[str, float] = defaultdict(float)
        self._calls: dict[str, int] = defaultdict(int)
        self._process = psutil.Process()

    def attach(self) -> StageTimer:
        self.restorer.executor.stage_hooks.append(self._stage)
        self.restorer.executor.decision_hooks.append(self._decision)
        self.restorer.phase_hooks.append(self._phase)
        return self

    def detach(self) -> None:
        self.restorer.executor.stage_hooks.remove(self._stage)
        self.restorer.executor.decision_hooks.remove(self._decision)
        self.restorer.phase_hooks.remove(self._phase)

    def _record(self, name: str, seconds: float) -> None:
        if name not in self._calls and name not in self.order:
            self.order.append(name)
        self._seconds[name] += seconds
        self._calls[name] += 1
        # Sampled while the stage's inputs and outputs are alive: close to the frame's peak.
        self.peak_rss = max(self.peak_rss, self._process.memory_info().rss)

    def _stage(self, stage: str, rows, feeds, outputs, seconds: float) -> None:
        self._record(stage, seconds)

    def _phase(self, name: str, seconds: float) -> None:
        self._record(f"tiles.{name}", seconds)

    def _decision(self, switch: str, rows, choice: np.ndarray, probs: np.ndarray) -> None:
        counts = self.branch_counts.setdefault(switch, np.zeros(probs.shape[1], np.int64))
        counts += np.bincount(choice, minlength=len(counts))

    def end_frame(self, latency: float) -> None:
        route = self.restorer.route
        self.frames.append(FrameRecord(latency, dict(self._seconds), dict(self._calls), float(route.macs.sum()),
                                       route.full_macs * len(route.macs), len(route.macs)))
        self._seconds.clear()
        self._calls.clear()


@dataclass
class ProfileResult:
    report: dict  # one entry of ``runs`` in ``profile --json``
    per_frame_ms: dict[str, np.ndarray]  # stage (and "end-to-end") -> its time in each timed frame


def profile(restorer: Restorer, frame: np.ndarray, iterations: int, warmup: int = 2, telemetry=None,
            progress: Callable[[], None] = lambda: None) -> ProfileResult:
    """Restore ``frame`` ``warmup`` times untimed, then ``iterations`` times timed.
    ``telemetry``: a context manager with ``samples``
    (:class:`~runtime.tegrastats.TegrastatsSampler`), entered around the timed frames."""
    for _ in range(warmup):
        restorer.restore(frame)
        progress()
    process = psutil.Process()
    rss_ready = process.memory_info().rss
    timer = StageTimer(restorer, peak_rss=rss_ready).attach()
    try:
        with telemetry if telemetry is not None else nullcontext():
            for _ in range(iterations):
                start = time.perf_counter()
                restorer.restore(frame)
                timer.end_frame(time.perf_counter() - start)
                progress()
    finally:
        timer.detach()
    return _report(restorer, frame, timer, rss_ready, telemetry)


def _percentiles(seconds: np.ndarray) -> dict[str, float]:
    """Milliseconds, to the microsecond (the timer's useful resolution here)."""
    ms = seconds * 1e3
    values = {**{f"p{p}": np.percentile(ms, p) for p in PERCENTILES}, "mean": ms.mean(), "min": ms.min(), "max": ms.max()}
    return {name: round(float(v), 3) for name, v in values.items()}


def _report(restorer: Restorer, frame: np.ndarray, timer: StageTimer, rss_ready: int, telemetry) -> ProfileResult:
    from .tegrastats import summarize

    frames = timer.frames
    latency = np.array([f.latency for f in frames])
    stages, per_frame_ms = [], {"end-to-end": latency * 1e3}
    for name in [*timer.order, HOST]:
        if name == HOST:
            per_frame = latency - np.array([sum(f.stages.values()) for f in frames])
            calls = 0.0
        else:
            per_frame = np.array([f.stages.get(name, 0.0) for f in frames])
            calls = float(np.mean([f.calls.get(name, 0) for f in frames]))
        per_frame_ms[name] = per_frame * 1e3
        stages.append({"name": name, "calls_per_frame": calls, "latency_ms": _percentiles(per_frame),
                       "share": round(float(per_frame.sum() / latency.sum()), 4)})
    height, width = frame.shape[:2]
    fps = len(frames) / latency.sum()
    executed = float(np.mean([f.macs for f in frames]))
    full = float(np.mean([f.full_macs for f in frames]))
    plan_switches = switches(restorer.bundle.plan)
    branches = {}
    for name, counts in timer.branch_counts.items():
        labels = [b.get("name", str(i)) for i, b in enumerate(plan_switches[name]["branches"])]
        branches[name] = {label: round(float(c / counts.sum()), 4) for label, c in zip(labels, counts)}
    overall: dict[str, int] = defaultdict(int)
    for name, counts in timer.branch_counts.items():
        for i, branch in enumerate(plan_switches[name]["branches"]):
            overall[branch.get("name", str(i))] += int(counts[i])
    decided = sum(overall.values())
    samples = getattr(telemetry, "samples", None)
    report = {
        "backend": restorer.backend,
        "precision": restorer.precision,
        "mode": "whole" if restorer.whole else f"tiled {restorer.tiles.tile}/{restorer.tiles.overlap}",
        "frames": len(frames),
        "latency_ms": _percentiles(latency),
        "fps": float(fps),
        "megapixels_per_second": float(fps * width * height / 1e6),
        "stages": stages,
        "tiles_per_frame": float(np.mean([f.tiles for f in frames])),
        "gmac_per_frame": executed / 1e9,
        "full_path_gmac_per_frame": full / 1e9,
        "mac_ratio": executed / full if full else 1.0,
        "branch_share": {name: round(count / decided, 4) for name, count in overall.items()} if decided else {},
        "branch_share_per_switch": branches,
        "memory_mb": {"rss_after_warmup": round(rss_ready / 2**20, 1), "peak_rss": round(timer.peak_rss / 2**20, 1)},
        "telemetry": summarize(samples, float(latency.mean())) if samples else None,
    }
    return ProfileResult(report, per_frame_ms)
