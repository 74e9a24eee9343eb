"""``edgerestore restore`` on a stream: a video file, a camera, a GStreamer pipeline or an
image folder in; a video file or a folder of frames out (see :mod:`runtime.stream`)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import click

from . import avio, imageio
from .atomic import atomic_file
from .errors import EdgeRestoreError
from .session import Session
from .stream import Pipeline, StreamStats
from .video import (VIDEO_CODECS, VIDEO_SUFFIXES, ImageFolderSink, VideoSink, is_camera, is_pipeline, is_video_file,
                    open_source)

DEFAULT_FPS = 25.0  # an output video's rate when neither the source nor --realtime gives one
_SHOWN_PER_KIND = 10  # warnings of one kind printed before the rest are only counted


def is_stream(inputs: list[str], output: Path, realtime: float | None) -> bool:
    """Whether ``restore`` runs as a stream. Image files (and a folder restored into one
    image file) keep the batch path: every image must read, the first bad one is an error."""
    if realtime is not None or output.suffix.lower() in VIDEO_SUFFIXES:
        return True
    if any(is_camera(s) or is_pipeline(s) or is_video_file(s) for s in inputs):
        return True
    return any(Path(s).is_dir() for s in inputs) and output.suffix.lower() not in imageio.IMAGE_EXTENSIONS


def restore_stream(session_factory, inputs: list[str], output: Path, realtime: float | None, queue_size: int,
                   max_frames: int | None, as_json: bool, codec: str | None = None) -> None:
    """Open the source and the sink (errors before the bundle loads), restore, report. A
    video file restored into a video file goes through PyAV when it is installed (audio and
    timestamps kept, :mod:`.avio`), else through OpenCV (neither kept, said in one line)."""
    video_out = output.suffix.lower() in VIDEO_SUFFIXES
    if not video_out and output.suffix.lower() in imageio.IMAGE_EXTENSIONS:
        raise EdgeRestoreError(f"a stream is restored into a folder or a video file ({', '.join(VIDEO_CODECS)}), "
                               f"not the image file '{output}'")
    if video_out and output.suffix.lower() not in VIDEO_CODECS:
        raise EdgeRestoreError(f"cannot write video '{output}': use one of {', '.join(VIDEO_CODECS)}")
    if not video_out and output.exists() and not output.is_dir():
        raise EdgeRestoreError(f"output '{output}' exists and is not a directory")
    from rich.console import Console

    console = Console(stderr=True)
    shown: dict[str, int] = {}

    def notice(kind: str, line: str) -> None:
        shown[kind] = shown.get(kind, 0) + 1
        if shown[kind] <= _SHOWN_PER_KIND:
            console.print(f"warning: {line}", soft_wrap=True, markup=False, highlight=False)
        elif shown[kind] == _SHOWN_PER_KIND + 1:
            console.print(f"warning: more '{kind}' frames; counted in the summary", soft_wrap=True, markup=False,
                          highlight=False)

    video_in = len(inputs) == 1 and is_video_file(inputs[0]) and not (is_camera(inputs[0]) or is_pipeline(inputs[0]))
    keep_audio = video_out and video_in and avio.available() is not None
    if codec is not None and not keep_audio:
        raise EdgeRestoreError("--codec picks the encoder of a video restored from a video file, with PyAV "
                               "(pip install 'edgerestore[video]')")
    if keep_audio:
        codec = avio.codec_for(output, codec)
    elif video_out and video_in:
        notice("audio", "the video's audio and timestamps are not kept (frames are written at a constant rate): "
               "that needs PyAV: pip install 'edgerestore[video]'")
    with imageio.opencv_silenced():
        source = avio.AvSource(inputs[0]) if keep_audio else open_source(inputs)
        try:
            session: Session = session_factory()
            pipeline = Pipeline(session, queue_size, realtime, paced=not source.live, on_notice=notice)
            fps = realtime or source.fps or DEFAULT_FPS
            if keep_audio:
                with atomic_file(output) as tmp:
                    part = tmp.with_name(tmp.name + avio.PART_SUFFIX)  # a leftover of the same output
                    try:
                        sink = avio.AvSink(part, output, codec, source.time_base, fps, notice)
                        interrupted = _run(pipeline, source, sink, max_frames, console)
                        if not sink.frames:
                            raise _nothing_restored(source, pipeline.stats)
                        until = None if max_frames is None else float((max(sink.pts) * source.time_base) + 1 / fps)
                        avio.join([part], inputs[0], tmp, output, notice, until)
                    finally:
                        part.unlink(missing_ok=True)
            elif video_out:
                with atomic_file(output) as tmp:
                    sink = VideoSink(tmp, output, fps, notice)
                    interrupted = _run(pipeline, source, sink, max_frames, console)
                    if not sink.frames:
                        raise _nothing_restored(source, pipeline.stats)
            else:
                sink = ImageFolderSink(output)
                interrupted = _run(pipeline, source, sink, max_frames, console)
                if not sink.frames:
                    raise _nothing_restored(source, pipeline.stats)
        finally:
            source.close()
    _report(pipeline.stats, source, output, session, realtime, interrupted, as_json)


def _run(pipeline: Pipeline, source, sink, max_frames: int | None, console) -> bool:
    """Consume the pipeline into the sink with a progress bar; True if a live source was
    stopped with Ctrl-C (its output is kept: that is how a camera stream ends)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    total = source.total if max_frames is None else min(max_frames, source.total or max_frames)
    frames = source if max_frames is None else itertools.islice(source, max_frames)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[fps]:.1f} fps"), TimeElapsedColumn(), TextColumn("{task.fields[note]}")]
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("restoring", total=total, fps=0.0, note="")
        results = pipeline.run(frames)
        try:
            for frame in results:
                sink.write(frame)
                stats = pipeline.stats
                dropped, skipped = stats.dropped, stats.corrupt
                note = ", ".join(part for part in (f"{dropped} dropped" if dropped else "",
                                                   f"{skipped} skipped" if skipped else "") if part)
                elapsed = bar.tasks[0].elapsed or 0.0
                bar.update(task, completed=stats.restored + dropped + skipped,
                           fps=stats.restored / elapsed if elapsed else 0.0, note=note)
        except KeyboardInterrupt:
            if not source.live:
                raise
            results.close()
            return True
        finally:
            sink.close()
    return False


def _nothing_restored(source, stats: StreamStats) -> EdgeRestoreError:
    first = f": {stats.skipped[0].reason}" if stats.skipped else ""
    return EdgeRestoreError(f"no frame of {source.description} could be restored{first}")


def _report(stats: StreamStats, source, output: Path, session: Session, realtime: float | None,
            interrupted: bool, as_json: bool) -> None:
    frames = max(stats.restored, 1)
    corrupt = [s.index for s in stats.skipped if s.kind == "corrupt"]
    summary = {
        "source": source.description, "output": str(output), "frames": stats.read + stats.corrupt,
        "restored": stats.restored, "dropped": stats.dropped, "realtime_fps": realtime, "corrupt": stats.corrupt,
        "skipped": [{"index": s.index, "kind": s.kind, "reason": s.reason} for s in stats.skipped],
        "size_changes": [{"index": i, "from": list(a), "to": list(b)} for i, a, b in stats.size_changes],
        "interrupted": interrupted, "backend": session.backend, "precision": session.precision,
        "seconds": stats.seconds, "fps": stats.fps, "restore_seconds": stats.restore_seconds,
        "gmac_per_frame": stats.executed_macs / frames / 1e9,
        "full_path_gmac_per_frame": stats.full_macs / frames / 1e9,
        "bypass_share": stats.bypass_share,
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"restored {stats.restored} of {summary['frames']} frames -> {output} ({session.backend}, "
               f"{session.precision}, {stats.seconds:.2f} s, {stats.fps:.2f} fps)"
               + ("; stopped with Ctrl-C" if interrupted else ""))
    if stats.dropped:
        click.echo(f"dropped {stats.dropped} late frame(s) to keep up with --realtime {realtime:g}")
    if stats.corrupt:
        click.echo(f"skipped {stats.corrupt} corrupt frame(s): {', '.join(map(str, corrupt[:20]))}"
                   + (" ..." if stats.corrupt > 20 else ""))
    if stats.full_macs and stats.executed_macs < stats.full_macs:
        click.echo(f"executed {summary['gmac_per_frame']:.2f} GMAC per frame, "
                   f"{stats.executed_macs / stats.full_macs:.0%} of the full path "
                   f"({summary['full_path_gmac_per_frame']:.2f} GMAC)")
