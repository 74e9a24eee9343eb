"""PSNR/SSIM must match BasicSR to many decimals; checked against plain re-implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.signal import convolve2d

from edgerestore.runtime.metrics import psnr, rgb_to_y, ssim

RNG = np.random.default_rng(0)


def _pair(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A smooth image and a noisy copy, so SSIM is well away from 0 and 1."""
    clean = RNG.integers(0, 256, size=shape).astype(np.float64)
    for axis in (0, 1):
        clean = (clean + np.roll(clean, 1, axis) + np.roll(clean, -1, axis)) / 3
    noisy = clean + RNG.normal(0, 12, size=shape)
    return np.clip(clean, 0, 255).astype(np.uint8), np.clip(noisy, 0, 255).round().astype(np.uint8)


def _reference_ssim_2d(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al. SSIM, 11x11 Gaussian window (sigma 1.5), valid region only, as MATLAB/BasicSR."""
    taps = np.exp(-(np.arange(-5, 6) ** 2) / (2 * 1.5**2))
    window = np.outer(taps, taps) / np.outer(taps, taps).sum()

    def filt(image: np.ndarray) -> np.ndarray:
        return convolve2d(image, window, mode="valid")

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_x, mu_y = filt(x), filt(y)
    var_x = filt(x * x) - mu_x**2
    var_y = filt(y * y) - mu_y**2
    cov = filt(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


def _reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    a3, b3 = a.reshape(*a.shape[:2], -1).astype(np.float64), b.reshape(*b.shape[:2], -1).astype(np.float64)
    return float(np.mean([_reference_ssim_2d(a3[..., c], b3[..., c]) for c in range(a3.shape[2])]))


def test_psnr_of_known_mse() -> None:
    a = np.full((8, 8, 3), 100, np.uint8)
    b = a.copy()
    b[..., 0] += 6  # squared error 36 on one channel of three: MSE 12
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 12), abs=1e-12)


def test_psnr_identical_is_inf() -> None:
    a, _ = _pair((16, 16, 3))
    assert psnr(a, a) == math.inf


@pytest.mark.parametrize("shape", [(40, 50), (40, 50, 1), (40, 50, 3)])
def test_psnr_matches_direct_formula(shape: tuple[int, ...]) -> None:
    a, b = _pair(shape)
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    assert psnr(a, b) == pytest.approx(10 * np.log10(255**2 / mse), abs=1e-10)


@pytest.mark.parametrize("shape", [(40, 50), (40, 50, 1), (40, 50, 3)])
def test_ssim_matches_reference(shape: tuple[int, ...]) -> None:
    a, b = _pair(shape)
    value = ssim(a, b)
    assert 0.2 < value < 0.99
    assert value == pytest.approx(_reference_ssim(a, b), abs=1e-10)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_border_crop() -> None:
    a, b = _pair((30, 32, 3))
    assert psnr(a, b, border=4) == pytest.approx(psnr(a[4:-4, 4:-4], b[4:-4, 4:-4]), abs=1e-12)
    assert ssim(a, b, border=4) == pytest.approx(_reference_ssim(a[4:-4, 4:-4], b[4:-4, 4:-4]), abs=1e-10)
    c = a.copy()
    c[:2] = 255 - c[:2]  # differences only inside the cropped border
    assert psnr(a, c, border=2) == math.inf


def test_y_channel_formula() -> None:
    pixels = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [10, 200, 30]]], np.uint8)
    expected = [16.0, 235.0, 16 + 65.481, 16 + (65.481 * 10 + 128.553 * 200 + 24.966 * 30) / 255]
    np.testing.assert_allclose(rgb_to_y(pixels)[0], expected, rtol=0, atol=1e-12)


def test_y_channel_metrics_use_unrounded_luma() -> None:
    a, b = _pair((40, 50, 3))
    ya, yb = rgb_to_y(a), rgb_to_y(b)
    assert not np.allclose(ya, np.round(ya))
    assert psnr(a, b, y_channel=True) == pytest.approx(10 * np.log10(255**2 / np.mean((ya - yb) ** 2)), abs=1e-10)
    assert ssim(a, b, y_channel=True) == pytest.approx(_reference_ssim_2d(ya, yb), abs=1e-10)
    assert psnr(a, b, border=3, y_channel=True) == pytest.approx(
        10 * np.log10(255**2 / np.mean((ya[3:-3, 3:-3] - yb[3:-3, 3:-3]) ** 2)), abs=1e-10
    )


def test_y_channel_is_no_op_for_gray() -> None:
    a, b = _pair((40, 50))
    assert psnr(a, b, y_channel=True) == psnr(a, b)
    assert ssim(a[..., None], b[..., None], y_channel=True) == ssim(a, b)


def test_bad_inputs() -> None:
    a, b = _pair((20, 20, 3))
    with pytest.raises(ValueError, match="shape"):
        psnr(a, b[:10])
    with pytest.raises(ValueError, match="uint8"):
        ssim(a.astype(np.float32), b.astype(np.float32))
