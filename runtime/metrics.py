"""PSNR and SSIM computed exactly as BasicSR does, so scores compare with published tables.

Published restoration results are almost all produced with BasicSR's
``calculate_psnr`` / ``calculate_ssim`` (itself matching the MATLAB code):
uint8 images, optional border crop, optional BT.601 luma, float64 arithmetic,
SSIM with an 11x11 Gaussian window (sigma 1.5) over the valid region. Any
deviation (e.g. rounding the Y channel, same-padding the window) moves the
numbers by hundredths of a dB, which is the size of many reported gains.
"""

from __future__ import annotations

import numpy as np

from .optional import require

# BT.601 luma for RGB in [0, 1], giving Y in [16, 235] (BasicSR's rgb2ycbcr, y_only=True).
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966])
_Y_OFFSET = 16.0


def psnr(a: np.ndarray, b: np.ndarray, border: int = 0, y_channel: bool = False) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images (HxW or HxWxC); ``inf`` if identical."""
    x, y = _prepare(a, b, border, y_channel)
    mse = np.mean((x - y) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(255.0**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray, border: int = 0, y_channel: bool = False) -> float:
    """Mean structural similarity of two uint8 images, averaged over channels."""
    structural_similarity = require("skimage.metrics", "SSIM").structural_similarity
    x, y = _prepare(a, b, border, y_channel)
    return float(
        structural_similarity(
            x,
            y,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255.0,
            channel_axis=-1,
        )
    )


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of an RGB image on the 0-255 scale, unrounded, as float64 HxW."""
    return rgb.astype(np.float64) / 255.0 @ _Y_WEIGHTS + _Y_OFFSET


def _prepare(a: np.ndarray, b: np.ndarray, border: int, y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Check, crop and convert both images to float64 HxWxC (C = 1 for gray or luma)."""
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"metrics need uint8 images, got {a.dtype} and {b.dtype}")
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    images = []
    for image in (a, b):
        if image.ndim == 2:
            image = image[..., None]
        if border:
            image = image[border:-border, border:-border]
        if y_channel and image.shape[2] == 3:
            image = rgb_to_y(image)[..., None]
        images.append(image.astype(np.float64))
    return images[0], images[1]
