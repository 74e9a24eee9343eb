"""Raw video as the element sees it: the formats it takes, and numpy views of a mapped
buffer's pixels that follow GStreamer's row strides (RGB rows are padded to 4 bytes by
default; an upstream element may lay rows out wider and say so in a ``GstVideoMeta``).

No GStreamer import here: the element hands over the stride and offset it read from the
buffer's meta or the caps' ``GstVideo.VideoInfo``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Format:
    name: str  # GStreamer's format name
    pixel_bytes: int
    order: str  # the channel order Session.run is told (RGB or BGR)
    channels: int  # colour channels the model sees (a padding byte is not one)


FORMATS = {f.name: f for f in (Format("RGB", 3, "RGB", 3), Format("BGR", 3, "BGR", 3),
                               Format("RGBx", 4, "RGB", 3), Format("BGRx", 4, "BGR", 3),
                               Format("GRAY8", 1, "RGB", 1))}
MAX = 2147483647


def formats_for(channels: int | None) -> list[str]:
    """The formats a bundle of ``channels`` takes (None: not known yet, all of them)."""
    return [name for name, f in FORMATS.items() if channels is None or f.channels == channels]


def caps_string(formats: list[str]) -> str:
    """Raw video in system memory in ``formats``, any size and rate."""
    listed = ", ".join(formats)
    return (f"video/x-raw, format=(string){{ {listed} }}, width=(int)[ 1, {MAX} ], height=(int)[ 1, {MAX} ], "
            f"framerate=(fraction)[ 0/1, {MAX}/1 ]")


def pixels(data: memoryview, fmt: Format, width: int, height: int, stride: int, offset: int) -> np.ndarray:
    """The frame's colour pixels in ``data`` as a strided view (no copy): HxW for GRAY8,
    HxWx3 otherwise (an x byte is left out). Writable when ``data`` is."""
    rows = np.ndarray((height, width, fmt.pixel_bytes), np.uint8, buffer=data, offset=offset,
                      strides=(stride, fmt.pixel_bytes, 1))
    return rows[:, :, 0] if fmt.channels == 1 else rows[:, :, :3]


def padding(data: memoryview, fmt: Format, width: int, height: int, stride: int, offset: int) -> np.ndarray | None:
    """The x byte of RGBx/BGRx pixels (a view), None for formats without one."""
    if fmt.pixel_bytes != 4:
        return None
    rows = np.ndarray((height, width, 4), np.uint8, buffer=data, offset=offset, strides=(stride, 4, 1))
    return rows[:, :, 3]
