"""Blurred training patches, synthesized on the fly from sharp images.

Each patch gets its own kernel: mostly a linear motion blur (random length and angle, the
anti-aliased line of :func:`edgerestore.runtime.degrade.motion_kernel`, as camera shake
over a short exposure draws it), otherwise an isotropic Gaussian (defocus); then a little
sensor noise. The blur is applied to a window larger than the patch, so the patch's
border pixels are blurred from real neighbours, not from padding.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from edgerestore.runtime import imageio
from edgerestore.runtime.degrade import motion_kernel
from edgerestore.runtime.errors import EdgeRestoreError


class BlurPatches:
    def __init__(self, folder: str | Path, patch: int = 96, lengths: tuple[int, int] = (3, 31),
                 motion_share: float = 0.8, gaussian: tuple[float, float] = (0.5, 3.0), noise: float = 2.0,
                 channels: int = 3, seed: int = 0):
        self.patch, self.lengths, self.motion_share = patch, lengths, motion_share
        self.gaussian, self.noise, self.channels = gaussian, noise, channels
        self.margin = max(lengths[1], int(np.ceil(3 * gaussian[1]))) // 2 + 1
        side = patch + 2 * self.margin
        self.images = []
        for path in imageio.list_images(folder):
            pixels = imageio.read_image(path).pixels
            if pixels.shape[2] != channels:
                pixels = np.repeat(pixels[..., :1], channels, axis=2) if channels == 3 else pixels[..., :1]
            if min(pixels.shape[:2]) >= side:
                self.images.append(pixels)
        if not self.images:
            raise EdgeRestoreError(f"no training image in '{folder}' is at least {side}x{side} "
                                   f"(patch {patch} plus the blur margin)")
        self.rng = np.random.RandomState(seed)

    def kernel(self) -> np.ndarray:
        if self.rng.rand() < self.motion_share:
            return motion_kernel(int(self.rng.randint(self.lengths[0], self.lengths[1] + 1)), self.rng.uniform(0, 180))
        sigma = self.rng.uniform(*self.gaussian)
        size = 2 * int(np.ceil(3 * sigma)) + 1
        line = cv2.getGaussianKernel(size, sigma)
        return line @ line.T

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(blurred, sharp) float32 NCHW tensors in [0, 1] (blurred with noise, not clipped)."""
        blurred, sharp = [], []
        p, m = self.patch, self.margin
        for _ in range(size):
            image = self.images[self.rng.randint(len(self.images))]
            h, w = image.shape[:2]
            y, x = self.rng.randint(h - p - 2 * m + 1), self.rng.randint(w - p - 2 * m + 1)
            window = image[y:y + p + 2 * m, x:x + p + 2 * m].astype(np.float32) / 255.0
            if self.rng.rand() < 0.5:
                window = window[:, ::-1]
            window = np.ascontiguousarray(np.rot90(window, self.rng.randint(4)))
            out = cv2.filter2D(window, -1, self.kernel().astype(np.float32), borderType=cv2.BORDER_REFLECT)
            out = out.reshape(window.shape)[m:m + p, m:m + p]
            sigma = self.rng.uniform(0, self.noise) / 255.0
            blurred.append(out + self.rng.standard_normal(out.shape).astype(np.float32) * sigma)
            sharp.append(window[m:m + p, m:m + p])
        to_tensor = lambda xs: torch.from_numpy(np.ascontiguousarray(np.stack(xs).transpose(0, 3, 1, 2)))  # noqa: E731
        return to_tensor(blurred), to_tensor(sharp)
