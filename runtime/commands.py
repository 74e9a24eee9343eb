"""``edgerestore restore`` and ``edgerestore eval``."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from . import backends, imageio
from .budget import DEFAULT_BUDGET_MB, MIN_BUDGET_MB
from .errors import EdgeRestoreError
from .optional import require
from .session import ROUTE_POLICIES, Session

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


def runtime_options(command=None, *, several_backends: bool = False):
    """Options shared by every command that runs a bundle. ``several_backends``: ``--backend``
    may repeat and arrives as the tuple ``backends`` (``profile`` compares them)."""
    if command is None:
        return lambda command: runtime_options(command, several_backends=several_backends)
    backend_help = "auto = OpenVINO if installed, else ONNX Runtime; torch = PyTorch reference."
    if several_backends:
        backend = click.option("--backend", "backends", type=click.Choice(backends.NAMES), multiple=True,
                               default=("auto",), show_default=True,
                               help=backend_help + " Repeat to compare backends side by side.")
    else:
        backend = click.option("--backend", type=click.Choice(backends.NAMES), default="auto", show_default=True,
                               help=backend_help)
    for option in reversed([
        backend,
        click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
                     help="Stage precision (default: the best the bundle has)."),
        click.option("--tile", type=click.IntRange(1), default=None, help="Tile size (default: the bundle's, "
                     "derived from the receptive field)."),
        click.option("--overlap", type=click.IntRange(0), default=None, help="Tile overlap in pixels."),
        click.option("--whole", is_flag=True, help="Run each image whole instead of tiled."),
        click.option("--memory-budget", type=click.FloatRange(MIN_BUDGET_MB), default=DEFAULT_BUDGET_MB,
                     show_default=True, metavar="MB",
                     help="Memory for frames beyond the loaded model: tiles in flight, plan variables, backend "
                          "batches (their sizes follow from it). 1024 fits beside the GPU on an 8 GB Jetson."),
        click.option("--threads", type=click.IntRange(1), default=None,
                     help="Threads of the backend (default: one per core)."),
        click.option("--min-confidence", type=click.FloatRange(0, 1), default=0.5, show_default=True,
                     help="Routed models: take a cheap branch (bypass) only where the router gives it at least "
                          "this probability. 0.5 = argmax (the paper); 1.0 = full network everywhere."),
        click.option("--route-policy", type=click.Choice(ROUTE_POLICIES), default="tile", show_default=True,
                     help="Routed models: tile = every tile follows its own router decisions; vote = at each "
                          "switch all tiles of an image take the branch most of them chose (RL-Restore's "
                          "official whole-image mode); soft / soft-vote = the same, but switches that allow "
                          "blending (all-in-one) run their two most probable branches and mix the outputs by the "
                          "router's renormalised probabilities (mixed degradations)."),
    ]):
        command = option(command)
    return command


def make_session(bundle, backend, precision, tile, overlap, whole, memory_budget, threads, min_confidence,
                 route_policy="tile") -> Session:
    if whole and (tile is not None or overlap is not None):
        raise EdgeRestoreError("--whole cannot be combined with --tile/--overlap")
    # No --whole: the bundle decides (whole images for models that declare it, else tiles).
    return Session(bundle, backend=backend, precision=precision, memory_budget=memory_budget, threads=threads,
                   tile=tile, overlap=overlap, whole=whole or None, min_confidence=min_confidence,
                   route_policy=route_policy)


def output_paths(inputs: list[Path], output: Path) -> list[Path]:
    """One input and an image file name: that file. Otherwise: a directory of same-named files."""
    if len(inputs) == 1 and output.suffix.lower() in IMAGE_SUFFIXES:
        return [output]
    if output.suffix.lower() in IMAGE_SUFFIXES:
        raise EdgeRestoreError(f"{len(inputs)} inputs need an output directory, not the file name '{output}'")
    if output.exists() and not output.is_dir():
        raise EdgeRestoreError(f"output '{output}' exists and is not a directory")
    names = [p.name for p in inputs]
    if len(set(names)) != len(names):
        raise EdgeRestoreError("two inputs have the same file name; restore them into separate directories")
    return [output / name for name in names]


@click.command("restore")
@click.argument("bundle", type=click.Path(path_type=Path))
# Plain strings: a GStreamer pipeline ("rtspsrc location=rtsp://...") must not be normalised as a path.
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Output image (one input), directory (several inputs, a directory input, a stream's frames) "
                   "or video file (.mp4, .avi, .mkv, .mov).")
@runtime_options
@click.option("--route-map", type=click.Path(path_type=Path), default=None,
              help="Also write a picture of each tile's executed share of the network (one input only).")
@click.option("--realtime", "realtime", type=click.FloatRange(min=0, min_open=True), default=None, metavar="FPS",
              help="Streams: keep up with a live source at FPS (files are paced to it): drop late frames and "
                   "report how many. Without it no frame is dropped.")
@click.option("--queue", "queue_size", type=click.IntRange(1), default=4, show_default=True,
              help="Streams: frames buffered between decode, restore and encode (bounds the memory).")
@click.option("--frames", "max_frames", type=click.IntRange(1), default=None,
              help="Streams: stop after this many source frames (a camera runs until Ctrl-C otherwise).")
@click.option("--codec", default=None, metavar="NAME",
              help="A video restored from a video file: FFmpeg's encoder (needs PyAV, the video extra), e.g. ffv1 "
                   "(lossless), libx264. Default: mpeg4 (.mp4, .mkv, .mov), mjpeg (.avi).")
@click.option("--ray", "on_ray", is_flag=True,
              help="Run on a Ray cluster (the ray extra): actors each hold one session; resumable, with a results "
                   "file in OUTPUT. Inputs, OUTPUT and BUNDLE must be on a file system every node sees.")
@click.option("--ray-address", default=None, metavar="ADDRESS",
              help="--ray: the cluster to join (default: $RAY_ADDRESS, else a local cluster on this machine).")
@click.option("--actors-per-node", type=click.IntRange(1), default=None,
              help="--ray: at most this many actors on a node (default: as many as its CPUs hold at --threads each).")
@click.option("--gpus-per-actor", type=click.FloatRange(0), default=0, show_default=True,
              help="--ray: GPUs Ray reserves for each actor (a device backend).")
@click.option("--segment-frames", type=click.IntRange(1), default=None, metavar="N",
              help="--ray: a video is split into segments at the first keyframe after every N frames "
                   "(default 120); the actors restore the segments in parallel.")
@click.option("--gt", type=click.Path(path_type=Path), default=None,
              help="--ray: ground-truth directory with the inputs' file names; each item's PSNR goes in the results.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def restore_command(bundle, inputs, output, backend, precision, tile, overlap, whole, memory_budget, threads,
                    min_confidence, route_policy, route_map, realtime, queue_size, max_frames, codec, on_ray,
                    ray_address, actors_per_node, gpus_per_actor, segment_frames, gt, as_json):
    """Restore images or a stream with BUNDLE.

    INPUTS are image files or directories of images; or one video file, camera index
    (0, 1, ...) or GStreamer pipeline string (needs an OpenCV built with GStreamer, as
    JetPack's; without an appsink one is appended).

    Image files: outputs keep the input's bit depth (8/16) and alpha channel; each file is
    written to a temporary name and renamed, so a failure never leaves a partial image.

    Streams (a video, camera or pipeline; a directory restored into a directory; any
    input with a video OUTPUT or --realtime): decode, restore and encode run concurrently
    with bounded queues; frames keep their order and none is dropped unless --realtime is
    given. A corrupt frame is reported and skipped; a frame of another size is re-tiled
    (and scaled to the video's size if the output is a video file).

    --ray: image files, folders, file lists (.txt, one path a line) and video files restored
    into the folder OUTPUT by actors on a Ray cluster (--threads each, default 1); videos
    are split at keyframes into segments restored in parallel, then joined with their audio.
    Each finished image or segment is a line of OUTPUT/edgerestore-results.jsonl; a rerun
    skips those. A bad item is reported and skipped, and the command then exits with status 1.
    """
    from .stream_command import is_stream, restore_stream

    ray_only = {"--ray-address": ray_address, "--actors-per-node": actors_per_node, "--gpus-per-actor": gpus_per_actor,
                "--segment-frames": segment_frames, "--gt": gt}
    if not on_ray and any(ray_only.values()):
        raise EdgeRestoreError(f"{next(k for k, v in ray_only.items() if v)} needs --ray")
    if on_ray:
        others = {"--route-map": route_map, "--realtime": realtime, "--frames": max_frames}
        if any(v is not None for v in others.values()):
            raise EdgeRestoreError(f"{next(k for k, v in others.items() if v is not None)} cannot be combined "
                                   "with --ray")
        if whole and (tile is not None or overlap is not None):
            raise EdgeRestoreError("--whole cannot be combined with --tile/--overlap")
        from .ray_command import restore_on_ray

        return restore_on_ray(bundle, list(inputs), output, as_json, backend=backend, precision=precision,
                              memory_budget=memory_budget, threads=threads or 1, actors_per_node=actors_per_node,
                              gpus_per_actor=gpus_per_actor, address=ray_address, gt=gt, codec=codec,
                              **({"segment_frames": segment_frames} if segment_frames else {}), tile=tile,
                              overlap=overlap, whole=whole or None, min_confidence=min_confidence,
                              route_policy=route_policy)
    if is_stream(list(inputs), output, realtime):
        if route_map is not None:
            raise EdgeRestoreError("--route-map needs exactly one input image, not a stream")
        factory = lambda: make_session(bundle, backend, precision, tile, overlap, whole, memory_budget,  # noqa: E731
                                       threads, min_confidence, route_policy)
        return restore_stream(factory, list(inputs), output, realtime, queue_size, max_frames, as_json, codec)
    if codec is not None:
        raise EdgeRestoreError("--codec picks the encoder of a video output; these inputs are restored as images")
    files: list[Path] = []
    for path in map(Path, inputs):
        files.extend(imageio.list_images(path) if path.is_dir() else [path])
    targets = output_paths(files, output)
    if route_map is not None and (len(files) != 1 or whole):
        raise EdgeRestoreError("--route-map needs exactly one input image and tiled mode")
    if route_map is not None:
        from .routemap import PURPOSE

        require("cv2", PURPOSE)  # before the restore, not after it
    session = make_session(bundle, backend, precision, tile, overlap, whole, memory_budget, threads, min_confidence,
                           route_policy)
    if route_map is not None and session.whole:  # the bundle runs whole images unless given --tile
        raise EdgeRestoreError("--route-map needs tiled mode; this bundle runs whole images unless given --tile N")
    if len(targets) > 1 or targets[0].parent == output:
        output.mkdir(parents=True, exist_ok=True)
    from rich.progress import Progress

    executed = full = seconds = 0.0
    shares = []  # per image, as eval and streams average them
    with Progress(transient=True, disable=len(files) < 2) as bar:
        task = bar.add_task("restoring", total=len(files))
        for source, target in zip(files, targets):
            image = imageio.read_image(source)
            result = session.run(image.pixels)
            imageio.write_image(target, result.image, image.alpha, image.metadata)
            executed += result.macs.sum()
            full += result.full_macs * len(result.macs)
            seconds += result.seconds
            shares.append(result.cheap_share(session.bundle.plan))
            bar.advance(task)
    if route_map is not None:
        from .routemap import route_map as render

        imageio.write_image(route_map, render(image.pixels if image.bit_depth == 8 else
                                              imageio.from_float(imageio.to_float(image), 8), result,
                                              session.bundle.plan))
    summary = {"images": len(files), "output": str(output), "backend": session.backend,
               "precision": session.precision, "seconds": seconds,
               "gmac_per_image": executed / len(files) / 1e9, "full_path_gmac_per_image": full / len(files) / 1e9,
               "bypass_share": None if shares[0] is None else float(np.mean(shares))}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"restored {len(files)} image(s) -> {output} ({session.backend}, {session.precision}, "
               f"{seconds:.2f} s)")
    if full and executed < full:
        click.echo(f"executed {summary['gmac_per_image']:.2f} GMAC per image, "
                   f"{executed / full:.0%} of the full path ({summary['full_path_gmac_per_image']:.2f} GMAC)")


@click.command("eval")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Clean images (with --degrade) or degraded inputs (with --gt).")
@click.option("--degrade", "spec", default=None, help="Degradation spec, e.g. gaussian:25 or blur:1.5+jpeg:40 "
              "(seeded per image; gaussian follows the published seed-0 protocol).")
@click.option("--gt", type=click.Path(path_type=Path), default=None,
              help="Ground-truth directory with the same file names as --data.")
@runtime_options
@click.option("--border", type=click.IntRange(0), default=0, show_default=True, help="Pixels cropped before scoring.")
@click.option("--y-channel", is_flag=True, help="Score the BT.601 Y channel (super-resolution protocol).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def eval_command(bundle, data, spec, gt, backend, precision, tile, overlap, whole, memory_budget, threads,
                 min_confidence, route_policy, border, y_channel, as_json):
    """Score BUNDLE on a dataset: PSNR/SSIM as BasicSR computes them (uint8, rounded).

    JSON keys: psnr, ssim, input_psnr, images, backend, precision, seconds (restoration
    time only, no file IO), per_image.
    """
    from rich.progress import Progress

    from .degrade import parse
    from .evaluate import evaluate

    require("skimage", "eval (SSIM)")
    if spec is not None:
        parse(spec)  # a bad spec fails before the bundle loads
    session = make_session(bundle, backend, precision, tile, overlap, whole, memory_budget, threads, min_confidence,
                           route_policy)
    with Progress(transient=True, disable=as_json) as bar:
        task = bar.add_task("evaluating", total=None)
        result = evaluate(session, data, spec, gt, border, y_channel,
                          progress=lambda name: bar.update(task, advance=1, description=name))
    report = {
        "bundle": str(bundle), "data": str(data), "degrade": spec, "gt": str(gt) if gt else None,
        "psnr": result.psnr, "ssim": result.ssim, "input_psnr": result.input_psnr, "images": len(result.images),
        "backend": session.backend, "precision": session.precision, "seconds": result.seconds,
        "mode": "whole" if session.whole else f"tiled {session.tiles.tile}/{session.tiles.overlap}",
        "min_confidence": min_confidence, "route_policy": route_policy, "gmac_per_image": result.gmac,
        "full_path_gmac_per_image": result.full_gmac, "bypass_share": result.bypass_share,
        "per_image": [vars(s) for s in result.images],
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"{len(result.images)} images, {report['mode']}, {session.backend} {session.precision}: "
               f"PSNR {result.psnr:.2f} dB (input {_db(result.input_psnr)}), SSIM {result.ssim:.4f}, "
               f"{result.seconds:.2f} s")
    if result.bypass_share is not None:
        click.echo(f"routing: {result.bypass_share:.1%} of blocks bypassed, {result.gmac:.2f} of "
                   f"{result.full_gmac:.2f} GMAC per image ({result.gmac / result.full_gmac:.0%})")


def _db(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
