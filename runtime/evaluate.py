"""Evaluation with the published protocol: degrade (or read degraded inputs), restore,
clip and round to uint8, then PSNR/SSIM as BasicSR computes them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from . import degrade, imageio, metrics
from .errors import EdgeRestoreError
from .session import Session


@dataclass
class ImageScore:
    name: str
    psnr: float
    ssim: float
    input_psnr: float | None  # None where input and output differ in size (super-resolution)


@dataclass
class EvalResult:
    images: list[ImageScore] = field(default_factory=list)
    seconds: float = 0.0
    gmac: float = 0.0  # executed per image, mean
    full_gmac: float = 0.0  # the full (all-complex) path per image, mean
    bypass_share: float | None = None  # routed models: share of decisions that took the cheap branch

    @property
    def psnr(self) -> float:
        return float(np.mean([s.psnr for s in self.images]))

    @property
    def ssim(self) -> float:
        return float(np.mean([s.ssim for s in self.images]))

    @property
    def input_psnr(self) -> float | None:
        scores = [s.input_psnr for s in self.images if s.input_psnr is not None]
        return float(np.mean(scores)) if scores else None


def pairs(data: Path, spec: str | None, gt: Path | None) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield (name, degraded float input, uint8 ground truth) per image."""
    if (spec is None) == (gt is None):
        raise EdgeRestoreError("give exactly one of --degrade SPEC or --gt DIR")
    degradation = degrade.parse(spec) if spec is not None else None
    for path in imageio.list_images(data):
        image = imageio.read_image(path)
        clean = imageio.to_float(image).astype(np.float64)
        if degradation is not None:
            target = degradation.target(clean)
            yield path.name, degradation.apply(clean), imageio.from_float(target, 8)
            continue
        gt_path = gt / path.name
        if not gt_path.is_file():
            raise EdgeRestoreError(f"no ground truth for '{path.name}' in '{gt}' (--gt needs the same file names)")
        truth = imageio.from_float(imageio.to_float(imageio.read_image(gt_path)), 8)
        if truth.shape != image.pixels.shape:
            raise EdgeRestoreError(f"'{gt_path}' is {truth.shape[1]}x{truth.shape[0]}, its input "
                                   f"'{path}' is {image.pixels.shape[1]}x{image.pixels.shape[0]}")
        yield path.name, clean, truth


def evaluate(session: Session, data: str | Path, spec: str | None = None, gt: str | Path | None = None,
             border: int = 0, y_channel: bool = False,
             progress: Callable[[str], None] = lambda _: None) -> EvalResult:
    """The degraded input goes in as float (the published protocols add noise without
    quantizing it); the output is clipped and rounded to uint8, as they score it."""
    result = EvalResult()
    executed, full, cheap = [], [], []
    for name, degraded, truth in pairs(Path(data), spec, Path(gt) if gt is not None else None):
        progress(name)
        route = session.run(degraded.astype(np.float32))
        restored = imageio.from_float(route.image, 8)
        result.seconds += route.seconds
        executed.append(route.macs.sum() / 1e9)
        full.append(route.full_macs * len(route.macs) / 1e9)
        cheap.append(route.cheap_share(session.bundle.plan))
        if restored.shape != truth.shape:
            raise EdgeRestoreError(f"'{name}': output {restored.shape} does not match ground truth {truth.shape}")
        noisy = imageio.from_float(degraded, 8) if degraded.shape == truth.shape else None
        result.images.append(ImageScore(
            name, metrics.psnr(restored, truth, border, y_channel), metrics.ssim(restored, truth, border, y_channel),
            metrics.psnr(noisy, truth, border, y_channel) if noisy is not None else None))
    result.gmac, result.full_gmac = float(np.mean(executed)), float(np.mean(full))
    result.bypass_share = float(np.mean(cheap)) if cheap and cheap[0] is not None else None
    return result
