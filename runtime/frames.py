"""Frames as callers hand them over, and the planes a model restores.

A frame is a numpy array, HxW or HxWxC with C = 1, 3 or 4 (RGBA: the alpha channel is passed
through untouched), uint8, uint16 or float32 (values in [0, 1]); colour frames are RGB, or
BGR (OpenCV's order) when the caller says so. A model restores *planes* of its own channel
count: a gray model restores each colour channel of an RGB frame as its own image, a colour
model restores a gray frame as three equal channels (and gives back their mean).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import EdgeRestoreError

DTYPES = (np.uint8, np.uint16, np.float32)
ORDERS = ("RGB", "BGR")


@dataclass(frozen=True)
class Layout:
    """How a frame was given, so the restored one comes back the same way."""

    shape: tuple[int, ...]
    dtype: np.dtype
    bgr: bool
    alpha: np.ndarray | None

    @property
    def channels(self) -> int:
        """Colour channels (without alpha)."""
        return 1 if len(self.shape) == 2 else self.shape[2] - (self.alpha is not None)


def split(frame: np.ndarray, model_channels: int, order: str = "RGB") -> tuple[Layout, list[np.ndarray]]:
    """The frame's layout and the planes (HxWx``model_channels``, the frame's dtype, RGB) to restore."""
    if order not in ORDERS:
        raise EdgeRestoreError(f"unknown channel order '{order}'; use RGB or BGR")
    if not isinstance(frame, np.ndarray):
        raise EdgeRestoreError(f"a frame must be a numpy array, got {type(frame).__name__}")
    if frame.dtype not in DTYPES:
        raise EdgeRestoreError(f"a frame must be uint8, uint16 or float32, got {frame.dtype}")
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (1, 3, 4)):
        raise EdgeRestoreError(f"a frame must be HxW or HxWxC with C = 1, 3 or 4, got shape {frame.shape}")
    if min(frame.shape[:2]) < 1:
        raise EdgeRestoreError(f"a frame must have pixels, got shape {frame.shape}")
    pixels = frame[:, :, None] if frame.ndim == 2 else frame
    alpha = None
    if pixels.shape[2] == 4:
        pixels, alpha = pixels[:, :, :3], frame[:, :, 3].copy()
    bgr = order == "BGR" and pixels.shape[2] == 3
    if bgr:
        pixels = pixels[:, :, ::-1]
    layout = Layout(frame.shape, frame.dtype, bgr, alpha)
    channels = pixels.shape[2]
    if channels == model_channels:
        return layout, [np.ascontiguousarray(pixels)]
    if model_channels == 1:  # each colour channel as its own gray image
        return layout, [np.ascontiguousarray(pixels[:, :, k:k + 1]) for k in range(channels)]
    if channels == 1:
        return layout, [np.ascontiguousarray(np.repeat(pixels, model_channels, axis=2))]
    raise EdgeRestoreError(f"the model takes {model_channels}-channel frames, got {channels} channels")


def join(layout: Layout, planes: list[np.ndarray]) -> np.ndarray:
    """Restored planes (the frame's dtype) back into the caller's layout."""
    if len(planes) > 1:
        pixels = np.concatenate(planes, axis=2)
    elif layout.channels == 1 and planes[0].shape[2] > 1:  # gray through a colour model
        pixels = _mean_channels(planes[0])
    else:
        pixels = planes[0]
    if layout.bgr:
        pixels = pixels[:, :, ::-1]
    if layout.alpha is not None:
        pixels = np.concatenate([pixels, layout.alpha[:, :, None]], axis=2)
    if len(layout.shape) == 2:
        pixels = pixels[:, :, 0]
    return np.ascontiguousarray(pixels)


def _mean_channels(pixels: np.ndarray) -> np.ndarray:
    mean = pixels.astype(np.float32).mean(axis=2, keepdims=True)
    if pixels.dtype == np.float32:
        return mean
    top = np.iinfo(pixels.dtype).max
    return np.clip(np.rint(mean), 0, top).astype(pixels.dtype)


def to_unit(plane: np.ndarray) -> np.ndarray:
    """A plane as float32 in [0, 1]."""
    if plane.dtype == np.float32:
        return plane
    return plane.astype(np.float32) / np.float32(np.iinfo(plane.dtype).max)


def from_unit(values: np.ndarray, dtype: np.dtype, clip: bool = True) -> np.ndarray:
    """float32 values in [0, 1] -> ``dtype``: integers clipped and rounded half to even (as
    the tile library's uint8 merge rounds); float32 clipped to [0, 1] unless ``clip`` is off."""
    if dtype == np.float32:
        return np.clip(values, 0.0, 1.0) if clip else values
    top = np.iinfo(dtype).max
    return np.rint(np.clip(values, 0.0, 1.0) * np.float32(top)).astype(dtype)
