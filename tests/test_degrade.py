"""Degradation specs: exact noise protocol, determinism, each step's defining property, bad specs."""

from __future__ import annotations

import numpy as np
import pytest

from edgerestore.runtime.degrade import motion_kernel, parse, peaks_sigma_map, ramp_sigma_map, spec_help
from edgerestore.runtime.errors import EdgeRestoreError

STEP_NAMES = ["gaussian", "gaussian-ramp", "gaussian-peaks", "blur", "motion", "jpeg", "down", "saltpepper"]


def _image(height: int = 48, width: int = 64, channels: int = 3) -> np.ndarray:
    """A smooth float64 image in [0.1, 0.9], so blur and JPEG behave like on photos."""
    rows, cols = np.mgrid[0:height, 0:width]
    planes = [0.5 + 0.4 * np.sin(rows / (5 + c) + cols / (7 + 2 * c)) for c in range(channels)]
    return np.stack(planes, axis=-1)


def test_gaussian_is_the_published_protocol_bit_exactly() -> None:
    img = _image()
    state = np.random.get_state()
    try:
        np.random.seed(0)
        expected = img + np.random.normal(0, 15 / 255.0, img.shape)
    finally:
        np.random.set_state(state)
    np.testing.assert_array_equal(parse("gaussian:15").apply(img), expected)
    # At the head of a chain the gaussian step still draws from exactly `seed`.
    np.testing.assert_array_equal(parse("gaussian:15+jpeg:90").apply(img), parse("jpeg:90").apply(expected))


def test_gaussian_does_not_touch_global_rng() -> None:
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    parse("gaussian:25+gaussian-ramp:0-10+motion:5+saltpepper:0.1", seed=4).apply(_image())
    np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_gaussian_is_not_clipped_or_quantised() -> None:
    out = parse("gaussian:50").apply(np.zeros((32, 32, 1)))
    assert out.min() < 0 and not np.allclose(out * 255, np.round(out * 255))


@pytest.mark.parametrize(
    "spec",
    [
        "gaussian:15",
        "gaussian-ramp:5-50",
        "gaussian-peaks:5-50",
        "motion:9",
        "saltpepper:0.05",
        "blur:1.5+gaussian:15+jpeg:40",
    ],
)
def test_seeded_determinism(spec: str) -> None:
    img = _image()
    first, again = parse(spec, seed=7).apply(img), parse(spec, seed=7).apply(img)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, parse(spec, seed=8).apply(img))


def test_chain_steps_get_independent_streams() -> None:
    zeros = np.zeros((32, 32, 1))
    first = parse("gaussian:10").apply(zeros)
    both = parse("gaussian:10+gaussian:10").apply(zeros)
    second = both - first
    assert abs(np.corrcoef(first.ravel(), second.ravel())[0, 1]) < 0.1


def test_ramp_noise_grows_left_to_right() -> None:
    noise = parse("gaussian-ramp:0-60").apply(np.zeros((200, 100, 3)))
    left, middle, right = noise[:, :10].std(), noise[:, 45:55].std(), noise[:, -10:].std()
    assert left < 4 / 255 and left < middle < right
    assert right == pytest.approx(57 / 255, rel=0.1)
    sigma = ramp_sigma_map(2, 5, 10, 50)
    np.testing.assert_allclose(sigma[1], [10, 20, 30, 40, 50])


def test_peaks_map_and_noise() -> None:
    sigma = peaks_sigma_map(60, 80, 5, 50, np.random.RandomState(3))
    assert sigma.shape == (60, 80) and sigma.min() >= 5 and sigma.max() == pytest.approx(50)
    assert sigma.std() > 1  # really varies
    noise = parse("gaussian-peaks:0-40").apply(np.zeros((60, 80, 1)))
    assert 0 < noise.std() < 40 / 255


def test_blur_preserves_mean_and_smooths() -> None:
    img = _image() + np.random.RandomState(0).normal(0, 0.05, (48, 64, 3))
    out = parse("blur:2").apply(img)
    assert out.shape == img.shape
    assert out.mean() == pytest.approx(img.mean(), abs=1e-3)
    assert np.abs(np.diff(out, axis=1)).mean() < 0.5 * np.abs(np.diff(img, axis=1)).mean()
    gray = _image(channels=1)
    assert parse("blur:1").apply(gray).shape == gray.shape


@pytest.mark.parametrize("length", [1, 6, 9])
def test_motion_preserves_mean_and_shape(length: int) -> None:
    img = _image(channels=1)
    out = parse(f"motion:{length}").apply(img)
    assert out.shape == img.shape
    assert out.mean() == pytest.approx(img.mean(), abs=2e-3)
    if length == 1:
        np.testing.assert_allclose(out, img)


@pytest.mark.parametrize("length", [2, 6, 9])
@pytest.mark.parametrize("angle", [0.0, 30.0, 45.0, 100.0])
def test_motion_kernel_is_a_centred_line(length: int, angle: float) -> None:
    kernel = motion_kernel(length, angle)
    centre = kernel.shape[0] // 2
    rows, cols = np.mgrid[0 : kernel.shape[0], 0 : kernel.shape[1]]
    assert kernel.shape[0] % 2 == 1 and kernel.sum() == pytest.approx(1.0)
    assert (kernel * rows).sum() == pytest.approx(centre) and (kernel * cols).sum() == pytest.approx(centre)
    extent = np.hypot(rows - centre, cols - centre)[kernel > 1e-6].max()
    assert (length - 1) / 2 - 0.5 <= extent <= (length - 1) / 2 + 1.5


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_quantises_and_clips(channels: int) -> None:
    img = _image(channels=channels) + np.random.RandomState(0).normal(0, 0.2, (48, 64, channels))
    out = parse("jpeg:40").apply(img)
    assert out.shape == img.shape and out.dtype == np.float64
    np.testing.assert_array_equal(out * 255, np.round(out * 255))
    assert out.min() >= 0 and out.max() <= 1
    assert 0 < np.abs(out - np.clip(img, 0, 1)).mean() < 0.2


def test_jpeg_keeps_colours_in_rgb_order() -> None:
    red = np.zeros((16, 16, 3))
    red[..., 0] = 1.0
    out = parse("jpeg:95").apply(red)
    assert out[..., 0].mean() > 0.9 and out[..., 2].mean() < 0.1


def test_down_shape_and_target_crop() -> None:
    img = _image(50, 67)
    degradation = parse("down:4")
    assert degradation.apply(img).shape == (12, 16, 3)
    target = degradation.target(img)
    np.testing.assert_array_equal(target, img[:48, :64])
    flat = np.full((40, 40, 1), 0.3)
    np.testing.assert_allclose(degradation.apply(flat), 0.3, atol=1e-6)
    np.testing.assert_array_equal(parse("gaussian:5").target(img), img)


def test_down_chain_crops_target_to_total_scale() -> None:
    img = _image(50, 67)
    degradation = parse("down:2+blur:1+down:2")
    assert degradation.scale == 4
    assert degradation.apply(img).shape[:2] == (12, 16)
    assert degradation.target(img).shape[:2] == (48, 64)


def test_down_rejects_tiny_image() -> None:
    with pytest.raises(EdgeRestoreError, match="smaller than down:4"):
        parse("down:4").apply(np.zeros((3, 10, 1)))


def test_saltpepper_fraction() -> None:
    img = np.full((100, 120, 3), 0.5)
    out = parse("saltpepper:0.1").apply(img)
    hit = (out != 0.5).all(axis=2)
    assert ((out == 0.5).all(axis=2) | hit).all()  # channels change together
    assert hit.mean() == pytest.approx(0.1, abs=0.002)
    assert (out[hit] == 0).mean() == pytest.approx(0.5, abs=0.01)


def test_chain_order_matters() -> None:
    img = _image()
    blur_then_jpeg = parse("blur:2+jpeg:30").apply(img)
    jpeg_then_blur = parse("jpeg:30+blur:2").apply(img)
    np.testing.assert_array_equal(blur_then_jpeg * 255, np.round(blur_then_jpeg * 255))
    assert not np.allclose(jpeg_then_blur * 255, np.round(jpeg_then_blur * 255))
    step_by_step = parse("jpeg:30").apply(parse("blur:2").apply(img))
    np.testing.assert_array_equal(blur_then_jpeg, step_by_step)


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("gaussian:15.0", "gaussian:15"),
        (" blur:1.50 + gaussian:15 + jpeg:40 ", "blur:1.5+gaussian:15+jpeg:40"),
        ("gaussian-ramp:5-50", "gaussian-ramp:5-50"),
        ("down:4+saltpepper:0.05+motion:7", "down:4+saltpepper:0.05+motion:7"),
    ],
)
def test_canonical_string(spec: str, canonical: str) -> None:
    assert str(parse(spec)) == canonical
    assert str(parse(canonical)) == canonical


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("sharpen:2", "unknown step 'sharpen'"),
        ("gaussian", "needs a parameter"),
        ("gaussian:", "needs a parameter"),
        ("gaussian:-5", "should be gaussian:SIGMA"),
        ("gaussian:abc", "not a number"),
        ("gaussian:nan", "not a finite number"),
        ("gaussian:5-10", "should be gaussian:SIGMA"),
        ("gaussian-ramp:5", "should be gaussian-ramp:LO-HI"),
        ("gaussian-ramp:50-5", "LO above HI"),
        ("gaussian-peaks:-1-5", "should be gaussian-peaks:LO-HI"),
        ("jpeg:0", "in 1..100"),
        ("jpeg:101", "in 1..100"),
        ("jpeg:40.5", "whole number"),
        ("motion:0", ">= 1"),
        ("down:2.5", "whole number"),
        ("saltpepper:1.5", "in 0..1"),
        ("blur:1+", "empty step"),
    ],
)
def test_bad_specs(spec: str, problem: str) -> None:
    with pytest.raises(EdgeRestoreError) as info:
        parse(spec)
    message = str(info.value)
    assert problem in message and "\n" not in message
    assert all(name in message for name in STEP_NAMES)


def test_bad_seed() -> None:
    with pytest.raises(EdgeRestoreError, match="seed"):
        parse("gaussian:5", seed=-1)


def test_spec_help_lists_every_step() -> None:
    lines = spec_help().splitlines()
    for name in STEP_NAMES:
        assert any(line.strip().startswith(f"{name}:") for line in lines)
