"""Latency profile of a bundle: per-stage and end-to-end latency, FPS, compute, routing, memory.

The numbers come from the calls that restore the frame, nothing else: stage times from the
session's ``stage_hooks`` (the time around each backend call), routing from its
``decision_hooks``, tile extract/merge from its ``phase_hooks``, backend calls per bucket
size from the frame's :class:`~.session.Result`. The end-to-end latency is the wall time of
:meth:`Session.run`; what it spends outside the stages and the tile library (routing,
gathering and scattering routed tiles, channel conversion) is the ``host`` row, so the rows
add up to the frame.
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
from .session import Result, Session

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
    buckets: dict[str, dict[int, int]]  # stage -> bucket size -> backend calls
    padded: int  # padding rows run
    spilled_bytes: int = 0  # a vote's chunks spilled to disk
    spill_seconds: float = 0.0


@dataclass
class StageTimer:
    """Attached to a session's hooks; :meth:`end_frame` closes one frame's record."""

    session: Session
    frames: list[FrameRecord] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  # stages in the order they first ran
    branch_counts: dict[str, np.ndarray] = field(default_factory=dict)  # switch -> rows per branch
    peak_rss: int = 0

    def __post_init__(self):
        self._seconds: dict[str, float] = defaultdict(float)
        self._calls: dict[str, int] = defaultdict(int)
        self._process = psutil.Process()

    def attach(self) -> StageTimer:
        self.session.stage_hooks.append(self._stage)
        self.session.decision_hooks.append(self._decision)
        self.session.phase_hooks.append(self._phase)
        return self

    def detach(self) -> None:
        self.session.stage_hooks.remove(self._stage)
        self.session.decision_hooks.remove(self._decision)
        self.session.phase_hooks.remove(self._phase)

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

    def end_frame(self, latency: float, route: Result) -> None:
        self.peak_rss = max(self.peak_rss, self._process.memory_info().rss)
        self.frames.append(FrameRecord(latency, dict(self._seconds), dict(self._calls), float(route.macs.sum()),
                                       route.full_macs * len(route.macs), len(route.macs), route.calls,
                                       route.padded_rows, route.spilled_bytes, route.spill_seconds))
        self._seconds.clear()
        self._calls.clear()


@dataclass
class ProfileResult:
    report: dict  # one entry of ``runs`` in ``profile --json``
    per_frame_ms: dict[str, np.ndarray]  # stage (and "end-to-end") -> its time in each timed frame


def profile(session: Session, frame: np.ndarray, iterations: int, warmup: int = 2, telemetry=None,
            progress: Callable[[], None] = lambda: None) -> ProfileResult:
    """Restore ``frame`` ``warmup`` times untimed, then ``iterations`` times timed.
    ``telemetry``: a context manager with ``samples``
    (:class:`~runtime.tegrastats.TegrastatsSampler`), entered around the timed frames."""
    for _ in range(warmup):
        session.run(frame)
        progress()
    process = psutil.Process()
    rss_ready = process.memory_info().rss
    timer = StageTimer(session, peak_rss=rss_ready).attach()
    try:
        with telemetry if telemetry is not None else nullcontext():
            for _ in range(iterations):
                start = time.perf_counter()
                route = session.run(frame)
                timer.end_frame(time.perf_counter() - start, route)
                progress()
    finally:
        timer.detach()
    return _report(session, frame, timer, rss_ready, telemetry)


def _percentiles(seconds: np.ndarray) -> dict[str, float]:
    """Milliseconds, to the microsecond (the timer's useful resolution here)."""
    ms = seconds * 1e3
    values = {**{f"p{p}": np.percentile(ms, p) for p in PERCENTILES}, "mean": ms.mean(), "min": ms.min(), "max": ms.max()}
    return {name: round(float(v), 3) for name, v in values.items()}


def _report(session: Session, frame: np.ndarray, timer: StageTimer, rss_ready: int, telemetry) -> ProfileResult:
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
    plan_switches = switches(session.bundle.plan)
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
    buckets = _buckets(frames)
    report = {
        "backend": session.backend,
        "precision": session.precision,
        "mode": "whole" if session.whole else f"tiled {session.tiles.tile}/{session.tiles.overlap}",
        "memory_budget_mb": session.memory_budget,
        "frames": len(frames),
        "latency_ms": _percentiles(latency),
        "fps": float(fps),
        "megapixels_per_second": float(fps * width * height / 1e6),
        "stages": stages,
        "tiles_per_frame": float(np.mean([f.tiles for f in frames])),
        "backend_calls_per_frame": float(np.mean([sum(n for name, n in f.calls.items() if not name.startswith("tiles."))
                                                   for f in frames])),
        "buckets": buckets,
        "gmac_per_frame": executed / 1e9,
        "full_path_gmac_per_frame": full / 1e9,
        "mac_ratio": executed / full if full else 1.0,
        "executed_gmac_per_second": executed / 1e9 / float(latency.mean()),
        "branch_share": {name: round(count / decided, 4) for name, count in overall.items()} if decided else {},
        "branch_share_per_switch": branches,
        "memory_mb": {"rss_after_warmup": round(rss_ready / 2**20, 1), "peak_rss": round(timer.peak_rss / 2**20, 1)},
        # a vote over more tiles than the budget holds spills the waiting chunks to disk
        "spill_per_frame": {"mb": round(float(np.mean([f.spilled_bytes for f in frames])) / 2**20, 1),
                            "seconds": round(float(np.mean([f.spill_seconds for f in frames])), 4)},
        "telemetry": summarize(samples, float(latency.mean())) if samples else None,
    }
    return ProfileResult(report, per_frame_ms)


def _buckets(frames: list[FrameRecord]) -> dict:
    """Per stage: backend calls per frame at each bucket size; overall, the share of the rows
    run that were real tiles (the rest pads partial buckets)."""
    per_stage: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for frame in frames:
        for stage, sizes in frame.buckets.items():
            for size, calls in sizes.items():
                per_stage[stage][size] += calls / len(frames)
    rows = sum(size * calls for sizes in per_stage.values() for size, calls in sizes.items())
    padded = float(np.mean([f.padded for f in frames]))
    return {"occupancy": round(1.0 - padded / rows, 4) if rows else 1.0,
            "calls_per_frame": {stage: {str(size): round(calls, 2) for size, calls in sorted(sizes.items(), reverse=True)}
                                for stage, sizes in per_stage.items()}}
