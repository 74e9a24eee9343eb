"""Activation capture per stage, through the runtime's own executor.

The FP32 bundle restores every calibration crop exactly as ``edgerestore restore``
would (same tiles, same routing policy); a stage hook hands each stage call's inputs to
that stage's range collector. A branch stage of a routed model therefore sees only the
tiles its router sends to it (*route-aware*). *Route-agnostic* calibration, what a tool
that ignores routing does, runs the same capture with every switch forced onto its
expensive branch (``min_confidence=1.0``) and every switch that can blend its branches
running all of them (an all-in-one model's per-degradation branches), so every branch sees
every tile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from edgerestore.runtime.bundle import Bundle
from edgerestore.runtime.errors import EdgeRestoreError
from edgerestore.runtime.executor import RoutePolicy, switches
from edgerestore.runtime.session import Session

from .scales import StageRanges
from .sources import Sample

Progress = Callable[[str, int, int], None]
# Stage input rows (tiles, or whole crops) kept per stage for the bias correction: its
# per-channel means need far fewer samples than the ranges' tails.
FEED_ROWS = 256


@dataclass
class Capture:
    route_aware: bool
    ranges: dict[str, StageRanges]
    images: int = 0
    tiles: int = 0
    # switch -> number of tiles per branch, over the whole calibration set
    routing: dict[str, list[int]] = field(default_factory=dict)
    # stage -> the first FEED_ROWS rows of its inputs (batches as the executor fed them), for
    # the bias correction after quantization
    feeds: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)

    def amax(self) -> dict[str, dict[str, float]]:
        """stage -> tensor -> amax, for the stages that saw data."""
        return {stage: r.amax() for stage, r in self.ranges.items() if r.rows}


def is_routed(bundle: Bundle) -> bool:
    return bool(switches(bundle.plan))


def capture(bundle: Bundle, samples: Iterable[Sample], method: str, workdir: Path, route_aware: bool = True,
            progress: Progress = lambda *_: None, total: int = 0, ranges: bool = True) -> Capture:
    """Run the FP32 bundle over ``samples`` and collect every stage's activation statistics
    (without ``ranges``: only the feeds)."""
    session = Session(bundle, backend="onnxruntime", precision="fp32", min_confidence=0.5 if route_aware else 1.0)
    if not route_aware:
        widest = max((len(s["branches"]) for s in switches(bundle.plan).values()), default=1)
        session.context.policy = RoutePolicy(1.0, blend=widest)
    label = "route-aware" if route_aware else "route-agnostic"
    result = Capture(route_aware, {})
    current = {"name": ""}

    def hook(stage: str, rows: np.ndarray, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray], _s: float):
        for kind, tensors in (("input", feeds), ("output", outputs)):
            for name, value in tensors.items():
                if not np.isfinite(value).all():
                    raise EdgeRestoreError(f"stage '{stage}' {kind} '{name}' has NaN/Inf values on calibration image "
                                           f"'{current['name']}'; cannot calibrate on non-finite activations")
        if ranges:
            if stage not in result.ranges:
                result.ranges[stage] = StageRanges(stage, bundle.stage_path(stage, "fp32"), method, workdir / label)
            result.ranges[stage].collect(feeds)
        kept = result.feeds.setdefault(stage, [])
        room = FEED_ROWS - sum(len(next(iter(batch.values()))) for batch in kept)
        if room > 0:
            kept.append({name: np.array(value[:room]) for name, value in feeds.items()})

    session.stage_hooks.append(hook)
    for index, sample in enumerate(samples):
        current["name"] = sample.name
        if not np.isfinite(sample.degraded).all():
            raise EdgeRestoreError(f"calibration image '{sample.name}' has NaN/Inf values")
        progress(f"calibrating ({label}, {method}) {sample.name}" if ranges else
                 f"channel statistics ({label}) {sample.name}", index, total)
        route = session.run(sample.degraded.astype(np.float32), clip=False)
        result.images += 1
        result.tiles += len(route.macs)
        for name, choice in route.decisions.items():
            counts = result.routing.setdefault(name, [0] * len(switches(bundle.plan)[name]["branches"]))
            for branch, n in enumerate(np.bincount(choice[choice >= 0], minlength=len(counts))):
                counts[branch] += int(n)
    session.close()
    if not result.images:
        raise EdgeRestoreError("no calibration images")
    return result
