"""Videos in a batch job (``restore --ray``): each video is split at keyframes into segments,
the segments are the job's items (restored in parallel by the actors, each into a video-only
part), and the driver joins a video's parts with the source's audio once all are done.

A segment is an item of the results file like an image: its part, under the hidden folder
``.NAME.segments`` beside the video's output, is named after its bounds, so a rerun with the
same segmentation skips the parts already there. When the video is joined it gets its own
record (output, checksum, frames, segments) and the parts are deleted: a rerun then skips
the whole video.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from . import avio
from .atomic import atomic_file
from .errors import EdgeRestoreError
from .jobs import Item, failures_recorded, worker_name
from .schema import file_sha256
from .session import Session
from .stream import Skipped

SEGMENT_FRAMES = 120  # a segment runs to the first keyframe after this many frames


def segment_folder(output: str) -> Path:
    path = Path(output)
    return path.parent / f".{path.name}.segments"


def plan(video: Item, codec: str | None, segment_frames: int) -> list[Item]:
    """The segment items of ``video`` (its keyframes read on the driver, nothing decoded)."""
    codec = avio.codec_for(video.output, codec)
    segments = avio.split(avio.probe(video.source), segment_frames)
    folder = segment_folder(video.output)
    return [Item(video.source, str(folder / f"{s.index:05d}_{s.start}_{'end' if s.end is None else s.end}"
                                           f"{avio.PART_SUFFIX}"),
                 segment=json.dumps({**asdict(s), "codec": codec, "video": video.output})) for s in segments]


def restore_segment(session: Session, item: Item, key: str) -> dict:
    """An actor's work on one segment: decode from its keyframe, restore, encode its part."""
    spec = json.loads(item.segment)
    segment = avio.Segment(**{k: spec[k] for k in ("index", "start", "end", "first", "frames")})
    record: dict[str, Any] = {"source": item.source, "output": item.output, "fingerprint": key,
                              "video": spec["video"], "segment": segment.index,
                              "worker": worker_name()}
    corrupt: list[int] = []
    notes: list[str] = []
    gmac = full_gmac = restore_seconds = 0.0
    with failures_recorded(record):
        source = avio.AvSource(item.source, segment)
        try:
            Path(item.output).parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(item.output) as tmp:
                sink = avio.AvSink(tmp, spec["video"], spec["codec"], source.time_base, source.fps,
                                   lambda kind, line: notes.append(line))
                try:
                    for frame in source:
                        if isinstance(frame, Skipped):
                            corrupt.append(frame.index)
                            continue
                        result = session.run(frame.pixels, "RGB")
                        gmac, full_gmac = gmac + result.gmac, full_gmac + result.full_gmac
                        restore_seconds += result.seconds
                        sink.write(replace(frame, pixels=result.image))
                finally:
                    sink.close()
        finally:
            source.close()
        record.update(status="ok", sha256=file_sha256(Path(item.output)), frames=sink.frames, corrupt=corrupt,
                      gmac=gmac / max(sink.frames, 1), full_gmac=full_gmac / max(sink.frames, 1),
                      restore_seconds=restore_seconds, notes=notes)
    return record


def join(video: Item, parts: list[dict], key: str) -> dict:
    """The driver's work once every segment of ``video`` is done: the parts (records, in
    segment order) and the source's audio, stream-copied into the video's output."""
    start = time.perf_counter()
    record: dict[str, Any] = {"source": video.source, "output": video.output, "fingerprint": key, "kind": "video"}
    notes: list[str] = [note for part in parts for note in part.get("notes", [])]
    try:
        with atomic_file(video.output) as tmp:
            avio.join([Path(p["output"]) for p in parts], video.source, tmp, video.output,
                      lambda kind, line: notes.append(line))
        frames = sum(p["frames"] for p in parts)
        record.update(status="ok", sha256=file_sha256(Path(video.output)), segments=len(parts), frames=frames,
                      corrupt=[i for p in parts for i in p.get("corrupt", [])],
                      gmac=sum(p["gmac"] * p["frames"] for p in parts) / max(frames, 1),
                      full_gmac=sum(p["full_gmac"] * p["frames"] for p in parts) / max(frames, 1),
                      restore_seconds=sum(p["restore_seconds"] for p in parts),
                      segment_seconds=sum(p["seconds"] for p in parts), notes=notes)
        shutil.rmtree(segment_folder(video.output), ignore_errors=True)
    except EdgeRestoreError as err:
        record.update(status="failed", error=str(err))
    record["seconds"] = time.perf_counter() - start
    return record
