"""FP32 vs INT8 on held-out crops: PSNR/SSIM overall, per branch of a routed model,
and restore time, all through the runtime (tiles, routing, merge) as users run it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from edgerestore.runtime import imageio, metrics
from edgerestore.runtime.bundle import Bundle
from edgerestore.runtime.session import Session

from .sources import Sample


@dataclass
class Score:
    precision: str
    backend: str
    psnr: float
    ssim: float
    seconds: float  # restore time over the whole held-out set
    images: int
    # "switch/branch" -> PSNR over the tiles the FP32 model routes there (routed models)
    per_branch: dict[str, float] = field(default_factory=dict)
    # switch -> branch per tile, concatenated over the held-out set
    decisions: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    per_image: list[float] = field(default_factory=list, repr=False)  # PSNR per held-out image

    def to_json(self) -> dict:
        return {"precision": self.precision, "backend": self.backend, "psnr": _finite(self.psnr),
                "ssim": self.ssim, "seconds": self.seconds, "images": self.images,
                "per_branch": {k: _finite(v) for k, v in self.per_branch.items()}}


# INT8 as its Q/DQ graph defines it, the same on every machine (runtime/backends/qdq_reference_backend.py)
REFERENCE_BACKEND = "qdq-reference"


def score(bundle: Bundle, samples: list[Sample], precision: str, backend: str = REFERENCE_BACKEND,
          branches_of: "Score | None" = None) -> Score:
    """Restore every held-out crop with ``precision`` stages (by default in the reference
    arithmetic, which calibration decides on). Per-branch PSNR groups tiles by
    the decisions of ``branches_of`` (the FP32 run), so FP32 and INT8 rows cover the same
    pixels even where the INT8 router decides differently."""
    session = Session(bundle, backend=backend, precision=precision)
    psnrs, ssims, seconds = [], [], 0.0
    decisions: dict[str, list[np.ndarray]] = {}
    errors: dict[str, list[float]] = {}  # key -> [squared error sum, pixel count]
    offset = 0
    for sample in samples:
        route = session.run(sample.degraded.astype(np.float32))
        restored = imageio.from_float(route.image, 8)
        seconds += route.seconds
        truth = imageio.from_float(sample.clean, 8)
        psnrs.append(metrics.psnr(restored, truth))
        ssims.append(metrics.ssim(restored, truth))
        for name, choice in route.decisions.items():
            decisions.setdefault(name, []).append(choice)
        if route.decisions and route.grid is not None:
            reference = branches_of.decisions if branches_of is not None else None
            n = len(route.macs)
            chosen = {name: (reference[name][offset:offset + n] if reference is not None else choice)
                      for name, choice in route.decisions.items()}
            _branch_errors(errors, chosen, route.grid, restored, truth, bundle)
            offset += n
    per_branch = {key: (math.inf if sq == 0 else 10 * math.log10(255.0 ** 2 / (sq / count)))
                  for key, (sq, count) in sorted(errors.items()) if count}
    session.close()
    return Score(precision, session.backend, float(np.mean(psnrs)), float(np.mean(ssims)), seconds,
                 len(samples), per_branch, {k: np.concatenate(v) for k, v in decisions.items()}, psnrs)


def routing_agreement(a: Score, b: Score) -> float | None:
    """Share of (tile, switch) decisions two runs agree on."""
    if not a.decisions:
        return None
    same = [np.mean(a.decisions[k] == b.decisions[k]) for k in a.decisions if k in b.decisions]
    return float(np.mean(same)) if same else None


def _branch_errors(errors, chosen, grid, restored, truth, bundle: Bundle) -> None:
    from edgerestore.runtime.executor import switches

    steps = switches(bundle.plan)
    diff = (restored.astype(np.float64) - truth.astype(np.float64)) ** 2
    # Tiles are row-major over the grid, one grid per plane a gray model restores separately.
    origins = [(y, x) for y in grid.origins_y for x in grid.origins_x]
    t = grid.tile
    for name, choice in chosen.items():
        names = [b.get("name", str(i)) for i, b in enumerate(steps[name]["branches"])]
        per_plane = len(choice) > len(origins)  # a gray model restores each colour plane as its own image
        for k, branch in enumerate(choice):
            if branch < 0:
                continue
            y, x = origins[k % len(origins)]
            channels = k // len(origins) if per_plane else slice(None)
            window = diff[y:y + t, x:x + t, channels]
            entry = errors.setdefault(f"{name}/{names[branch]}", [0.0, 0])
            entry[0] += float(window.sum())
            entry[1] += window.size


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
