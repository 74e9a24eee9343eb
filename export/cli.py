"""``edgerestore export MODEL [--weights W] -o BUNDLE``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .bundle_writer import export_bundle, require_weights


@click.command("export")
@click.argument("model")
@click.option("--weights", type=click.Path(path_type=Path), help="Checkpoint: a state_dict, a legacy pickled "
              "module (read without running its code) or an edgerestore checkpoint. Depth and channels are "
              "read from it. Default: the model's shipped checkpoint, if it has one.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Bundle directory to write (replaced atomically if it is an old bundle).")
@click.option("--json", "as_json", is_flag=True, help="Print the export report as JSON.")
def export_command(model: str, weights: Path | None, output: Path, as_json: bool) -> None:
    """Export MODEL to a bundle: one ONNX file per stage plus manifest.json.

    Every stage is checked against PyTorch after export (max abs error and PSNR
    between the two outputs are printed and recorded in the manifest).
    """
    from rich.console import Console

    require_weights(model, weights)
    console = Console(stderr=True)
    with console.status("exporting") as status:
        report = export_bundle(model, output, weights=weights, progress=lambda msg: status.update(msg))
    if as_json:
        click.echo(json.dumps({"bundle": str(report.bundle), "model": report.model, "seconds": report.seconds,
                               "parity": [p.to_json() for p in report.parity]}, indent=2))
        return
    for p in report.parity:
        click.echo(f"parity {p.stage}: max abs error {p.max_abs_error:.2e}, PSNR {p.psnr_db:.1f} dB (onnxruntime vs torch)")
    click.echo(f"wrote bundle {report.bundle} ({report.seconds:.1f} s)")
