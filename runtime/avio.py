"""Video files through PyAV (FFmpeg's libraries, bundled in its wheels): what keeps a video's
audio tracks and timestamps, and what splits a video at keyframes for ``restore --ray``.

A restored video is made in two passes. The picture is encoded into a video-only part (a
NUT file: FFmpeg's own container keeps any codec and any time base, so the source's
timestamps survive exactly), and a join then muxes the parts' packets with the source's
audio packets, both stream-copied, interleaved by time. Why not mux the audio while
encoding: the same join puts together the segments that Ray actors restored (one part
each), and muxing from finished files lets libavformat interleave the packets without
handing audio through the restore pipeline's threads.

Timestamps: the encoder numbers frames 0, 1, 2, ... (every encoder takes that time base;
MPEG-4 part 2, for one, refuses a 1/90000 one), and each packet gets back the source pts of
its frame before it is written. Segments start at keyframes; a segment's frames are those
whose pts lies in [its keyframe's pts, the next segment's), so every frame is in exactly one
segment, whatever the decoder's reordering.
"""

from __future__ import annotations

import heapq
import io
import os
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from .errors import EdgeRestoreError
from .optional import load_if_installed, require
from .stream import Frame, Notice, Skipped

PURPOSE = "keeping a video's audio and timestamps"
# Output container -> encoder, as OpenCV's sink picks them (runtime/video.py's VIDEO_CODECS).
DEFAULT_CODECS = {".avi": "mjpeg", ".mp4": "mpeg4", ".m4v": "mpeg4", ".mov": "mpeg4", ".mkv": "mpeg4"}
PART_SUFFIX = ".nut"
# Pixel formats tried in order: RGB ones first, so a lossless codec (FFV1, libx264rgb) keeps
# the restored pixels exactly; then 4:2:0 (full range for MJPEG, which wants it).
_RGB_FORMATS = ("rgb24", "bgr24", "bgr0", "gbrp")
_OVERSHOT = object()  # a seek that landed after the segment's start


def available():
    """PyAV, or None without it (the single-machine path then falls back to OpenCV)."""
    return load_if_installed("av")


def _av():
    return require("av", PURPOSE)


def codec_for(output: str | os.PathLike[str], codec: str | None) -> str:
    """The encoder for ``output``: ``codec`` if given (and PyAV has it), else the container's default."""
    suffix = Path(output).suffix.lower()
    if suffix not in DEFAULT_CODECS:
        raise EdgeRestoreError(f"cannot write video '{output}': use one of {', '.join(DEFAULT_CODECS)}")
    if codec is None:
        return DEFAULT_CODECS[suffix]
    av = _av()
    try:
        av.codec.Codec(codec, "w")
    except Exception:  # noqa: BLE001 - PyAV raises UnknownCodecError or a ValueError by release
        raise EdgeRestoreError(f"unknown video encoder '{codec}' (FFmpeg's name, e.g. mpeg4, mjpeg, ffv1, "
                               "libx264)") from None
    return codec


@dataclass(frozen=True)
class Segment:
    """Frames with ``start <= pts < end`` (``end`` None: to the end) of a video's stream;
    ``first``: the source index of its first frame."""

    index: int
    start: int
    end: int | None
    first: int
    frames: int


@dataclass
class VideoInfo:
    path: str
    time_base: Fraction
    rate: Fraction | None
    pts: list[int]  # every video packet's pts, sorted (presentation order)
    keyframes: list[int]  # pts of the keyframes, sorted
    audio: int  # audio streams (copied into the output)

    @property
    def frames(self) -> int:
        return len(self.pts)


def open_input(path: str | os.PathLike[str]):
    av = _av()
    path = Path(path)
    if not path.is_file():
        raise EdgeRestoreError(f"cannot read video '{path}': "
                               f"{'it is a directory' if path.is_dir() else 'file does not exist'}")
    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        raise EdgeRestoreError(f"cannot open video '{path}': not a video, or in a format FFmpeg cannot read "
                               f"({_reason(exc)})") from None
    if not container.streams.video:
        container.close()
        raise EdgeRestoreError(f"cannot open video '{path}': it has no video stream")
    return container


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Demux the video stream's packets (no decoding) for their timestamps and keyframes."""
    av = _av()
    container = open_input(path)
    try:
        stream = container.streams.video[0]
        pts, keys = [], []
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                if packet.pts is None:  # no timestamps (a raw stream): the video is one segment
                    pts, keys = list(range(len(pts) + 1)), [0]
                    break
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keys.append(packet.pts)
            else:
                pts.sort()
        except av.FFmpegError as exc:
            raise EdgeRestoreError(f"cannot read video '{path}': {_reason(exc)}") from None
        if not pts:
            raise EdgeRestoreError(f"video '{path}' has no frame")
        rate = stream.average_rate or stream.guessed_rate
        return VideoInfo(str(path), Fraction(stream.time_base), Fraction(rate) if rate else None, pts, sorted(keys),
                         len(container.streams.audio))
    finally:
        container.close()


def split(info: VideoInfo, min_frames: int) -> list[Segment]:
    """Segments of at least ``min_frames`` frames (the last may be shorter), each starting at a
    keyframe; frames before the first keyframe (a cut stream) go with the first segment."""
    starts = [info.pts[0]]
    for key in info.keyframes:
        if key > starts[-1] and bisect_left(info.pts, key) - bisect_left(info.pts, starts[-1]) >= min_frames:
            starts.append(key)
    segments = []
    for k, start in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else None
        first = bisect_left(info.pts, start)
        last = bisect_left(info.pts, end) if end is not None else len(info.pts)
        segments.append(Segment(k, start, end, first, last - first))
    return segments


class AvSource:
    """A video file's frames (RGB) with their pts, as :class:`~.video.CaptureSource` yields them;
    with ``segment`` only that segment's (decoding starts at its keyframe). A packet the
    decoder rejects is a corrupt frame (reported, skipped)."""

    live = False

    def __init__(self, path: str | os.PathLike[str], segment: Segment | None = None):
        self.av = _av()
        self.path, self.segment = str(path), segment
        self.container = open_input(path)  # an unreadable file fails here, before the bundle loads
        stream = self.container.streams.video[0]
        self.time_base = Fraction(stream.time_base)
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate and 0 < rate < 1000 else None
        self.total = segment.frames if segment else (stream.frames or None)
        self.description = f"video '{path}'"

    def __iter__(self) -> Iterator[Frame | Skipped]:
        stream = self.container.streams.video[0]
        decoded = 0
        for item in self._decode(stream, None, None) if self.segment is None else self._segment(stream):
            decoded += isinstance(item, Frame)
            yield item
        if not decoded:
            raise EdgeRestoreError(f"{self.description} has no frame that can be decoded")

    def _segment(self, stream) -> Iterator[Frame | Skipped]:
        """The segment's frames, decoded from the keyframe at its start; a demuxer whose index
        lands past that keyframe (the first frame comes later) is read from the beginning."""
        segment = self.segment
        self.container.seek(segment.start, stream=stream, backward=True, any_frame=False)
        for item in self._decode(stream, segment.start, segment.end, exact=True):
            if item is _OVERSHOT:
                break
            yield item
        else:
            return
        self.container.seek(stream.start_time or 0, stream=stream, backward=True, any_frame=False)
        yield from self._decode(stream, segment.start, segment.end)

    def _decode(self, stream, start: int | None, end: int | None, exact: bool = False):
        """Frames with ``start <= pts < end`` in presentation order; ``exact``: end with
        _OVERSHOT instead when the first frame decoded comes after ``start``."""
        av = self.av
        index = self.segment.first if self.segment else 0
        first = True
        for packet in self.container.demux(stream):
            try:
                frames = packet.decode()
            except av.FFmpegError as exc:
                if packet.size:  # the flush packet at the end carries no frame of its own
                    yield Skipped(index, f"video frame could not be decoded ({_reason(exc)})")
                    index += 1
                continue
            for frame in frames:
                pts = frame.pts
                if exact and first and start is not None and pts is not None and pts > start:
                    yield _OVERSHOT
                    return
                first = False
                if start is not None and pts is not None and pts < start:
                    continue  # a leading frame of an open GOP: the previous segment's
                if end is not None and pts is not None and pts >= end:
                    return
                yield Frame(index, frame.to_ndarray(format="rgb24"), pts=pts)
                index += 1

    def close(self) -> None:
        self.container.close()


class AvSink:
    """Encodes frames into the video-only part ``path`` (NUT), each packet with its frame's
    source pts in ``time_base``. ``name`` is the user's output, for messages. A video has one
    frame size, the first frame's: later frames of another size are scaled to it (reported)."""

    def __init__(self, path: str | os.PathLike[str], name: str | os.PathLike[str], codec: str, time_base: Fraction,
                 fps: float | None, on_notice: Notice):
        self.av = _av()
        self.path, self.name, self.codec, self.time_base = Path(path), name, codec, time_base
        self.rate = Fraction(fps).limit_denominator(1001) if fps else Fraction(25)
        self.on_notice = on_notice
        self.container = self.stream = None
        self.size: tuple[int, int] | None = None
        self.pts: list[int] = []  # the source pts of frame k (the encoder's pts k)
        self.frames = 0
        self._scaled: set[tuple[int, int]] = set()

    def _open(self, frame: Frame) -> None:
        av = self.av
        self.size = frame.size
        self.container = av.open(str(self.path), "w", format="nut")
        try:
            stream = self.container.add_stream(self.codec, rate=self.rate)
            stream.width, stream.height = self.size
            stream.pix_fmt = _pixel_format(stream.codec_context.codec)
            stream.time_base = self.time_base  # the part's timestamps are the source's
            stream.codec_context.open()
        except (av.FFmpegError, ValueError) as exc:
            raise EdgeRestoreError(f"cannot write video '{self.name}': FFmpeg cannot encode {self.codec} at "
                                   f"{self.size[0]}x{self.size[1]} ({_reason(exc)})") from None
        self.stream = stream

    def write(self, frame: Frame) -> None:
        if self.container is None:
            self._open(frame)
        pixels = frame.pixels if frame.bit_depth == 8 else np.rint(frame.pixels / 257.0).astype(np.uint8)
        if pixels.shape[2] == 1:
            pixels = np.repeat(pixels, 3, axis=2)
        if frame.size != self.size:
            if frame.size not in self._scaled:
                self._scaled.add(frame.size)
                self.on_notice("size", f"frame {frame.index}: restored at {frame.size[0]}x{frame.size[1]}, "
                               f"scaled to the video's {self.size[0]}x{self.size[1]} (a video file has one frame size)")
        picture = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
        if frame.size != self.size:
            picture = picture.reformat(width=self.size[0], height=self.size[1])
        picture.pts, picture.time_base = len(self.pts), 1 / self.rate
        self.pts.append(frame.pts if frame.pts is not None else self._next_pts())
        self._mux(self.stream.encode(picture))
        self.frames += 1

    def _next_pts(self) -> int:
        """A frame without a pts (OpenCV sources have none): one frame interval after the last."""
        step = max(1, round(1 / (self.rate * self.time_base)))
        return self.pts[-1] + step if self.pts else 0

    def _mux(self, packets) -> None:
        for packet in packets:
            # The encoder's pts k is frame k; its dts may run ahead of the pts into negative
            # numbers (reordering codecs): those extrapolate back by the first frame interval.
            pts, dts = packet.pts, packet.dts if packet.dts is not None else packet.pts
            step = self.pts[1] - self.pts[0] if len(self.pts) > 1 else max(1, round(1 / (self.rate * self.time_base)))
            packet.pts = self.pts[pts]
            packet.dts = self.pts[dts] if dts >= 0 else self.pts[0] + dts * step
            packet.duration = round(Fraction(packet.duration or 0) / (self.rate * self.time_base))  # frame intervals
            packet.time_base = self.time_base
            packet.stream = self.stream
            self.container.mux(packet)

    def close(self) -> None:
        if self.container is None:
            return
        try:
            self._mux(self.stream.encode(None))
        finally:
            self.container.close()


def join(parts: list[Path], source: str | os.PathLike[str], target: Path, name: str | os.PathLike[str],
         on_notice: Notice, until: float | None = None) -> None:
    """Mux the parts' video packets (in order) and the source's audio streams into ``target``,
    all stream-copied; ``until`` (seconds): audio that starts later is left out (a stream
    stopped early with ``--frames``). An audio codec the container cannot hold is reported
    and left out."""
    av = _av()
    inputs = [av.open(str(part)) for part in parts]
    origin = open_input(source)
    try:
        output = av.open(str(target), "w")
        try:
            video = output.add_stream_from_template(inputs[0].streams.video[0])
            streams = [(inputs[0].streams.video[0], video)]
            for track in origin.streams.audio:
                codec = track.codec_context.name
                if not _fits(output.format.name, inputs[0].streams.video[0], track):
                    on_notice("audio", f"audio track {track.index} ({codec}) cannot be stored in "
                              f"'{Path(name).suffix}' and is left out (.mkv holds any codec)")
                    continue
                streams.append((track, output.add_stream_from_template(track)))
            audio = {src.index: out for src, out in streams[1:]}
            packets = [_video_packets(inputs, video)]
            if audio:
                packets.append(_audio_packets(origin, audio, until))
            for _, packet in heapq.merge(*packets, key=lambda entry: entry[0]):
                output.mux(packet)
        except av.FFmpegError as exc:
            raise EdgeRestoreError(f"cannot write video '{name}': {_reason(exc)}") from None
        finally:
            output.close()
    finally:
        for container in (*inputs, origin):
            container.close()


def _fits(format_name: str, video, track) -> bool:
    """Whether the container takes ``track`` beside ``video``: writing a header in memory is
    the test (its supported_codecs list is wider than what the muxer accepts: FLAC in .mov)."""
    av = _av()
    try:
        with av.open(io.BytesIO(), "w", format=format_name) as trial:
            trial.add_stream_from_template(video)
            trial.add_stream_from_template(track)
            trial.start_encoding()
    except (av.FFmpegError, ValueError):
        return False
    return True


def _video_packets(inputs, stream) -> Iterator[tuple[Fraction, object]]:
    for container in inputs:
        for packet in container.demux(container.streams.video[0]):
            if packet.size == 0:
                continue
            packet.stream = stream
            yield _decode_time(packet), packet


def _audio_packets(origin, audio: dict, until: float | None) -> Iterator[tuple[Fraction, object]]:
    for packet in origin.demux([origin.streams[index] for index in audio]):
        if packet.size == 0 or packet.dts is None:
            continue
        if until is not None and packet.pts is not None and packet.pts * packet.time_base >= until:
            continue
        packet.stream = audio[packet.stream.index]
        yield _decode_time(packet), packet


def _decode_time(packet) -> Fraction:
    stamp = packet.dts if packet.dts is not None else packet.pts
    return Fraction(stamp or 0) * packet.time_base


def _pixel_format(codec) -> str:
    names = [f.name for f in (codec.video_formats or [])]
    preferred = [*_RGB_FORMATS, "yuvj420p" if codec.name == "mjpeg" else "yuv420p", "yuv420p"]
    return next((name for name in preferred if name in names), names[0] if names else "yuv420p")


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
