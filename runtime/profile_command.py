"""``edgerestore profile``: latency, throughput, compute, routing and memory of a bundle on
this machine, for one or several backends side by side (see :mod:`runtime.profiler`)."""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path

import click
import numpy as np

from . import degrade, imageio, tegrastats
from .atomic import atomic_file
from .bundle import Bundle
from .commands import make_session, runtime_options
from .errors import EdgeRestoreError
from .optional import require
from .profiler import profile

DEFAULT_SIZE = (1280, 720)
DEFAULT_DEGRADE = "gaussian-peaks:5-50"  # spatially variant noise: routed models show their range
_GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)  # RGB -> gray, as OpenCV's cvtColor for float


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or not int(match[1]) or not int(match[2]):
        raise EdgeRestoreError(f"--size '{text}': give WIDTHxHEIGHT, e.g. 1280x720")
    return int(match[1]), int(match[2])


def profile_frame(channels: int, size: tuple[int, int] | None, image: Path | None, spec: str) -> tuple[np.ndarray, str]:
    """The frame to profile (uint8 HxWxC, as a camera delivers it) and a description. Content
    matters for routed models, so it is a photo (scikit-image's bundled astronaut unless
    --image), degraded."""
    if image is not None:
        clean, name = imageio.to_float(imageio.read_image(image)), image.name
    else:
        data = require("skimage.data", "profile's sample photo", alternative="profile your own with --image PATH")
        clean, name = data.astronaut().astype(np.float32) / 255.0, "astronaut (scikit-image sample)"
    width, height = size or ((clean.shape[1], clean.shape[0]) if image is not None else DEFAULT_SIZE)
    if (width, height) != (clean.shape[1], clean.shape[0]):
        cv2 = require("cv2", "resizing the profiled frame", alternative="give --image at the size to profile")
        clean = cv2.resize(clean, (width, height), interpolation=cv2.INTER_AREA)
        clean = clean.reshape(height, width, -1)
    if channels == 1 and clean.shape[2] == 3:
        clean = (clean @ _GRAY_WEIGHTS)[..., None]
    elif channels == 3 and clean.shape[2] == 1:
        clean = np.repeat(clean, 3, axis=2)
    if spec != "none":
        clean = degrade.parse(spec).apply(clean.astype(np.float64))
        name += f", {spec}"
    return imageio.from_float(clean, 8), f"{name}, {clean.shape[1]}x{clean.shape[0]}"


@click.command("profile")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--size", default=None, metavar="WxH",
              help=f"Frame size (default {DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}, or the size of --image).")
@runtime_options(several_backends=True)
@click.option("--iterations", type=click.IntRange(1), default=20, show_default=True, help="Timed frames.")
@click.option("--warmup", type=click.IntRange(0), default=2, show_default=True,
              help="Untimed frames first (allocations, lazy initialisation, clocks ramping up).")
@click.option("--image", type=click.Path(path_type=Path), default=None,
              help="Profile on this image instead of the bundled sample photo.")
@click.option("--degrade", "spec", default=DEFAULT_DEGRADE, show_default=True,
              help="Degradation of the frame ('none' to use it as is); routed models spend by content.")
@click.option("--json", "json_path", type=click.Path(path_type=Path, allow_dash=True), default=None, metavar="FILE",
              help="Write the report as JSON to FILE ('-': stdout, instead of the table).")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="Draw each stage's latency distribution per backend (.png, .svg or .pdf).")
@click.option("--tegrastats/--no-tegrastats", "use_tegrastats", default=None,
              help="Sample Jetson telemetry (power rails, GPU/EMC load and clocks, RAM, temperatures) during the "
                   "timed frames. Default: on where tegrastats is on PATH.")
@click.option("--tegrastats-interval", type=click.IntRange(10), default=100, show_default=True, metavar="MS",
              help="tegrastats sampling interval.")
def profile_command(bundle, size, backends, precision, tile, overlap, whole, memory_budget, threads, min_confidence,
                    route_policy,
                    iterations, warmup, image, spec, json_path, plot_path, use_tegrastats, tegrastats_interval):
    """Profile BUNDLE: warm-up, then --iterations frames through the runtime.

    Reports per stage p50/p90/p99 latency (the session's own timing hooks around every
    backend call, the tile library's extract/merge, and the host work between them),
    end-to-end latency, FPS, megapixels/s, backend calls and bucket sizes per frame,
    executed GMAC per frame (and per second) against the full (all-complex) path, each
    branch's share of tiles, and peak resident memory; on a Jetson also tegrastats' power
    rails, GPU/EMC load and clocks. The frame is uint8, as a camera delivers it.

    JSON keys: bundle, model, frame, size, iterations, warmup, min_confidence,
    route_policy, host, runs (one per --backend: backend, precision, mode, memory_budget_mb,
    frames, latency_ms, fps, megapixels_per_second, stages, tiles_per_frame,
    backend_calls_per_frame, buckets (occupancy, calls_per_frame per stage and bucket size),
    gmac_per_frame, full_path_gmac_per_frame, mac_ratio, executed_gmac_per_second,
    branch_share, branch_share_per_switch, memory_mb, spill_per_frame (a vote's chunks
    spilled to disk: mb, seconds), telemetry).
    """
    from rich.console import Console
    from rich.progress import Progress

    frame_size = parse_size(size) if size is not None else None
    if spec != "none":
        degrade.parse(spec)  # a bad spec fails before anything loads
    for path in (p for p in (json_path, plot_path) if p is not None and str(p) != "-"):
        if not (path.parent if str(path.parent) else Path(".")).is_dir():
            raise EdgeRestoreError(f"cannot write '{path}': directory '{path.parent}' does not exist")
    if plot_path is not None and plot_path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise EdgeRestoreError(f"--plot '{plot_path}': use a .png, .svg or .pdf file name")
    if plot_path is not None:
        from .profile_plot import PURPOSE

        require("matplotlib", PURPOSE)  # before the profile runs, not after
    if use_tegrastats and not tegrastats.available():
        raise EdgeRestoreError("--tegrastats: no 'tegrastats' on PATH (it ships with JetPack on a Jetson)")
    sample = tegrastats.available() if use_tegrastats is None else use_tegrastats
    model = Bundle(bundle)
    frame, description = profile_frame(model.channels, frame_size, image, spec)

    results = []
    console = Console(stderr=True)
    with Progress(console=console, transient=True) as bar:
        for backend in dict.fromkeys(backends):  # a backend named twice runs once
            task = bar.add_task(f"loading {backend}", total=warmup + iterations)
            session = make_session(model, backend, precision, tile, overlap, whole, memory_budget, threads,
                                   min_confidence, route_policy)
            bar.update(task, description=f"profiling {session.backend} {session.precision}")
            telemetry = tegrastats.TegrastatsSampler(tegrastats_interval) if sample else None
            with session:
                results.append(profile(session, frame, iterations, warmup, telemetry,
                                       progress=lambda: bar.advance(task)))

    report = {
        "bundle": str(bundle), "model": model.name, "frame": description,
        "size": [int(frame.shape[1]), int(frame.shape[0])], "iterations": iterations, "warmup": warmup,
        "min_confidence": min_confidence, "route_policy": route_policy,
        "host": {"system": platform.system(), "machine": platform.machine(), "cpus": os.cpu_count(),
                 "jetson": tegrastats.jetson_model(), "tegrastats": bool(sample)},
        "runs": [r.report for r in results],
    }
    if json_path is not None:
        text = json.dumps(report, indent=2)
        if str(json_path) == "-":
            click.echo(text)
        else:
            with atomic_file(json_path) as tmp:
                tmp.write_text(text + "\n")
    if plot_path is not None:
        from .profile_plot import plot_latency

        title = f"{model.name}, {report['size'][0]}x{report['size'][1]}, {iterations} frames"
        plot_latency(plot_path, title, [(f"{r.report['backend']} {r.report['precision']}", r.per_frame_ms)
                                        for r in results])
    if json_path is None or str(json_path) != "-":
        _print_table(report)


def _print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    runs = report["runs"]
    table = Table(title=f"{report['model']}: {report['frame']}, {report['iterations']} frames", title_justify="left")
    table.add_column("ms per frame")
    for run in runs:
        table.add_column(f"{run['backend']} {run['precision']}\np50 / p90 / p99", justify="right")
        table.add_column("share", justify="right")
    names = list(dict.fromkeys(stage["name"] for run in runs for stage in run["stages"]))
    for name in names:
        cells = [name]
        for run in runs:
            stage = next((s for s in run["stages"] if s["name"] == name), None)
            cells += [_ms(stage["latency_ms"]), f"{stage['share']:.0%}"] if stage else ["", ""]
        table.add_row(*cells)
    table.add_section()
    table.add_row("end-to-end", *[cell for run in runs for cell in (_ms(run["latency_ms"]), "")])
    rows = {
        "FPS": lambda r: f"{r['fps']:.2f}",
        "megapixels/s": lambda r: f"{r['megapixels_per_second']:.2f}",
        "GMAC per frame": lambda r: f"{r['gmac_per_frame']:.1f} ({r['mac_ratio']:.0%} of "
                                    f"{r['full_path_gmac_per_frame']:.1f})",
        "executed GMAC/s": lambda r: f"{r['executed_gmac_per_second']:.1f}",
        "backend calls per frame": lambda r: f"{r['backend_calls_per_frame']:.0f} "
                                             f"({r['buckets']['occupancy']:.0%} of bucket rows real)",
        "branch share": lambda r: ", ".join(f"{k} {v:.0%}" for k, v in r["branch_share"].items()) or "-",
        "peak RSS MB": lambda r: f"{r['memory_mb']['peak_rss']:.0f}",
    }
    if any(run["spill_per_frame"]["mb"] for run in runs):
        rows["vote spill per frame"] = lambda r: (f"{r['spill_per_frame']['mb']:.0f} MB in "
                                                  f"{r['spill_per_frame']['seconds']:.2f} s")
    if any(run["telemetry"] for run in runs):
        rows.update({
            "input power mW": lambda r: _stat(r["telemetry"], "input_power_mw"),
            "energy per frame mJ": lambda r: f"{r['telemetry']['energy_per_frame_mj']:.0f}"
            if r["telemetry"] and r["telemetry"]["energy_per_frame_mj"] else "-",
            "GPU load %": lambda r: _stat(r["telemetry"], "gpu_load_percent"),
            "GPU MHz": lambda r: _stat(r["telemetry"], "gpu_mhz"),
            "EMC load %": lambda r: _stat(r["telemetry"], "emc_load_percent"),
        })
    for label, cell in rows.items():
        table.add_row(label, *[c for run in runs for c in (cell(run), "")])
    console = Console()
    if not console.is_terminal:  # a file or a pipe: no terminal width to wrap the columns at
        console = Console(width=200)
    console.print(table)


def _ms(values: dict[str, float]) -> str:
    def one(ms: float) -> str:
        return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 1 else f"{ms:.2f}"

    return " / ".join(one(values[p]) for p in ("p50", "p90", "p99"))


def _stat(telemetry: dict | None, key: str) -> str:
    value = telemetry.get(key) if telemetry else None
    return f"{value['mean']:.0f} (max {value['max']:.0f})" if value else "-"
