"""``edgerestore export MODEL [--weights W] [--int8 --calib DIR ...] -o BUNDLE``."""

from __future__ import annotations

import json
from pathlib import Path

import click

CALIBRATION_METHODS = ("minmax", "percentile", "entropy", "mse")  # edgerestore.calibration.scales.METHODS


@click.command("export")
@click.argument("model")
@click.option("--weights", type=click.Path(path_type=Path), help="Checkpoint: a state_dict, a legacy pickled "
              "module (read without running its code) or an edgerestore checkpoint. Depth and channels are "
              "read from it. Default: the model's shipped checkpoint, if it has one.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Bundle directory to write (replaced atomically if it is an old bundle).")
@click.option("--int8", is_flag=True, help="Also calibrate and add INT8 stages: Q/DQ ONNX per stage, TensorRT "
              "calibration caches (calib/<stage>.cache) and calibration.json.")
@click.option("--calib", "calib_dir", type=click.Path(path_type=Path), default=None,
              help="--int8: folder of calibration images (clean with --calib-degrade, degraded with --calib-gt). "
                   "Some are held out to check the INT8 result.")
@click.option("--calib-degrade", "calib_degrade", default=None,
              help="--int8: degradation spec applied to the --calib images, e.g. gaussian:25; comma-separated "
                   "alternatives take turns over the images (rain:0.002,blur:2,gaussian:25).")
@click.option("--calib-gt", "calib_gt", type=click.Path(path_type=Path), default=None,
              help="--int8: clean images with the same names as the (degraded) --calib images.")
@click.option("--calib-images", type=click.IntRange(1), default=32, show_default=True,
              help="--int8: calibration images drawn (seeded) from --calib; one random crop each.")
@click.option("--calib-crop", type=click.IntRange(1), default=128, show_default=True,
              help="--int8: side of the random crop taken from each calibration image.")
@click.option("--holdout", type=click.IntRange(1), default=16, show_default=True,
              help="--int8: further images from --calib that only check accuracy (at most half the folder).")
@click.option("--method", default=None, metavar="|".join(CALIBRATION_METHODS),
              help="--int8: activation range algorithm (default: percentile, 99.999th of |x|).")
@click.option("--max-drop", type=float, default=None,
              help="--int8: PSNR budget in dB on the held-out crops; a sensitivity search keeps the fewest layers in "
                   "FP32 that meet it (default: first and last convolution in FP32).")
@click.option("--trt-version", default="10.3", show_default=True,
              help="--int8: TensorRT version the calibration caches are for: 8.5 (JetPack 5.1), 8.6 (JetPack 6.0), "
                   "10.3 (JetPack 6.1/6.2), 11, or exact MAJOR.MINOR.PATCH.")
@click.option("--route-agnostic", is_flag=True,
              help="--int8, routed models: ship scales calibrated with every tile through every branch instead of "
                   "only the tiles the router sends there (the report compares both either way).")
@click.option("--bias-correction/--no-bias-correction", default=True, show_default=True,
              help="--int8: after quantizing, remove each convolution's mean output shift (INT8 vs FP32, measured "
                   "on the calibration tiles layer after layer) from its bias.")
@click.option("--equalize/--no-equalize", default=True, show_default=True,
              help="--int8: before calibrating, rescale the channels of each Conv-ReLU-Conv chain so that the "
                   "activation between them loses less to one INT8 step (the FP32 function is unchanged).")
@click.option("--weight-bits", type=click.Choice(["7", "8"]), default="7", show_default=True,
              help="--int8: weight grid. 7 avoids the 16-bit saturation of INT8 on x86 CPUs without VNNI (AVX2: "
                   "ONNX Runtime and OpenVINO); 8 is finer where nothing saturates (VNNI, ARM, TensorRT).")
@click.option("--adaround/--no-adaround", default=True, show_default=True,
              help="--int8: learn each INT8 convolution's weight rounding (up or down per weight) to minimise its "
                   "output error on the calibration tiles (AdaRound), instead of rounding to nearest.")
@click.option("--unsigned-activations/--signed-activations", "unsigned_activations", default=True,
              show_default=True,
              help="--int8: activations that cannot be negative (ReLU outputs) on unsigned 8 bits, 256 levels over "
                   "their range, as ONNX Runtime and OpenVINO run them. TensorRT has signed INT8 only and builds "
                   "them on 128 levels; --signed-activations validates a bundle exactly as TensorRT computes it.")
@click.option("--json", "as_json", is_flag=True, help="Print the export report as JSON.")
def export_command(model: str, weights: Path | None, output: Path, int8: bool, calib_dir: Path | None,
                   calib_degrade: str | None, calib_gt: Path | None, calib_images: int, calib_crop: int, holdout: int,
                   method: str | None, max_drop: float | None, trt_version: str, route_agnostic: bool,
                   bias_correction: bool, equalize: bool, weight_bits: str, adaround: bool, unsigned_activations: bool,
                   as_json: bool) -> None:
    """Export MODEL to a bundle: one ONNX file per stage plus manifest.json.

    Every stage is checked against PyTorch after export (max abs error and PSNR
    between the two outputs are printed and recorded in the manifest). With --int8 the
    bundle also gets INT8 stages calibrated on --calib; eval and restore then use them
    unless given --precision fp32.
    """
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    from edgerestore.runtime.errors import EdgeRestoreError

    from .bundle_writer import export_bundle, require_weights  # PyTorch: not for --help

    int8_options = None
    if int8:
        from edgerestore.calibration.int8 import DEFAULT_METHOD, Int8Options
        from edgerestore.calibration.sources import FolderSplit

        if calib_dir is None:
            raise EdgeRestoreError("--int8 needs calibration images: --calib DIR")
        split = FolderSplit(calib_dir, calib_degrade, calib_gt, calib_images, holdout, calib_crop)
        int8_options = Int8Options(split, method=DEFAULT_METHOD if method is None else method, max_drop=max_drop,
                                   trt_version=trt_version, route_agnostic=route_agnostic,
                                   bias_correction=bias_correction, equalize=equalize,
                                   weight_bits=int(weight_bits), adaround=adaround,
                                   unsigned_activations=unsigned_activations)
    elif any(v is not None for v in (calib_dir, calib_degrade, calib_gt, method, max_drop)) or route_agnostic:
        raise EdgeRestoreError("--calib, --calib-degrade, --calib-gt, --method, --max-drop and --route-agnostic "
                               "only apply with --int8")
    require_weights(model, weights)
    console = Console(stderr=True)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    # Off a terminal (CI logs, pipes) a live bar only adds blank lines around the report.
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("exporting", total=None)

        phase = {"total": None}

        def progress(message: str, done: int | None = None, total: int | None = None) -> None:
            # A new phase (its first step, or another total) restarts the bar, so the ETA is the phase's.
            if not done or total != phase["total"]:
                bar.reset(task, description=message, completed=done or 0, total=total or None)
                phase["total"] = total
            else:
                bar.update(task, description=message, completed=done)

        report = export_bundle(model, output, weights=weights, progress=progress, int8=int8_options)
    if as_json:
        click.echo(json.dumps({"bundle": str(report.bundle), "model": report.model, "seconds": report.seconds,
                               "parity": [p.to_json() for p in report.parity],
                               "int8": None if report.int8 is None else report.int8.to_json()}, indent=2))
        return
    for p in report.parity:
        click.echo(f"parity {p.stage}: max abs error {p.max_abs_error:.2e}, PSNR {p.psnr_db:.1f} dB (onnxruntime vs torch)")
    if report.int8 is not None:
        from edgerestore.calibration.report import render

        click.echo(render(report.int8))
    click.echo(f"wrote bundle {report.bundle} ({report.seconds:.1f} s)")
