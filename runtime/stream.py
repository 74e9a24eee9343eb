"""Restore a stream of frames: decode, restore and encode run at the same time.

Three threads share the work: a reader pulls frames from the source (a video decoder, a
camera, an image folder, any iterable of numpy frames), one restorer thread runs the
:class:`~.session.Session` (uint8 frames through the tile library end to end), and the caller's thread consumes the restored frames (the encoder, or
the application that embeds the pipeline). Bounded queues join them, so a slow stage
holds the others back (backpressure) instead of letting frames pile up in memory: at
most ``2 * queue_size + 3`` frames are alive at any time. There is one restorer thread,
so frames leave in the order they came, and none is lost.

With ``realtime_fps`` the pipeline keeps up with a live source instead: the reader never
waits for the restorer (a frame that finds the input queue full is dropped), and a frame
that has waited longer than one frame interval (``1 / realtime_fps``) when the restorer
gets to it is dropped too. Every drop is counted (:class:`StreamStats`). A source that
is not live (a file) is paced to ``realtime_fps`` first, as a camera would deliver it.

A source yields :class:`Frame` items, or :class:`Skipped` for a frame it could not decode
(a corrupt frame is reported and the stream goes on). Frames may change size mid-stream:
the restorer plans tiles per frame.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from .session import Session

if TYPE_CHECKING:
    from .imageio import Metadata

_END = object()  # end of stream, passed down the queues
_POLL = 0.05  # seconds: how often a waiting thread checks that the stream still runs
_JOIN = 5.0  # seconds to wait for a thread blocked in a source read (a camera) at shutdown


@dataclass
class Frame:
    """One frame: ``pixels`` HxWxC (C = 1 or 3, RGB order), uint8 or uint16."""

    index: int  # position in the source
    pixels: np.ndarray
    alpha: np.ndarray | None = None
    name: str | None = None  # the file name, for image sequences
    arrival: float = 0.0  # time.perf_counter() when the reader handed it on
    flat: bool = False  # came in as HxW (restore_frames hands it back as HxW)
    metadata: Metadata | None = None  # an image file's EXIF and ICC profile, kept in its output
    pts: int | None = None  # a video frame's timestamp in its stream's time base (PyAV sources), kept in the output

    @property
    def bit_depth(self) -> int:
        return 8 if self.pixels.dtype == np.uint8 else 16

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])


@dataclass(frozen=True)
class Skipped:
    """A frame that was not restored: ``kind`` is ``corrupt`` (the source could not decode
    it), ``truncated`` (the source ended before the frames it announced) or ``late``
    (dropped to keep up with ``realtime_fps``)."""

    index: int
    reason: str
    kind: str = "corrupt"


@dataclass
class StreamStats:
    """Counts of one run. A camera may stream for days: counters grow, lists stop at
    ``LISTED`` entries."""

    LISTED = 1000

    read: int = 0  # frames the source delivered
    restored: int = 0
    dropped: int = 0  # realtime: late frames, not restored
    corrupt: int = 0  # frames the source could not decode
    skipped: list[Skipped] = field(default_factory=list)  # the first corrupt / truncated reports, in order
    size_changes: list[tuple[int, tuple[int, int], tuple[int, int]]] = field(default_factory=list)  # the first
    seconds: float = 0.0  # wall time from the first read to the last frame out
    restore_seconds: float = 0.0  # inside Session.run
    executed_macs: float = 0.0
    full_macs: float = 0.0
    cheap_share_sum: float = 0.0  # routed models: sum over frames of the share of bypassed decisions
    routed_frames: int = 0
    # The reader and the restorer thread both count (drops, for one): `+=` on an attribute is
    # a read and a write another thread can come between.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: float) -> None:
        """Add to counters, atomically with respect to the other threads."""
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def listed(self, name: str, entry) -> None:
        """Append to the list ``name`` while it holds fewer than ``LISTED`` entries."""
        with self._lock:
            entries = getattr(self, name)
            if len(entries) < self.LISTED:
                entries.append(entry)

    @property
    def fps(self) -> float:
        return self.restored / self.seconds if self.seconds else 0.0

    @property
    def bypass_share(self) -> float | None:
        return self.cheap_share_sum / self.routed_frames if self.routed_frames else None


# (kind, line), called from the pipeline's threads as it happens; kind: a Skipped kind
# ("corrupt", "truncated", "late") or "size" (a frame-size change).
Notice = Callable[[str, str], None]


def to_frame(index: int, array: np.ndarray) -> Frame:
    """A numpy frame (HxW or HxWxC; C = 1, 3 or 4 with alpha; uint8 or uint16) as a Frame."""
    array = np.asarray(array)
    if array.dtype not in (np.uint8, np.uint16) or array.ndim not in (2, 3) or (
            array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ValueError(f"frame {index}: need uint8/uint16 HxW, HxWx1, HxWx3 or HxWx4, "
                         f"got {array.dtype} {array.shape}")
    if array.ndim == 2:
        return Frame(index, array[..., None], flat=True)
    if array.shape[2] == 4:
        return Frame(index, array[..., :3], array[..., 3])
    return Frame(index, array)


class Pipeline:
    """Concurrent restore of a frame stream; see the module docstring.

    ``run(source)`` yields the restored :class:`Frame` items in source order; ``stats``
    holds the counts of the last run. ``paced``: slow a non-live source down to
    ``realtime_fps`` (the CLI does it for files; an embedding application's camera
    delivers at its own rate). ``on_notice`` receives a line for each corrupt frame,
    drop and size change as it happens.
    """

    def __init__(self, session: Session, queue_size: int = 4, realtime_fps: float | None = None,
                 paced: bool = False, on_notice: Notice | None = None, order: str = "RGB"):
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        if realtime_fps is not None and realtime_fps <= 0:
            raise ValueError("realtime_fps must be positive")
        self.session = session
        self.queue_size = queue_size
        self.realtime_fps = realtime_fps
        self.paced = paced
        self.on_notice = on_notice or (lambda kind, line: None)
        self.order = order  # of the frames' colour channels: RGB, or OpenCV's BGR
        self.stats = StreamStats()

    def run(self, source: Iterable[Frame | Skipped]) -> Iterator[Frame]:
        self.stats = StreamStats()
        stop = threading.Event()
        failures: list[BaseException] = []
        inbox: queue.Queue = queue.Queue(self.queue_size)
        outbox: queue.Queue = queue.Queue(self.queue_size)
        threads = [threading.Thread(target=self._guard, args=(self._read, failures, stop, source, inbox),
                                    name="edgerestore-read", daemon=True),
                   threading.Thread(target=self._guard, args=(self._restore, failures, stop, inbox, outbox),
                                    name="edgerestore-restore", daemon=True)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        try:
            while True:
                try:
                    item = outbox.get(timeout=_POLL)
                except queue.Empty:
                    if failures:
                        raise failures[0]
                    if stop.is_set() and not any(t.is_alive() for t in threads):
                        raise RuntimeError("stream pipeline stopped without a result")  # a bug, not user input
                    continue
                if item is _END:
                    break
                yield item
        finally:
            stop.set()
            for thread in threads:
                thread.join(_JOIN)
            self.stats.seconds = time.perf_counter() - start
        if failures:
            raise failures[0]

    # -- threads -----------------------------------------------------------------------
    @staticmethod
    def _guard(work, failures: list[BaseException], stop: threading.Event, *args) -> None:
        try:
            work(stop, *args)
        except BaseException as exc:  # handed to the consumer's thread, which re-raises it
            failures.append(exc)
            stop.set()

    def _read(self, stop: threading.Event, source: Iterable[Frame | Skipped], inbox: queue.Queue) -> None:
        stats, fps = self.stats, self.realtime_fps
        start = first = None
        for item in source:
            if stop.is_set():
                return
            if isinstance(item, Skipped):
                stats.add(corrupt=item.kind == "corrupt")
                stats.listed("skipped", item)
                self.on_notice(item.kind, f"frame {item.index}: {item.reason}; skipped")
                continue
            if fps is not None and self.paced:
                if start is None:
                    start, first = time.perf_counter(), item.index
                delay = start + (item.index - first) / fps - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            item.arrival = time.perf_counter()
            stats.add(read=1)
            if fps is None:
                if not _put(inbox, item, stop):
                    return
                continue
            try:
                inbox.put_nowait(item)
            except queue.Full:
                self._drop(item.index, "the restorer is busy")
        _put(inbox, _END, stop)

    def _restore(self, stop: threading.Event, inbox: queue.Queue, outbox: queue.Queue) -> None:
        stats, session = self.stats, self.session
        interval = 1.0 / self.realtime_fps if self.realtime_fps else None
        previous: tuple[int, int] | None = None
        while True:
            item = _get(inbox, stop)
            if item is None:
                return
            if item is _END:
                _put(outbox, _END, stop)
                return
            if interval is not None and time.perf_counter() - item.arrival > interval:
                self._drop(item.index, "late")
                continue
            if previous is not None and item.size != previous:
                stats.listed("size_changes", (item.index, previous, item.size))
                self.on_notice("size", f"frame {item.index}: size changes from {previous[0]}x{previous[1]} to "
                               f"{item.size[0]}x{item.size[1]}; tiles re-planned for the new size")
            previous = item.size
            start = time.perf_counter()
            result = session.run(item.pixels, self.order)
            share = result.cheap_share(session.bundle.plan)
            stats.add(restore_seconds=time.perf_counter() - start, executed_macs=float(result.macs.sum()),
                      full_macs=result.full_macs * len(result.macs), restored=1,
                      **({} if share is None else {"cheap_share_sum": share, "routed_frames": 1}))
            if not _put(outbox, replace(item, pixels=result.image), stop):
                return

    def _drop(self, index: int, why: str) -> None:
        self.stats.add(dropped=1)
        self.on_notice("late", f"frame {index}: dropped ({why}; --realtime {self.realtime_fps:g})")


def restore_frames(session: Session, frames: Iterable[np.ndarray], queue_size: int = 4,
                   realtime_fps: float | None = None, stats: StreamStats | None = None,
                   order: str = "RGB") -> Iterator[np.ndarray]:
    """What :meth:`Session.stream` runs: numpy frames in (HxW or HxWxC, C = 1, 3 or 4 with
    alpha; uint8 or uint16; RGB, or BGR with ``order="BGR"``), restored numpy frames out,
    same dtype and layout, in order. The input iterable is consumed on a reader thread while
    the previous frames restore. With ``realtime_fps``, late frames are dropped (see
    :class:`Pipeline`); pass a :class:`StreamStats` to read the counts afterwards."""
    pipeline = Pipeline(session, queue_size, realtime_fps, order=order)
    try:
        for frame in pipeline.run(to_frame(index, array) for index, array in enumerate(frames)):
            pixels = frame.pixels if frame.alpha is None else np.dstack([frame.pixels, frame.alpha])
            yield pixels[..., 0] if frame.flat else pixels
    finally:
        if stats is not None:
            vars(stats).update({k: v for k, v in vars(pipeline.stats).items() if k != "_lock"})


def _put(target: queue.Queue, item, stop: threading.Event) -> bool:
    """Blocking put that gives up when the stream stops (False)."""
    while not stop.is_set():
        try:
            target.put(item, timeout=_POLL)
            return True
        except queue.Full:
            continue
    return False


def _get(source: queue.Queue, stop: threading.Event):
    """Blocking get that gives up when the stream stops (None)."""
    while not stop.is_set():
        try:
            return source.get(timeout=_POLL)
        except queue.Empty:
            continue
    return None
