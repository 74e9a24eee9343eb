"""The memory budget: what a session may hold for frame data, and the batch sizes it implies.

The budget (``memory_budget``, MB) covers what grows with frames and batches: the plan
variables of the tiles in flight (a Path-Restore tile carries a 64-channel feature map,
1 MB), the activations a backend holds while a stage runs on a batch (the manifest's
``activation_bytes_per_pixel`` times the batch's pixels), the bucket buffers and the tiles of
the frame waiting to be merged. The process itself (interpreter, backend libraries, stage
weights) comes on top: a few hundred MB, measured in the README.

From it follow:

* **bucket sizes** per stage: the batch sizes a stage ever runs at. The largest is the
  biggest power of two (at most ``MAX_BUCKET``) whose activations fit in ``ACTIVATION_SHARE``
  of the budget; the others are it divided by 4, 16, ... down to 1. Few fixed shapes let
  backends reuse compiled shapes, buffers and (TensorRT) profiles whatever the routing does.
* **rows in flight**: how many tiles may be between extraction and merge at once, from
  the bytes of plan variables per tile; the rest of the budget after the activations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .bundle import Bundle
from .errors import EdgeRestoreError

MB = 1 << 20
DEFAULT_BUDGET_MB = 1024  # fits beside the GPU's share of an 8 GB Jetson
MIN_BUDGET_MB = 64
MAX_BUCKET = 128  # beyond this a 2-core CPU gains nothing per tile (README: runtime benchmark)
ACTIVATION_SHARE = 0.4  # of the budget: the stages' activations and their bucket buffers
# What backends hold per tile of a call, as a multiple of the liveness estimate of
# export/activations.py (padded layouts, reorders, allocator slack): each backend module says
# its own (ACTIVATION_FACTOR, measured; README "The runtime"); this is for one that does not.
ACTIVATION_FACTOR = 2.0
# Of the rest of the budget, what the plan variables of the tiles in flight may take: the
# remainder is numpy's and the allocators' slack around them (measured, ibid.).
VARIABLE_SHARE = 0.85
FLOAT32 = 4


@dataclass(frozen=True)
class MemoryPlan:
    budget: int  # bytes
    tile: int  # the spatial size the plan runs at (tile side, or the padded image's)
    bucket_sizes: dict[str, tuple[int, ...]]  # stage -> batch sizes, largest first
    row_bytes: int  # plan variables of one row (tile or image)
    max_rows: int  # rows in flight at once

    def describe(self) -> dict[str, Any]:
        return {"budget_mb": self.budget / MB, "row_mb": self.row_bytes / MB, "max_rows": self.max_rows,
                "bucket_sizes": {stage: list(sizes) for stage, sizes in self.bucket_sizes.items()}}


def plan_memory(bundle: Bundle, budget_mb: float, height: int, width: int | None = None,
                shared: bool = True, factor: float = ACTIVATION_FACTOR) -> MemoryPlan:
    """The plan for rows of ``height`` x ``width`` pixels (a tile: width = height). ``shared``:
    the backend's stages take their activations from one pool, so only the largest call
    counts (ONNX Runtime's shared arena); otherwise every stage keeps its own (OpenVINO's
    infer requests, TensorRT's buffers) and the stages' batches share the room. ``factor``: what
    the backend holds per tile as a multiple of the manifest's activation estimate."""
    if not budget_mb >= MIN_BUDGET_MB:
        raise EdgeRestoreError(f"--memory-budget must be at least {MIN_BUDGET_MB} MB, got {budget_mb:g}")
    width = height if width is None else width
    budget = int(budget_mb * MB)
    pixels = height * width
    rows = {name: stage_row_bytes(bundle, name, pixels, factor) for name in bundle.stages}
    room = budget * ACTIVATION_SHARE
    if shared:
        sizes = {name: bucket_sizes(row_bytes, room) for name, row_bytes in rows.items()}
        activations = max((rows[name] * sizes[name][0] for name in rows), default=0)
    else:  # one batch size that every stage can hold at once
        common = bucket_sizes(sum(rows.values()), room)
        sizes = dict.fromkeys(rows, common)
        activations = common[0] * sum(rows.values())
    row = variable_row_bytes(bundle, height, width)
    max_rows = max(1, int(VARIABLE_SHARE * (budget - activations) // max(row, 1)))
    return MemoryPlan(budget, height, sizes, row, max_rows)


def stage_row_bytes(bundle: Bundle, stage: str, pixels: int, factor: float = ACTIVATION_FACTOR) -> int:
    """What one row of a stage call holds: its activations, plus its inputs and outputs
    gathered into and out of the bucket buffers."""
    spec = bundle.stages[stage]
    io = sum(_tensor_bytes(t.shape, pixels) for t in (*spec.inputs, *spec.outputs))
    return int(factor * spec.activation_bytes_per_pixel * pixels) + io


def bucket_sizes(row_bytes: int, room: float) -> tuple[int, ...]:
    largest = 1
    while largest * 2 <= MAX_BUCKET and largest * 2 * row_bytes <= room:
        largest *= 2
    sizes = [largest]
    while sizes[-1] // 4 >= 1:
        sizes.append(sizes[-1] // 4)
    if sizes[-1] != 1:
        sizes.append(1)
    return tuple(sizes)


def variable_row_bytes(bundle: Bundle, height: int, width: int) -> int:
    """Bytes of every plan variable of one row: the input image, each stage output a step
    writes, one-hot decisions and ``initial`` entries (float32; an upper bound, as variables
    a resize shrinks are counted at full size)."""
    pixels = height * width
    sizes = {bundle.io["input"]: bundle.channels * pixels * FLOAT32}
    for step in _walk(bundle.plan):
        if step.get("op") == "run":
            outputs = {t.name: t for t in bundle.stages[step["stage"]].outputs}
            for port, var in step["out"].items():
                sizes[var] = max(sizes.get(var, 0), _tensor_bytes(outputs[port].shape, pixels))
        elif step.get("op") == "switch" and "one_hot" in step:
            sizes[step["one_hot"]] = len(step["branches"]) * FLOAT32
        elif step.get("op") == "resize":
            sizes.setdefault(step["out"], sizes.get(step["in"], 0))
    for name, spec in bundle.initial.items():
        values = 1
        for n in spec["shape"]:
            values *= n
        sizes.setdefault(name, values * (pixels if "like" in spec else 1) * FLOAT32)
    # a stage's answer waits beside the variable it will overwrite: the largest one, twice
    return sum(sizes.values()) + max(sizes.values())


def _tensor_bytes(shape: list[int | None], pixels: int) -> int:
    """float32 bytes of a tensor of ``shape`` (no batch axis); dynamic spatial axes take the row's."""
    values = 1
    dynamic = [n for n in shape if n is None]
    for n in shape:
        values *= 1 if n is None else n
    return values * (pixels if dynamic else 1) * FLOAT32


def _walk(steps):
    from .bundle import walk_plan

    return walk_plan(steps)
