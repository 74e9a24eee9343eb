"""``edgerestore demo``: the main job on the CPU in one command. Export the shipped
Path-Restore checkpoint to a bundle, add spatially variant noise to a photo, restore
it with the routed runtime, and save noisy | restored | clean | route map; then the same
photo through the light real-time model (rtdenoise), with the command for a live camera."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click
import numpy as np

from . import degrade, imageio, metrics
from .optional import require
from .session import Session
from .routemap import route_map

DEMO_NOISE = "gaussian-peaks:5-50"


def default_image() -> tuple[np.ndarray, str]:
    """A Kodak photo from the shared data folder if present, else scikit-image's
    bundled astronaut, so the demo also runs on a machine with nothing else."""
    roots = [Path(os.environ["EDGERESTORE_SHARED"])] if "EDGERESTORE_SHARED" in os.environ else []
    roots += [Path.cwd() / "shared", Path.cwd().parent / "shared"]
    for root in roots:
        path = root / "data" / "Kodak24" / "kodim23.png"
        if path.is_file():
            return imageio.to_float(imageio.read_image(path)).astype(np.float64), path.name
    data = require("skimage.data", "the demo's sample photo", alternative="give --image PATH")
    return data.astronaut().astype(np.float64) / 255.0, "astronaut (scikit-image sample)"


def side_by_side(*panels: np.ndarray, gap: int = 8) -> np.ndarray:
    h = max(p.shape[0] for p in panels)
    spacer = np.full((h, gap, 3), 255, np.uint8)
    row = []
    for p in panels:
        p = np.repeat(p, 3, axis=2) if p.shape[2] == 1 else p
        row += [np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0)), constant_values=255), spacer]
    return np.concatenate(row[:-1], axis=1)


@click.command("demo")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("edgerestore-demo"),
              show_default=True, help="Folder for the bundle and the before/after picture.")
@click.option("--image", type=click.Path(path_type=Path), default=None,
              help="Clean RGB image to degrade and restore (default: a Kodak photo or a bundled sample).")
@click.option("--noise", default=DEMO_NOISE, show_default=True, help="Degradation spec.")
@click.option("--backend", default="auto", show_default=True, help="Backend (auto picks the fastest CPU one).")
def demo_command(output: Path, image: Path | None, noise: str, backend: str) -> None:
    """Export Path-Restore, restore a noisy photo on the CPU, save before|after|clean|route map."""
    require("torch", "edgerestore demo (it exports the shipped checkpoint)")
    require("cv2", "edgerestore demo (it draws the route map)")
    from edgerestore.export import export_bundle

    degradation = degrade.parse(noise)
    if image is not None:
        clean, name = imageio.to_float(imageio.read_image(image)).astype(np.float64), image.name
    else:
        clean, name = default_image()
    output.mkdir(parents=True, exist_ok=True)
    click.echo("exporting Path-Restore (shipped checkpoint) to a bundle ...")
    report = export_bundle("pathrestore", output / "pathrestore.bundle")
    click.echo(f"  {len(report.parity)} stages, worst parity error vs PyTorch {max(p.max_abs_error for p in report.parity):.1e}")

    noisy = degradation.apply(clean)
    with Session(report.bundle, backend=backend) as session:
        start = time.perf_counter()
        route = session.run(noisy.astype(np.float32))
        seconds = time.perf_counter() - start
    panels = [imageio.from_float(x, 8) for x in (noisy, route.image, clean)]
    panels.append(route_map(panels[2], route))
    picture = output / "before_after.png"
    imageio.write_image(picture, side_by_side(*panels))
    truth = panels[2]
    click.echo(f"restored {name} ({clean.shape[1]}x{clean.shape[0]}, {noise}) on {session.backend} "
               f"in {seconds:.1f} s")
    click.echo(f"  PSNR noisy {metrics.psnr(panels[0], truth):.2f} dB -> restored {metrics.psnr(panels[1], truth):.2f} dB")
    click.echo(f"  {route.cheap_share(session.bundle.plan):.0%} of blocks bypassed: {route.mac_ratio:.0%} of the "
               "full network's compute")
    click.echo(f"  noisy | restored | clean | route map (bright = more compute): {picture}")
    _real_time(output, panels[0], truth, backend)


def _real_time(output: Path, noisy: np.ndarray, truth: np.ndarray, backend: str) -> None:
    """The same 8-bit noisy photo through rtdenoise, the model for real time on a CPU."""
    from edgerestore.export import export_bundle

    report = export_bundle("rtdenoise", output / "rtdenoise.bundle")
    with Session(report.bundle, backend=backend) as session:
        session.restore(noisy)  # the first call compiles
        start = time.perf_counter()
        restored = session.restore(noisy)
        seconds = time.perf_counter() - start
    click.echo(f"real time: rtdenoise restored it in {seconds * 1000:.0f} ms, PSNR {metrics.psnr(restored, truth):.2f} dB "
               f"(FP32; README \"Real time on a CPU\": INT8, and a live camera with "
               f"`edgerestore restore {output / 'rtdenoise.bundle'} 0 -o clean.mp4 --realtime 30`)")
