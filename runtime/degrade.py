"""Synthetic degradations written as spec strings, reproducible bit for bit.

A spec such as ``blur:1.5+gaussian:15+jpeg:40`` names steps applied left to
right to a float64 HxWxC image in [0, 1]. Results are only comparable with
published numbers if the noise is drawn exactly as the papers do, so
``gaussian:SIGMA`` as the first step reproduces the standard protocol
(``np.random.seed(seed)`` then ``img + np.random.normal(0, SIGMA/255, shape)``,
no clipping) bit-exactly, without touching numpy's global RNG. Every random
step is reseeded per image, as the published test scripts do.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage

from edgerestore.runtime.errors import EdgeRestoreError
from edgerestore.runtime.optional import require

StepFunction = Callable[[np.ndarray, tuple[float, ...], np.random.RandomState], np.ndarray]


def ramp_sigma_map(height: int, width: int, lo: float, hi: float) -> np.ndarray:
    """Noise level (0-255 scale) rising linearly from ``lo`` at the left column to ``hi`` at the right."""
    return np.broadcast_to(np.linspace(lo, hi, width), (height, width)).copy()


def peaks_sigma_map(height: int, width: int, lo: float, hi: float, rng: np.random.RandomState) -> np.ndarray:
    """Noise level (0-255 scale) of ``lo`` plus three Gaussian bumps at random places, peaking at ``hi``."""
    rows, cols = np.mgrid[0:height, 0:width]
    bumps = np.zeros((height, width))
    for _ in range(3):
        centre_row, centre_col = rng.uniform(0, height), rng.uniform(0, width)
        spread = rng.uniform(0.05, 0.2) * math.hypot(height, width)
        bumps += np.exp(-((rows - centre_row) ** 2 + (cols - centre_col) ** 2) / (2 * spread**2))
    return lo + (hi - lo) * bumps / bumps.max()


def _gaussian(img: np.ndarray, params: tuple[float, ...], rng: np.random.RandomState) -> np.ndarray:
    return img + rng.normal(0, params[0] / 255.0, img.shape)


def _gaussian_ramp(img: np.ndarray, params: tuple[float, ...], rng: np.random.RandomState) -> np.ndarray:
    sigma = ramp_sigma_map(img.shape[0], img.shape[1], *params)
    return img + rng.standard_normal(img.shape) * sigma[..., None] / 255.0


def _gaussian_peaks(img: np.ndarray, params: tuple[float, ...], rng: np.random.RandomState) -> np.ndarray:
    sigma = peaks_sigma_map(img.shape[0], img.shape[1], *params, rng)
    return img + rng.standard_normal(img.shape) * sigma[..., None] / 255.0


def _opencv(step: str):
    """OpenCV for the steps that filter or encode with it (``parse`` checks first, by step name)."""
    return require("cv2", f"the '{step}' degradation")


def _blur(img: np.ndarray, params: tuple[float, ...], rng: np.random.RandomState) -> np.ndarray:
    cv2 = _opencv("blur")
    size = 2 * math.ceil(3 * params[0]) + 1
    blurred = cv2.GaussianBlur(img, (size, size), params[0], borderType=cv2.BORDER_REFLECT)
    return blurred.reshape(img.shape)  # OpenCV drops a trailing single channel


def motion_kernel(length: int, angle: float) -> np.ndarray:
    """Normalised line of ``length`` pixels through the centre at ``angle`` degrees (anti-aliased).

    The kernel side is odd and the kernel point-symmetric, so the blur does not
    shift the image; an even length gets half-weight end pixels.
    """
    cv2 = _opencv("motion")
    size = length | 1
    centre = size // 2
    kernel = np.zeros((size, size))
    kernel[centre, :] = 1.0
    if length % 2 == 0:
        kernel[centre, [0, -1]] = 0.5
    rotation = cv2.getRotationMatrix2D((centre, centre), angle, 1.0)
    kernel = cv2.warpAffine(kernel, rotation, (size, size), flags=cv2.INTER_LINEAR)
    kernel = kernel + kernel[::-1, ::-1]  # OpenCV's fixed-point warp is slightly lopsided; keep it unshifted
    return kernel / kernel.sum()


def _motion(img: np.ndarray, params: tuple[float, ...], rng: np.random.RandomState) -> np.ndarray:
    kernel = motion_kernel(int(params[0]), rng.uniform(0, 180))
    cv2 = _opencv("motion")
    return cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT).reshape(img.shape)


def _jpeg(img: np.ndarray, params: tuple[float, ...], rng: np.random.RandomState) -> np.ndarray:
    cv2 = _opencv("jpeg")
    pixels = np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)
    colour = pixels.shape[2] == 3
    array = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR) if colour else pixels[..., 0]
    _, encoded = cv2.imencode(".jpg", array, [cv2.IMWRITE_JPEG_QUALITY, int(params[0])])
    decoded = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    decoded = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB) if colour else decoded
    return decoded.reshape(img.shape).astype(np.float64) / 255.0


def _crop_to_multiple(img: np.ndarray, scale: int) -> np.ndarray:
    """BasicSR's mod_crop: drop bottom rows and right columns so both sides divide by ``scale``."""
    height, width = img.shape[0] - img.shape[0] % scale, img.shape[1] - img.shape[1] % scale
    if height == 0 or width == 0:
        raise EdgeRestoreError(f"image of {img.shape[1]}x{img.shape[0]} pixels is smaller than down:{scale}")
    return img[:height, :width]


def _down(img: np.ndarray, params: tuple[float, ...], rng: np.random.RandomState) -> np.ndarray:
    """Antialiased bicubic downsampling, which is what MATLAB's imresize does for the SR benchmarks."""
    scale = int(params[0])
    img = _crop_to_multiple(img, scale)
    size = (img.shape[1] // scale, img.shape[0] // scale)
    channels = [
        np.asarray(PILImage.fromarray(img[..., c].astype(np.float32)).resize(size, PILImage.Resampling.BICUBIC))
        for c in range(img.shape[2])
    ]
    return np.stack(channels, axis=-1).astype(np.float64)


def _saltpepper(img: np.ndarray, params: tuple[float, ...], rng: np.random.RandomState) -> np.ndarray:
    height, width, channels = img.shape
    count = round(params[0] * height * width)
    positions = rng.permutation(height * width)[:count]
    out = img.reshape(-1, channels).copy()
    out[positions[: count // 2]] = 0.0
    out[positions[count // 2 :]] = 1.0
    return out.reshape(img.shape)


# Rain: streaks fall within this many degrees of vertical and are this many pixels long.
RAIN_TILT = 30.0
RAIN_LENGTH = (15, 35)


def rain_streaks(height: int, width: int, density: float, rng: np.random.RandomState) -> np.ndarray:
    """Streak layer S (HxW, in [0, 1]): seeds of random brightness at ``density`` of the pixels,
    drawn into lines of one random length along one random direction per image (a little
    thickened). Seeded on a margin around the image so streaks enter from outside its borders."""
    cv2 = _opencv("rain")
    length = rng.randint(RAIN_LENGTH[0], RAIN_LENGTH[1] + 1)
    angle = 90.0 + rng.uniform(-RAIN_TILT, RAIN_TILT)  # motion_kernel's 90 degrees: vertical
    margin = length
    shape = (height + 2 * margin, width + 2 * margin)
    seeds = (rng.random_sample(shape) < density) * rng.uniform(0.4, 1.0, shape)
    # The kernel sums to 1 along ~length pixels: times length, a streak keeps its seed's brightness.
    lines = cv2.filter2D(seeds, -1, motion_kernel(length, angle) * length, borderType=cv2.BORDER_CONSTANT)
    lines = cv2.GaussianBlur(lines, (3, 3), 0.6)
    return np.minimum(lines[margin:margin + height, margin:margin + width] * rng.uniform(0.5, 0.9), 1.0)


def _rain(img: np.ndarray, params: tuple[float, ...], rng: np.random.RandomState) -> np.ndarray:
    """The rain model of the all-in-one papers: ``x = T * (img + S) + (1 - T) * A`` with the
    streak layer S, a transmission T (the veil of distant rain) and an atmospheric light A."""
    streaks = rain_streaks(img.shape[0], img.shape[1], params[0], rng)
    transmission, light = rng.uniform(0.8, 0.95), rng.uniform(0.8, 1.0)
    return transmission * (img + streaks[..., None]) + (1.0 - transmission) * light


@dataclass(frozen=True)
class _Kind:
    """How to parse and run one step type. Values must lie in [low, high]; LO-HI syntax means two values."""

    function: StepFunction
    syntax: str
    description: str
    integer: bool = False
    low: float = 0.0
    high: float = math.inf
    opencv: bool = False

    @property
    def arity(self) -> int:
        return len(self.syntax.split("-"))


_KINDS: dict[str, _Kind] = {
    "gaussian": _Kind(_gaussian, "SIGMA", "white Gaussian noise, SIGMA on the 0-255 scale (published protocol)"),
    "gaussian-ramp": _Kind(_gaussian_ramp, "LO-HI", "Gaussian noise, SIGMA rising from LO (left) to HI (right)"),
    "gaussian-peaks": _Kind(_gaussian_peaks, "LO-HI", "Gaussian noise, SIGMA from LO up to HI in a few random bumps"),
    "blur": _Kind(_blur, "SIGMA", "isotropic Gaussian blur, standard deviation SIGMA pixels", opencv=True),
    "motion": _Kind(_motion, "LENGTH", "linear motion blur LENGTH pixels long at a random angle", integer=True, low=1,
                    opencv=True),
    "jpeg": _Kind(_jpeg, "QUALITY", "JPEG at QUALITY 1-100 (clips, rounds to 8 bits)", integer=True, low=1, high=100,
                  opencv=True),
    "down": _Kind(_down, "SCALE", "bicubic downscale by SCALE like MATLAB imresize; crops target", integer=True, low=1),
    "saltpepper": _Kind(_saltpepper, "FRACTION", "FRACTION 0-1 of the pixels set to black or white, half each", high=1),
    "rain": _Kind(_rain, "DENSITY", "rain streaks starting at DENSITY 0-1 of the pixels (0.001 light, 0.005 heavy) "
                  "over a veil: T*(img+S)+(1-T)*A", high=1, opencv=True),
}


@dataclass(frozen=True)
class Step:
    """One parsed step: a kind name and its numeric parameters."""

    name: str
    params: tuple[float, ...]

    def __str__(self) -> str:
        return f"{self.name}:" + "-".join(_format_number(v) for v in self.params)


@dataclass(frozen=True)
class Degradation:
    """A parsed spec: steps applied in order, with random steps seeded from (seed, step index)."""

    steps: tuple[Step, ...]
    seed: int = 0

    def apply(self, img: np.ndarray) -> np.ndarray:
        """Degrade a float HxWxC image in [0, 1]; the result is float64 and not clipped."""
        out = np.asarray(img, dtype=np.float64)
        if out.ndim != 3:
            raise ValueError(f"degradations need an HxWxC image, got shape {out.shape}")
        for index, step in enumerate(self.steps):
            rng = np.random.RandomState(_step_seed(self.seed, index))
            out = _KINDS[step.name].function(out, step.params, rng)
        return out

    def target(self, img: np.ndarray) -> np.ndarray:
        """The ground truth to score ``apply(img)`` against: ``img`` cropped to a multiple of the total scale."""
        return _crop_to_multiple(np.asarray(img, dtype=np.float64), self.scale)

    @property
    def scale(self) -> int:
        """Total downsampling factor of the chain."""
        return math.prod(int(step.params[0]) for step in self.steps if step.name == "down")

    def __str__(self) -> str:
        return "+".join(str(step) for step in self.steps)


def parse(spec: str, seed: int = 0) -> Degradation:
    """Parse ``name:params+name:params...``; raise EdgeRestoreError on anything malformed."""
    if not 0 <= seed < 2**32:
        raise EdgeRestoreError(f"seed must be in 0..{2**32 - 1}, got {seed}")
    if not spec.strip():
        raise _spec_error(spec, "it is empty")
    steps = tuple(_parse_step(spec, part.strip()) for part in spec.split("+"))
    for step in steps:
        if _KINDS[step.name].opencv:
            _opencv(step.name)
    return Degradation(steps, seed)


def spec_help() -> str:
    """The step list for ``--help``: one line per step, syntax then description."""
    entries = [(f"{name}:{kind.syntax}", kind.description) for name, kind in _KINDS.items()]
    width = max(len(syntax) for syntax, _ in entries)
    lines = [f"  {syntax.ljust(width)}  {description}" for syntax, description in entries]
    return "\n".join(["Chain steps with '+', applied left to right, e.g. blur:1.5+gaussian:15+jpeg:40", *lines])


def _parse_step(spec: str, part: str) -> Step:
    name, colon, text = part.partition(":")
    kind = _KINDS.get(name)
    if kind is None:
        raise _spec_error(spec, f"unknown step '{name}'" if part else "it has an empty step")
    if not colon or not text:
        raise _spec_error(spec, f"'{name}' needs a parameter, as {name}:{kind.syntax}")
    fields = text.split("-")
    if len(fields) != kind.arity:
        raise _spec_error(spec, f"'{part}' should be {name}:{kind.syntax} with non-negative numbers")
    params = tuple(_parse_number(spec, name, kind, field) for field in fields)
    if params != tuple(sorted(params)):
        raise _spec_error(spec, f"'{part}' has LO above HI")
    return Step(name, params)


def _parse_number(spec: str, name: str, kind: _Kind, field: str) -> float:
    try:
        value = float(field)
    except ValueError:
        raise _spec_error(spec, f"'{field}' in {name} is not a number") from None
    if not math.isfinite(value):
        raise _spec_error(spec, f"'{field}' in {name} is not a finite number")
    if kind.integer and not value.is_integer():
        raise _spec_error(spec, f"{name} needs a whole number, got '{field}'")
    if not kind.low <= value <= kind.high:
        allowed = f">= {_format_number(kind.low)}" if kind.high == math.inf else f"in {kind.low:g}..{kind.high:g}"
        raise _spec_error(spec, f"{name} {kind.syntax} must be {allowed}, got '{field}'")
    return int(value) if kind.integer else value


def _spec_error(spec: str, problem: str) -> EdgeRestoreError:
    steps = ", ".join(f"{name}:{kind.syntax}" for name, kind in _KINDS.items())
    return EdgeRestoreError(f"bad degradation spec '{spec}': {problem} (valid steps: {steps})")


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _step_seed(seed: int, index: int) -> int:
    """Step 0 uses ``seed`` itself so a leading gaussian step is the published protocol;
    later steps get independent streams derived from (seed, index)."""
    if index == 0:
        return seed
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
