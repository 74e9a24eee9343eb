"""Restoring image sets and videos on a Ray cluster (``restore --ray``; ``edgerestore.distributed``).

    from edgerestore import distributed

    report = distributed.restore("dncnn.bundle", ["survey/"], "clean/", backend="onnxruntime", threads=1)

Ray Data runs the job: the pending items (:mod:`.jobs`) are a dataset, and a pool of actors
maps them, each actor holding one session loaded once (its ``threads``, and a memory budget
Ray reserves for it with the model's stage files). A bad item is a failed record, not a
failed task. The driver appends each finished item to the results file as it streams back,
so a stopped job resumes where it stopped. A video is split at keyframes into segments
that are items like the images; the driver joins a video's segments when the last is in
(:mod:`.video_jobs`). Ray Data restarts an actor whose process dies
and retries its items, without limit: a worker lost with its node costs time, not items.

Ray is an extra (``pip install 'edgerestore[ray]'``), imported only when a job runs. Every
node reads the bundle and the inputs and writes the outputs under the same paths: a shared
file system, and edgerestore installed on each node.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .budget import DEFAULT_BUDGET_MB
from .bundle import Bundle
from .errors import EdgeRestoreError
from . import video_jobs
from .jobs import RESULTS_NAME, Item, Results, fingerprint, is_video, list_items, remove_partial_outputs, restore_item
from .optional import missing, require
from .video_jobs import SEGMENT_FRAMES

# The session options a job passes on, with edgerestore.load's defaults (a job's fingerprint
# is the same whether an option was left out or given its default).
SESSION_OPTIONS = {"tile": None, "overlap": None, "whole": None, "min_confidence": 0.5, "route_policy": "tile"}


@dataclass
class Report:
    """What a job did: items (images and videos) restored now, done by an earlier run, failed
    (with reasons)."""

    items: int
    restored: int
    skipped: int
    failed: dict[str, str] = field(default_factory=dict)  # source -> error (a video's: its first)
    videos: int = 0  # of the items
    segments: int = 0  # video segments restored now
    frames: int = 0  # video frames in the videos joined now
    warnings: list[str] = field(default_factory=list)  # of the videos joined now (an audio track left out)
    seconds: float = 0.0
    actors: int = 0
    threads: int = 1
    output: str = ""
    results: str = ""
    gmac_per_image: float | None = None
    psnr: float | None = None  # mean over the items restored now that had a ground truth

    @property
    def images_per_second(self) -> float:
        return self.restored / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "images_per_second": self.images_per_second}


def restore(bundle: str | os.PathLike[str], sources: list[str | os.PathLike[str]], output: str | os.PathLike[str], *,
            backend: str = "auto", precision: str | None = None, memory_budget: float = DEFAULT_BUDGET_MB,
            threads: int = 1, actors_per_node: int | None = None, actors: int | None = None, gpus_per_actor: float = 0,
            address: str | None = None, gt: str | os.PathLike[str] | None = None,
            results: str | os.PathLike[str] | None = None, progress: Callable[[dict], None] | None = None,
            on_start: Callable[[int, int], None] | None = None, codec: str | None = None,
            segment_frames: int = SEGMENT_FRAMES, **session_options: Any) -> Report:
    """Restore the images and videos of ``sources`` (image files, folders of images, file
    lists, video files) into the folder ``output`` on the Ray cluster at ``address``
    (``RAY_ADDRESS``; a local one when neither, or the one this process already joined).
    ``progress`` sees each finished item's record (an image, a video segment, a joined
    video), ``on_start`` the numbers of records to come and of items done before. ``actors``
    caps the actors in all (default: what the nodes hold, see :func:`_actor_count`). Videos
    are split at the first keyframe after every ``segment_frames`` frames and encoded with
    ``codec`` (default: the container's, see :mod:`.avio`). Session options as
    :func:`edgerestore.load`."""
    unknown = set(session_options) - set(SESSION_OPTIONS)
    if unknown:
        raise TypeError(f"unknown session option(s): {', '.join(sorted(unknown))}")
    if segment_frames < 1:
        raise ValueError("segment_frames must be at least 1")
    session_options = {**SESSION_OPTIONS, **session_options}
    loaded = Bundle(bundle)  # a broken bundle fails here, in one line, not in every actor
    items = list_items(sources, output, gt)
    videos = [item for item in items if is_video(item.source)]
    if videos:
        require("av", "restoring videos with --ray")
    key = fingerprint(bundle, backend, precision, session_options)
    video_key = fingerprint(bundle, backend, precision, {**session_options, "codec": codec})  # the codec: videos'
    log = Results(results or Path(output) / RESULTS_NAME)
    done, videos_done = log.finished(key), log.finished(video_key)
    pending = [item for item in items if not is_video(item.source)
               and done.get(item.output, {}).get("source") != item.source]
    waiting = [item for item in videos if videos_done.get(item.output, {}).get("source") != item.source]
    report = Report(len(items), 0, len(items) - len(pending) - len(waiting), threads=threads, output=str(output),
                    results=str(log.path), videos=len(videos))
    parts: dict[str, dict[str, dict | None]] = {}  # video output -> segment output -> its record once done
    start = time.perf_counter()
    macs, scores = [], []

    def finished(record: dict) -> None:
        log.append([record])
        if record["status"] == "ok":
            report.restored += "segment" not in record
            report.frames += record.get("frames", 0) if "segment" not in record else 0
            report.warnings += record.get("notes", []) if record.get("kind") == "video" else []
            if "segment" not in record and "kind" not in record:
                macs.append(record["gmac"])
            if "psnr" in record:
                scores.append(record["psnr"])
        else:
            report.failed.setdefault(record["source"], record["error"])
        if progress:
            progress(record)

    def join_if_complete(video: Item) -> None:
        records = parts[video.output]
        if all(records.values()):
            finished(video_jobs.join(video, list(records.values()), video_key))

    segments: list[Item] = []
    unreadable = 0
    for video in waiting:
        try:
            planned = video_jobs.plan(video, codec, segment_frames)
        except EdgeRestoreError as err:  # unreadable: reported, the rest goes on
            unreadable += 1
            finished({"source": video.source, "output": video.output, "fingerprint": video_key, "kind": "video",
                      "status": "failed", "error": str(err)})
            continue
        parts[video.output] = {s.output: videos_done.get(s.output) if videos_done.get(s.output, {}).get("source")
                               == s.source else None for s in planned}
        segments += [s for s in planned if parts[video.output][s.output] is None]
    by_output = {video.output: video for video in waiting}
    joins = len(parts)
    if on_start:
        on_start(len(pending) + len(segments) + joins + unreadable, report.skipped)
    for video_output in [o for o, records in parts.items() if all(records.values())]:
        join_if_complete(by_output[video_output])  # every segment done by an earlier run
    work = pending + segments
    if not work:
        remove_partial_outputs(waiting)  # a join a killed driver left
        report.seconds = time.perf_counter() - start
        return report
    ray = _ray()
    _connect(ray, address)
    megabytes = memory_budget + _stage_megabytes(loaded, precision)  # what Ray reserves for an actor
    report.actors = min(_actor_count(ray, threads, megabytes, actors_per_node, gpus_per_actor),
                        actors or len(work), len(work))
    try:
        for record in _run(ray, work, bundle, (key, video_key), report.actors, threads, megabytes, gpus_per_actor,
                           dict(backend=backend, precision=precision, memory_budget=memory_budget, **session_options)):
            video = by_output.get(record.get("video", ""))
            if video is None:
                finished(record)
                continue
            report.segments += record["status"] == "ok"
            if record["status"] == "ok":
                parts[video.output][record["output"]] = record
                finished(record)
                join_if_complete(video)
            else:  # the video fails; its other segments go on, and a rerun retries this one
                finished(record)
    finally:
        remove_partial_outputs(work + waiting)
        report.seconds = time.perf_counter() - start
    report.gmac_per_image = float(np.mean(macs)) if macs else None
    report.psnr = float(np.mean(scores)) if scores else None
    return report


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401 - Ray without its data library (pip install ray) cannot run a job
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in ("ray", "pyarrow", "pandas"):
            raise
        raise EdgeRestoreError(missing("ray", "--ray")) from None
    return ray


def _connect(ray, address: str | None) -> None:
    if ray.is_initialized():  # an application (or a test) that started or joined a cluster itself
        return
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                 configure_logging=True, log_to_driver=False)
    except ConnectionError as exc:
        raise EdgeRestoreError(f"cannot join the Ray cluster at '{address or os.environ.get('RAY_ADDRESS')}': "
                               f"{str(exc).splitlines()[0]}") from None


def _actor_count(ray, threads: int, megabytes: float, per_node: int | None, gpus: float) -> int:
    """Actors the live nodes hold: as many as their CPUs take at ``threads`` each, their memory
    at ``megabytes`` each (and their GPUs at ``gpus`` each), at most ``per_node`` on a node. A
    pool larger than the cluster holds would wait for actors that never start."""
    total = 0
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        resources = node.get("Resources", {})
        fit = min(int(resources.get("CPU", 0) // threads), int(resources.get("memory", 0) // (megabytes * 2**20)))
        if gpus:
            fit = min(fit, int(resources.get("GPU", 0) // gpus))
        total += fit if per_node is None else min(fit, per_node)
    if total < 1:
        raise EdgeRestoreError(f"no node of the Ray cluster has {threads} CPU(s), {megabytes:.0f} MB of memory"
                               + (f" and {gpus:g} GPU(s)" if gpus else "") + " for one actor (a smaller "
                               "--memory-budget or --threads may fit)")
    return total


def _run(ray, items: list[Item], bundle, keys: tuple[str, str], actors: int, threads: int, megabytes: float,
         gpus: float, options: dict):
    """The finished items' records, in the order they finish."""
    from ray.data import ActorPoolStrategy, DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False  # the command draws its own bar, per item
    context.enable_operator_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its notes on our own settings
    # Blocks (tasks) of a few items: results stream back while the job runs, a retried task
    # redoes few items, and a task's overhead is small beside a few restorations.
    rows = [{"source": i.source, "output": i.output, "gt": i.gt, "segment": i.segment} for i in items]
    dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), max(actors * 4, -(-len(rows) // 4))))
    mapped = dataset.map_batches(_Restorer, batch_size=1, compute=ActorPoolStrategy(size=actors),
                                 fn_constructor_kwargs={"bundle": str(bundle), "keys": keys, "threads": threads,
                                                        "options": options},
                                 num_cpus=threads, num_gpus=gpus or None, memory=megabytes * 2**20)
    try:
        for batch in mapped.iter_batches(batch_size=None, batch_format="numpy"):
            for line in batch["record"]:
                yield json.loads(str(line))
    except EdgeRestoreError:
        raise
    except Exception as exc:  # noqa: BLE001 - Ray's errors wrap the cause in pages of traceback
        raise EdgeRestoreError(f"the Ray job stopped: {_first_line(exc)} (finished items are recorded; "
                               "run the same command again to resume)") from None


def _stage_megabytes(bundle: Bundle, precision: str | None) -> float:
    """The model an actor holds besides its budget: the stage files of the precision it will
    load (without one, the largest set of the bundle's precisions: an upper bound)."""
    precisions = [precision] if precision else bundle.precisions
    sizes = [sum((bundle.root / spec.files[p]).stat().st_size for spec in bundle.stages.values() if p in spec.files)
             for p in precisions]
    return max(sizes, default=0) / 2**20


class _Restorer:
    """A Ray actor's work: one session, loaded once when the actor starts (again when Ray
    restarts it), then the items Ray hands it."""

    def __init__(self, bundle: str, keys: tuple[str, str], threads: int, options: dict):
        from .session import Session

        self.session = Session(bundle, threads=threads, **options)
        self.key, self.video_key = keys

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = []
        for source, output, gt, segment in zip(batch["source"], batch["output"], batch["gt"], batch["segment"]):
            item = Item(str(source), str(output), str(gt), str(segment))
            records.append(json.dumps(video_jobs.restore_segment(self.session, item, self.video_key) if item.segment
                                      else restore_item(self.session, item, self.key)))
        return {"record": np.array(records, dtype=object)}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    cause = exc
    while cause.__cause__ is not None:  # the worker's own error, not Ray's wrapper
        cause = cause.__cause__
        text = str(cause).strip() or text
    return text.splitlines()[0] if text else type(exc).__name__

