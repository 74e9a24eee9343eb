"""Frame sources and sinks for streams, on OpenCV's video I/O.

Sources: video files (OpenCV's FFmpeg backend), cameras (by index), GStreamer pipeline
strings (OpenCV's GStreamer backend: the OpenCV that JetPack ships has it, pip's wheels do
not), and image sequences (a folder of images, read with :mod:`runtime.imageio`). Each
yields :class:`~runtime.stream.Frame` items in RGB order, or :class:`~runtime.stream.Skipped`
for a frame it cannot decode. Sinks: a video file (written to a temporary name by the
caller, see :mod:`runtime.atomic`) or a folder of images.

Corrupt video frames: OpenCV's ``grab()`` fails for a packet the decoder rejects and the
next ``grab()`` goes on with the following frame, so a failure followed by a success is a
corrupt frame (reported, skipped); failures that run into the end of the file, or past the
frame count the container announces, are the end of the stream.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from . import imageio
from .errors import EdgeRestoreError
from .optional import require
from .stream import Frame, Notice, Skipped

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".ts", ".wmv", ".flv", ".y4m")
# Output container -> codec OpenCV's FFmpeg can encode everywhere (pip's wheels have no H.264 encoder).
VIDEO_CODECS = {".avi": "MJPG", ".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v"}
_FILE_GAP = 30  # consecutive failed reads inside a file (before its announced end) taken as the end
_LIVE_GAP = 3  # a camera or pipeline: each failed read may already have waited for a timeout

# FFmpeg logs every damaged packet on stderr; our report of the frame says it in one line.
# OpenCV reads this when its FFmpeg backend first loads.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


def is_camera(spec: str) -> bool:
    return bool(re.fullmatch(r"\d+", spec)) and not Path(spec).exists()


def is_pipeline(spec: str) -> bool:
    return "!" in spec and not Path(spec).exists()


def is_video_file(spec: str) -> bool:
    return Path(spec).suffix.lower() in VIDEO_SUFFIXES


class ImageSequence:
    """Image files as frames, in the order given; an unreadable file is a corrupt frame."""

    live = False

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self.total: int | None = len(paths)
        self.fps: float | None = None
        self.description = f"{len(paths)} images"

    def __iter__(self) -> Iterator[Frame | Skipped]:
        for index, path in enumerate(self.paths):
            try:
                image = imageio.read_image(path)
            except EdgeRestoreError as err:
                yield Skipped(index, str(err))
                continue
            yield Frame(index, image.pixels, image.alpha, path.name, metadata=image.metadata)

    def close(self) -> None:
        pass


class CaptureSource:
    """A video file, a camera index or a GStreamer pipeline, read with cv2.VideoCapture."""

    def __init__(self, spec: str):
        self.cv2 = cv2 = require("cv2", "reading videos, cameras and GStreamer pipelines")
        with imageio.opencv_silenced():
            if is_camera(spec):
                self.kind, self.live = "camera", True
                self.capture = cv2.VideoCapture(int(spec))
                problem = "no such device, it is busy, or this user may not open it"
            elif is_pipeline(spec):
                self.kind, self.live = "GStreamer pipeline", True
                if not cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
                    raise EdgeRestoreError("this OpenCV has no GStreamer support (pip's opencv-python wheels are "
                                           "built without it); use the OpenCV that JetPack ships, or a video file "
                                           "or camera index")
                if "appsink" not in spec:  # OpenCV takes frames from an appsink at the pipeline's end
                    spec = f"{spec} ! videoconvert ! video/x-raw,format=BGR ! appsink"
                self.capture = cv2.VideoCapture(spec, cv2.CAP_GSTREAMER)
                problem = "check the elements and caps with gst-launch-1.0"
            else:
                self.kind, self.live = "video", False
                path = Path(spec)
                if not path.is_file():
                    raise EdgeRestoreError(f"cannot read video '{spec}': "
                                           f"{'it is a directory' if path.is_dir() else 'file does not exist'}")
                if not os.access(path, os.R_OK):
                    raise EdgeRestoreError(f"cannot read video '{spec}': permission denied")
                self.capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
                problem = "not a video, or in a format or codec this OpenCV's FFmpeg cannot decode"
        self.spec = spec
        if not self.capture.isOpened():
            raise EdgeRestoreError(f"cannot open {self.kind} '{spec}': {problem}")
        count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(self.capture.get(cv2.CAP_PROP_FPS))
        self.total = count if count > 0 and not self.live else None
        self.fps = fps if 0 < fps < 1000 else None
        self.description = f"{self.kind} '{spec}'"

    def __iter__(self) -> Iterator[Frame | Skipped]:
        capture, gap = self.capture, _LIVE_GAP if self.live else _FILE_GAP
        index = decoded = 0
        failed: list[int] = []  # reads that failed since the last good one
        while True:
            ok = capture.grab()
            ok, bgr = capture.retrieve() if ok else (False, None)
            if not ok or bgr is None:
                if self.total is not None and index >= self.total:
                    break  # the announced end
                failed.append(index)
                index += 1
                if len(failed) >= gap:
                    break
                continue
            for lost in failed:  # a good frame after failures: those were corrupt
                yield Skipped(lost, f"{self.kind} frame could not be decoded (corrupt or missing data)")
            failed = []
            decoded += 1
            yield Frame(index, _rgb(self.cv2, bgr))
            index += 1
        if not decoded:
            what = "delivered no frame" if self.live else "has no frame that can be decoded"
            raise EdgeRestoreError(f"{self.kind} '{self.spec}' {what}")
        if self.total is not None and failed and failed[0] < self.total:
            yield Skipped(failed[0], f"video ends after frame {failed[0] - 1}, but announces {self.total} frames; "
                          "the rest could not be decoded", kind="truncated")

    def close(self) -> None:
        self.capture.release()


def open_source(inputs: list[str]) -> ImageSequence | CaptureSource:
    """The stream behind the restore command's INPUTS: one video file, camera index or
    GStreamer pipeline; or image files and folders, read as one image sequence."""
    captures = [s for s in inputs if is_camera(s) or is_pipeline(s) or is_video_file(s)]
    if captures:
        if len(inputs) > 1:
            raise EdgeRestoreError(f"'{captures[0]}' is a video, camera or pipeline: it must be the only input")
        return CaptureSource(captures[0])
    paths: list[Path] = []
    for spec in inputs:
        path = Path(spec)
        paths.extend(imageio.list_images(path) if path.is_dir() else [path])
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise EdgeRestoreError("two inputs have the same file name; restore them into separate directories")
    return ImageSequence(paths)


def _rgb(cv2, bgr: np.ndarray) -> np.ndarray:
    if bgr.ndim == 2:
        return bgr[..., None]
    return cv2.cvtColor(bgr, cv2.COLOR_BGRA2RGB if bgr.shape[2] == 4 else cv2.COLOR_BGR2RGB)


class VideoSink:
    """Encodes frames into ``path`` (the temporary file the caller renames on success).
    ``name`` is the user's output name, for messages; its suffix picks the codec. A video has
    one frame size, that of the first frame: later frames of another size are scaled to it
    (reported once per size)."""

    def __init__(self, path: Path, name: Path, fps: float, on_notice: Notice):
        suffix = name.suffix.lower()
        if suffix not in VIDEO_CODECS:
            raise EdgeRestoreError(f"cannot write video '{name}': use one of {', '.join(VIDEO_CODECS)}")
        self.cv2 = require("cv2", "writing videos")
        self.path, self.name, self.fps, self.fourcc = path, name, fps, VIDEO_CODECS[suffix]
        self.on_notice = on_notice
        self.writer = None  # a cv2.VideoWriter from the first frame on
        self.size: tuple[int, int] | None = None
        self._scaled: set[tuple[int, int]] = set()
        self.frames = 0

    def write(self, frame: Frame) -> None:
        cv2 = self.cv2
        pixels = frame.pixels if frame.bit_depth == 8 else np.rint(frame.pixels / 257.0).astype(np.uint8)
        bgr = cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR if pixels.shape[2] == 1 else cv2.COLOR_RGB2BGR)
        if self.writer is None:
            self.size = frame.size
            with imageio.opencv_silenced():
                self.writer = cv2.VideoWriter(str(self.path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*self.fourcc),
                                              self.fps, self.size)
            if not self.writer.isOpened():
                raise EdgeRestoreError(f"cannot write video '{self.name}': OpenCV's FFmpeg cannot encode "
                                       f"{self.fourcc} at {self.size[0]}x{self.size[1]}")
        if frame.size != self.size:
            if frame.size not in self._scaled:
                self._scaled.add(frame.size)
                self.on_notice("size", f"frame {frame.index}: restored at {frame.size[0]}x{frame.size[1]}, "
                               f"scaled to the video's {self.size[0]}x{self.size[1]} (a video file has one frame size)")
            bgr = cv2.resize(bgr, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(bgr)
        self.frames += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


class ImageFolderSink:
    """Each frame as an image file in ``folder``: an image sequence keeps its file names
    (format, bit depth, alpha and metadata as ``restore`` of images), other frames become
    ``frame_000000.png`` by source index. Each file is written atomically."""

    def __init__(self, folder: Path):
        if folder.exists() and not folder.is_dir():
            raise EdgeRestoreError(f"output '{folder}' exists and is not a directory")
        self.folder = folder
        self.frames = 0

    def write(self, frame: Frame) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = frame.name or f"frame_{frame.index:06d}.png"
        imageio.write_image(self.folder / name, frame.pixels, frame.alpha, frame.metadata)
        self.frames += 1

    def close(self) -> None:
        pass
