"""Training patches with degradations synthesized on the fly.

Noise is blind: sigma uniform in [lo, hi] per patch, or spatially variant (a linear
ramp in a random direction, or a few gaussian bumps) drawn over the whole image
before cropping, so a 63x63 patch sees the local noise level of a real scene.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgerestore.runtime import imageio
from edgerestore.runtime.degrade import peaks_sigma_map, ramp_sigma_map
from edgerestore.runtime.errors import EdgeRestoreError


class NoisyPatches:
    def __init__(self, folder: str | Path, patch: int = 63, sigma: tuple[float, float] = (5.0, 50.0),
                 channels: int = 3, seed: int = 0, eight_bit: bool = False):
        paths = imageio.list_images(folder)
        self.images = []
        for path in paths:
            pixels = imageio.read_image(path).pixels
            if pixels.shape[2] != channels:
                pixels = np.repeat(pixels, channels, axis=2) if pixels.shape[2] == 1 else pixels[..., :channels]
            if min(pixels.shape[:2]) >= patch:
                self.images.append(pixels)
        if not self.images:
            raise EdgeRestoreError(f"no training image in '{folder}' is at least {patch}x{patch}")
        self.patch, self.sigma = patch, sigma
        # A camera's frames: the noisy patch clipped to [0, 1] and rounded to 8 bits. Clipping
        # biases saturated regions, which a model trained on unclipped noise misreads (0.3 dB
        # on McMaster sigma 25 for a small one).
        self.eight_bit = eight_bit
        self.rng = np.random.RandomState(seed)

    def sigma_map(self, height: int, width: int) -> np.ndarray:
        lo, hi = sorted(self.rng.uniform(*self.sigma, size=2))
        kind = self.rng.randint(3)
        if kind == 0:
            return np.full((height, width), self.rng.uniform(*self.sigma))
        if kind == 1:
            ramp = ramp_sigma_map(height, width, lo, hi) if self.rng.rand() < 0.5 else \
                ramp_sigma_map(width, height, lo, hi).T
            return ramp[::-1] if self.rng.rand() < 0.5 else ramp
        return peaks_sigma_map(height, width, lo, hi, self.rng)

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(noisy, clean) float32 NCHW tensors in [0, 1] (noisy not clipped unless eight_bit)."""
        clean, noisy = [], []
        p = self.patch
        for _ in range(size):
            image = self.images[self.rng.randint(len(self.images))]
            h, w = image.shape[:2]
            sigma = self.sigma_map(h, w)
            y, x = self.rng.randint(h - p + 1), self.rng.randint(w - p + 1)
            crop = image[y:y + p, x:x + p].astype(np.float32) / 255.0
            if self.rng.rand() < 0.5:
                crop = crop[:, ::-1]
            crop = np.rot90(crop, self.rng.randint(4))
            s = sigma[y:y + p, x:x + p, None] / 255.0  # any orientation is a valid noise field
            clean.append(crop)
            sample = crop + self.rng.standard_normal(crop.shape).astype(np.float32) * s.astype(np.float32)
            if self.eight_bit:
                sample = np.rint(np.clip(sample, 0.0, 1.0) * 255.0).astype(np.float32) / np.float32(255.0)
            noisy.append(sample)
        to_tensor = lambda xs: torch.from_numpy(np.ascontiguousarray(np.stack(xs).transpose(0, 3, 1, 2)))
        return to_tensor(noisy), to_tensor(clean)
