"""Test videos made with PyAV: lossless H.264 (libx264rgb, qp 0) with a keyframe every
``gop`` frames and a sine in an audio track, and the readers the video tests compare with."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

av = __import__("pytest").importorskip("av", reason="PyAV (the video extra) is not installed")

SIZE = (48, 64)  # height, width
SAMPLE_RATE = 8000


def source_frames(count: int) -> list[np.ndarray]:
    """Textured frames (noise, shifted one pixel per frame): what a denoiser changes everywhere."""
    base = np.random.default_rng(7).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    return [np.roll(base, k, axis=1) for k in range(count)]


def write_video(path: Path, count: int = 36, gop: int = 8, audio: str | None = "flac") -> list[np.ndarray]:
    """A lossless video of ``source_frames(count)`` at 25 fps (+ ``audio``-coded mono audio)."""
    frames = source_frames(count)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264rgb", rate=25)
        video.width, video.height, video.pix_fmt = SIZE[1], SIZE[0], "bgr24"
        video.codec_context.gop_size = gop
        video.options = {"qp": "0"}
        sound = out.add_stream(audio, rate=SAMPLE_RATE, layout="mono") if audio else None
        for k, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts, picture.time_base = k, Fraction(1, 25)
            out.mux(video.encode(picture))
        out.mux(video.encode(None))
        if sound is not None:
            samples = count * SAMPLE_RATE // 25
            for start in range(0, samples, 1024):
                wave = np.sin(np.arange(start, min(start + 1024, samples)) * 0.05) * 8000
                chunk = av.AudioFrame.from_ndarray(wave.astype(np.int16)[None], format="s16", layout="mono")
                chunk.sample_rate, chunk.pts = SAMPLE_RATE, start
                out.mux(sound.encode(chunk))
            out.mux(sound.encode(None))
    return frames


def decoded(path: Path) -> tuple[list[float], list[np.ndarray]]:
    """Each frame's timestamp (seconds, exact fractions as floats) and RGB pixels."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        return [float(f.pts * stream.time_base) for f in frames], [f.to_ndarray(format="rgb24") for f in frames]


def audio_packets(path: Path) -> list[tuple[float, bytes]]:
    """The audio packets: (timestamp in seconds, payload)."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return []
        return [(float(p.pts * p.time_base), bytes(p)) for p in container.demux(container.streams.audio[0]) if p.size]


def codec_of(path: Path) -> str:
    with av.open(str(path)) as container:
        return container.streams.video[0].codec_context.name
