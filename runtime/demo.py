"""``edgerestore demo``: export a model, add noise to a test image, restore it on the
CPU and save a before/after picture, so a new user sees the whole path in one go."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click
import numpy as np

from . import degrade, imageio, metrics
from .errors import EdgeRestoreError
from .restore import Restorer

DEMO_WEIGHTS = "weights/dncnn_25_kair_state_dict.pth"
DEMO_IMAGE = "data/Set12/05.png"
DEMO_NOISE = "gaussian:25"


def find_shared() -> Path:
    """The project's shared data folder: $EDGERESTORE_SHARED, else ./shared or ../shared."""
    candidates = [Path(os.environ["EDGERESTORE_SHARED"])] if "EDGERESTORE_SHARED" in os.environ else []
    candidates += [Path.cwd() / "shared", Path.cwd().parent / "shared"]
    for path in candidates:
        if (path / DEMO_WEIGHTS).is_file():
            return path
    raise EdgeRestoreError(f"demo needs the official DnCNN weights ({DEMO_WEIGHTS}) from the shared folder; "
                           "set EDGERESTORE_SHARED to the folder holding weights/ and data/")


def side_by_side(*panels: np.ndarray, gap: int = 8) -> np.ndarray:
    h = max(p.shape[0] for p in panels)
    spacer = np.full((h, gap, panels[0].shape[2]), 255, np.uint8)
    row = []
    for p in panels:
        row += [np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0)), constant_values=255), spacer]
    return np.concatenate(row[:-1], axis=1)


@click.command("demo")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("edgerestore-demo"),
              show_default=True, help="Folder for the bundle and the before/after picture.")
@click.option("--image", type=click.Path(path_type=Path), default=None, help="Image to degrade and restore.")
@click.option("--backend", default="auto", show_default=True, help="Backend (auto picks the fastest CPU one).")
def demo_command(output: Path, image: Path | None, backend: str) -> None:
    """Export DnCNN from the official weights, restore a noisy image, save before|after|clean."""
    from edgerestore.export import export_bundle

    shared = find_shared()
    image = image or shared / DEMO_IMAGE
    output.mkdir(parents=True, exist_ok=True)
    click.echo(f"exporting DnCNN-S (sigma 25) from {shared / DEMO_WEIGHTS} ...")
    report = export_bundle("dncnn", output / "dncnn.bundle", weights=shared / DEMO_WEIGHTS)
    click.echo(f"  parity vs PyTorch: max abs error {report.parity[0].max_abs_error:.1e}")

    source = imageio.read_image(image)
    clean = imageio.to_float(source).astype(np.float64)
    noisy = degrade.parse(DEMO_NOISE).apply(clean)
    restorer = Restorer(report.bundle, backend=backend)
    start = time.perf_counter()
    restored = restorer.restore(noisy)
    seconds = time.perf_counter() - start

    panels = [imageio.from_float(x, 8) for x in (noisy, restored, clean)]
    picture = output / "before_after.png"
    imageio.write_image(picture, side_by_side(*panels))
    truth = panels[2]
    click.echo(f"restored {image.name} ({source.pixels.shape[1]}x{source.pixels.shape[0]}) on {restorer.backend} "
               f"in {seconds * 1000:.0f} ms")
    click.echo(f"  PSNR noisy {metrics.psnr(panels[0], truth):.2f} dB -> restored {metrics.psnr(panels[1], truth):.2f} dB")
    click.echo(f"  before | after | clean: {picture}")
