"""Host-side bilinear resize of plan variables (the plan's ``resize`` step).

The semantics are TensorFlow 1's ``tf.image.resize_images(method=BILINEAR)`` with its
defaults (``align_corners=False``, ``half_pixel_centers=False``), which is ONNX Resize
``mode="linear"`` with ``coordinate_transformation_mode="asymmetric"``: output pixel ``i``
reads input coordinate ``i * in / out``, i.e. pixel ``floor`` of it and the next one (clamped
to the last pixel), linearly weighted. Downscaling by 2 therefore picks every other pixel
(no anti-aliasing), as the TF1 models trained with it expect. PyTorch's
``F.interpolate(mode="bilinear")`` uses half-pixel centres instead and differs.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import EdgeRestoreError


def scaled_size(length: int, scale: float) -> int:
    """``round(length * scale)`` with halves rounded up (TF1 models computed their scale
    sizes with Python 2's ``int(round(...))``), at least 1."""
    return max(1, math.floor(length * scale + 0.5))


def axis_weights(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: the two input indices it reads and the weight of the second."""
    source = np.arange(size_out, dtype=np.float64) * (size_in / size_out)
    low = np.minimum(np.floor(source).astype(np.int64), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    return low, high, (source - low).astype(np.float32)


def resize_bilinear(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize the last two axes of ``x`` (..., H, W) to ``height`` x ``width``."""
    if x.ndim < 2 or min(x.shape[-2:]) < 1:
        raise EdgeRestoreError(f"cannot resize an array of shape {x.shape}")
    if height < 1 or width < 1:
        raise EdgeRestoreError(f"cannot resize to {width}x{height}")
    if (height, width) == x.shape[-2:]:
        return x.copy()
    x = np.asarray(x, np.float32)
    top, bottom, fy = axis_weights(x.shape[-2], height)
    left, right, fx = axis_weights(x.shape[-1], width)
    rows = x[..., top, :] + (x[..., bottom, :] - x[..., top, :]) * fy[:, None]
    return rows[..., left] + (rows[..., right] - rows[..., left]) * fx
