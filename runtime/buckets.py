"""One stage run in a few fixed batch sizes (buckets), on rows gathered from many requests.

Whatever the routing does, a stage only ever sees the batch sizes of its bucket list (from
the memory budget, :mod:`.budget`): the rows queued for it are cut into full buckets of the
largest size, and the rest goes into smaller sizes, the last one padded when more than half
of it is real rows (:func:`bucket_plan`). Each size has one set of input buffers, allocated
the first time and reused; a bucket that is exactly one contiguous run of a plan variable is
fed without the copy.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .backends import StageRunner
from .executor import StageCall

# (stage, global row ids, feeds, outputs, seconds) for the real rows of each backend call
StageHook = Callable[[str, np.ndarray, dict[str, Any], dict[str, Any], float], None]


# Padding a bucket costs the padded rows' compute, another call costs the call's overhead
# (0.1-1 ms on ONNX Runtime / OpenVINO): a bucket is padded when its padding computes less
# than this (1 ms at the ~60 GMAC/s a 2-core AVX2 CPU sustains). So a pathfinder (1.7 MMAC a
# tile) pads freely, a 64-channel residual block (293 MMAC a tile) never does.
PAD_MACS = 60e6


def bucket_plan(rows: int, sizes: tuple[int, ...], pad_rows: int = 0) -> list[tuple[int, int]]:
    """(bucket size, real rows) per backend call that covers ``rows`` rows: full buckets of
    the largest size, then of smaller ones; a rest pads the smallest bucket that holds it when
    that adds at most ``pad_rows`` rows."""
    plan = []
    for size in sizes:
        while rows >= size:
            plan.append((size, size))
            rows -= size
        if rows and size - rows <= pad_rows and not any(rows <= s and s - rows <= pad_rows for s in sizes
                                                        if s < size):
            plan.append((size, rows))  # the smallest size that pads within the limit
            rows = 0
    if rows:  # only when the smallest size is above 1
        plan.append((sizes[-1], rows))
    return plan


@dataclass
class Piece:
    """Rows ``[start, stop)`` of a request (positions in its row list)."""

    request: "Queued"
    start: int
    stop: int


@dataclass
class Queued:
    """A stage call waiting for, or part-way through, its buckets."""

    call: StageCall
    row_ids: np.ndarray  # the frame-wide id of each row of the call
    owner: Any = None  # who asked (the scheduler's chunk)
    done: int = 0  # rows answered
    taken: int = 0  # rows handed to buckets
    outputs: dict[str, Any] | None = None

    @property
    def waiting(self) -> int:
        return self.call.count - self.taken


@dataclass
class BucketStats:
    calls: Counter = field(default_factory=Counter)  # bucket size -> backend calls
    rows: int = 0  # real rows run
    padded: int = 0  # padding rows run

    @property
    def occupancy(self) -> float:
        total = self.rows + self.padded
        return self.rows / total if total else 1.0


class BufferPool:
    """Input buffers by batch size and shape, shared by every stage of a session: stages run
    one call at a time, and the twelve block stages of a Path-Restore all take the same
    64-channel tiles, so one set of buffers serves them all."""

    def __init__(self, xp: Any = np):
        self.xp = xp
        self._buffers: dict[tuple, Any] = {}

    def get(self, size: int, position: int, like: Any) -> Any:
        key = (size, position, tuple(like.shape[1:]), like.dtype.str)
        if key not in self._buffers:
            self._buffers[key] = self.xp.zeros((size, *like.shape[1:]), dtype=like.dtype)
        return self._buffers[key]


class BucketedStage:
    def __init__(self, name: str, runner: StageRunner, sizes: tuple[int, ...], row_macs: float = 0.0,
                 pool: BufferPool | None = None):
        self.name, self.runner, self.sizes = name, runner, sizes
        self.pool = pool or BufferPool()
        self.xp = self.pool.xp
        self.pad_rows = int(PAD_MACS // row_macs) if row_macs > 0 else sizes[0]
        self.stats = BucketStats()

    def run(self, queue: list[Queued], rows: int, hooks: list[StageHook]) -> list[Queued]:
        """Run the first ``rows`` waiting rows of ``queue``; returns the requests answered in full."""
        finished = []
        for size, real in bucket_plan(rows, self.sizes, self.pad_rows):
            pieces = _take(queue, real)
            feeds = self._feeds(pieces, size, real)
            start = time.perf_counter()
            outputs = self.runner(feeds)
            seconds = time.perf_counter() - start
            self.stats.calls[size] += 1
            self.stats.rows += real
            self.stats.padded += size - real
            if hooks:
                ids = np.concatenate([_ids(p) for p in pieces])
                real_feeds = {k: v[:real] for k, v in feeds.items()}
                real_outputs = {k: v[:real] for k, v in outputs.items()}
                for hook in hooks:
                    hook(self.name, ids, real_feeds, real_outputs, seconds)
            finished += self._answer(pieces, outputs)
        return finished

    def _feeds(self, pieces: list[Piece], size: int, real: int) -> dict[str, Any]:
        first = pieces[0]
        call = first.request.call
        if len(pieces) == 1 and size == real and call.rows is None:  # one contiguous run: no copy
            return {port: value[first.start:first.stop] for port, value in call.feeds.items()}
        # by shape too: a stage inside a loop runs at each scale of a pyramid
        buffers = {port: self.pool.get(size, i, value) for i, (port, value) in enumerate(call.feeds.items())}
        offset = 0
        for piece in pieces:
            rows = piece.request.call.rows
            count = piece.stop - piece.start
            for port, value in piece.request.call.feeds.items():
                target = buffers[port][offset:offset + count]
                if rows is None:
                    target[...] = value[piece.start:piece.stop]
                else:
                    self.xp.take(value, rows[piece.start:piece.stop], axis=0, out=target)
            offset += count
        if real < size:
            for buffer in buffers.values():
                buffer[real:] = 0
        return buffers

    def _answer(self, pieces: list[Piece], outputs: dict[str, Any]) -> list[Queued]:
        finished, offset = [], 0
        for piece in pieces:
            request, count = piece.request, piece.stop - piece.start
            if piece.start == 0 and count == request.call.count:  # the whole call in one bucket
                request.outputs = {k: v[offset:offset + count] for k, v in outputs.items()}
            else:
                if request.outputs is None:
                    request.outputs = {k: self.xp.empty((request.call.count, *v.shape[1:]), dtype=v.dtype)
                                       for k, v in outputs.items()}
                for k, v in outputs.items():
                    request.outputs[k][piece.start:piece.stop] = v[offset:offset + count]
            request.done += count
            offset += count
            if request.done == request.call.count:
                finished.append(request)
        return finished


def _take(queue: list[Queued], rows: int) -> list[Piece]:
    """The next ``rows`` waiting rows of the queue, in order, as pieces of its requests."""
    pieces = []
    for request in queue:
        if not rows:
            break
        if not request.waiting:
            continue
        count = min(rows, request.waiting)
        pieces.append(Piece(request, request.taken, request.taken + count))
        request.taken += count
        rows -= count
    return pieces


def _ids(piece: Piece) -> np.ndarray:
    return piece.request.row_ids[piece.start:piece.stop]
