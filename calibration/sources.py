"""Calibration data: what the INT8 scales are measured on, and the held-out images the
INT8 result is checked on.

A source yields :class:`Sample` crops (degraded input, clean target). Two come with the
package: a folder of clean images plus a degradation spec, and a folder of degraded
inputs paired with a folder of clean images of the same names. Users with their own
data implement :class:`CalibrationDataReader` (``get_next()`` until ``None``, as in
ONNX Runtime's quantization tooling) and wrap it in :class:`ReaderSource`.

The folder sources shuffle the file list once (seeded), take the first ``count`` files
for calibration and the next ``holdout`` files for the accuracy check, and cut one
random ``crop`` x ``crop`` window from each calibration image (a window of up to
256 x 256 from each held-out one), so export time does not grow with the folder and the
two sets never share an image. ``degrade_spec`` may list alternatives separated by commas
(``rain:0.002,blur:2,gaussian:25``): image ``i`` of each set gets the ``i % n``-th, so a
model that routes by degradation is calibrated (and checked) on all of them.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from edgerestore.runtime import degrade, imageio
from edgerestore.runtime.errors import EdgeRestoreError


@dataclass(frozen=True)
class Sample:
    name: str
    degraded: np.ndarray  # HxWxC float32 in [0, 1] (the restorer maps it to the model's range)
    clean: np.ndarray | None  # HxWxC float64 target (None: usable for scales, not for accuracy)


# Held-out windows are up to this many pixels on a side (whole images below it).
HELD_OUT_SIDE = 256


class CalibrationDataReader(abc.ABC):
    """Implement ``get_next`` to calibrate on your own data: return a :class:`Sample`
    (or a bare degraded HxWxC float array) per call and ``None`` when done."""

    @abc.abstractmethod
    def get_next(self) -> Sample | np.ndarray | None: ...


class ReaderSource:
    """Adapts a :class:`CalibrationDataReader` to the iterable the calibration reads."""

    def __init__(self, reader: CalibrationDataReader):
        self.reader = reader

    def __iter__(self) -> Iterator[Sample]:
        index = 0
        while (item := self.reader.get_next()) is not None:
            if not isinstance(item, Sample):
                item = Sample(f"sample{index}", np.asarray(item, np.float32), None)
            if item.degraded.ndim != 3:
                raise EdgeRestoreError(f"calibration sample '{item.name}' must be HxWxC, got shape {item.degraded.shape}")
            index += 1
            yield item


@dataclass(frozen=True)
class FolderSplit:
    """Calibration and held-out crops drawn from one folder (see the module docstring)."""

    folder: Path
    degrade_spec: str | None = None  # clean images in ``folder``, degraded on the fly (comma: alternatives)
    gt: Path | None = None  # or: degraded images in ``folder``, clean ones of the same names here
    count: int = 32
    holdout: int = 16
    crop: int = 128
    seed: int = 0

    def __post_init__(self):
        if (self.degrade_spec is None) == (self.gt is None):
            raise EdgeRestoreError("calibration needs ground truth for its accuracy check: give exactly one of "
                                   "--calib-degrade SPEC (clean images in --calib) or --calib-gt DIR")
        for spec in self.specs():
            degrade.parse(spec)  # a bad spec fails before any work
        if self.count < 1 or self.holdout < 0 or self.crop < 1:
            raise EdgeRestoreError(f"need --calib-images >= 1 and a positive crop, got {self.count} and {self.crop}")
        self._files()  # an empty or missing folder fails before any export work

    def specs(self) -> list[str]:
        """The degradation alternatives, in the order images cycle through them."""
        return [] if self.degrade_spec is None else [part.strip() for part in self.degrade_spec.split(",")]

    def _files(self) -> tuple[list[Path], list[Path]]:
        try:
            files = imageio.list_images(self.folder)
        except EdgeRestoreError as err:
            raise EdgeRestoreError(f"calibration folder: {err}") from None
        if len(files) < 2 and self.holdout:
            raise EdgeRestoreError(f"calibration folder '{self.folder}' has {len(files)} image; need at least 2 "
                                   "(calibration images and held-out images to check the INT8 result on)")
        order = np.random.default_rng(self.seed).permutation(len(files))
        holdout = min(self.holdout, len(files) // 2)
        count = min(self.count, len(files) - holdout)
        return [files[i] for i in order[:count]], [files[i] for i in order[count:count + holdout]]

    def calibration(self) -> list[Sample]:
        return self._samples(self._files()[0], salt=1, side=self.crop)

    def held_out(self) -> list[Sample]:
        """Larger windows than the calibration crops (the accuracy check and the sensitivity
        search decide on these, so their PSNR should be close to a whole-image evaluation's)."""
        return self._samples(self._files()[1], salt=2, side=max(self.crop, HELD_OUT_SIDE))

    def _samples(self, files: list[Path], salt: int, side: int) -> list[Sample]:
        rng = np.random.default_rng([self.seed, salt])
        return [self._sample(path, rng, index, side) for index, path in enumerate(files)]

    def _sample(self, path: Path, rng: np.random.Generator, index: int, side: int) -> Sample:
        if self.gt is not None:
            degraded = imageio.to_float(imageio.read_image(path))
            gt_path = self.gt / path.name
            if not gt_path.is_file():
                raise EdgeRestoreError(f"no ground truth for calibration image '{path.name}' in '{self.gt}'")
            clean = imageio.to_float(imageio.read_image(gt_path)).astype(np.float64)
            if clean.shape != degraded.shape:
                raise EdgeRestoreError(f"'{gt_path}' and '{path}' differ in size")
        else:
            clean = imageio.to_float(imageio.read_image(path)).astype(np.float64)
        h, w = clean.shape[:2]
        if h < self.crop or w < self.crop:
            raise EdgeRestoreError(f"calibration image '{path}' is {w}x{h}, smaller than the {self.crop}x{self.crop} "
                                   "calibration tile; use larger images or a smaller --calib-crop")
        ch, cw = min(side, h), min(side, w)
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        window = np.s_[y:y + ch, x:x + cw]
        clean = clean[window]
        if self.gt is not None:
            degraded = degraded[window]
        else:
            # Seeded per image (not per crop position), like the evaluation protocol.
            specs = self.specs()
            degraded = degrade.parse(specs[index % len(specs)], seed=index).apply(clean).astype(np.float32)
        return Sample(path.name, np.ascontiguousarray(degraded, np.float32), clean)
