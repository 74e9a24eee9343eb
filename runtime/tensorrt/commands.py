"""``edgerestore check BUNDLE`` and ``edgerestore build BUNDLE --tensorrt``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..bundle import Bundle
from ..errors import EdgeRestoreError
from .check import ERROR, NOTE, WARNING, check_bundle
from .releases import TRT_RELEASES, parse_trt_version

PRECISION_CHOICES = ("fp32", "fp16", "int8")


@click.command("check")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--dla", is_flag=True, help="Also require what DLA needs (static shapes).")
@click.option("--tile", type=click.IntRange(1), default=None,
              help="Tile size that pins dynamic H/W (default: the manifest's), as `build --tile` would.")
@click.option("--trt", "releases", multiple=True, metavar="VERSION",
              help=f"TensorRT release the per-version notes (plugin layers) are for: {', '.join(TRT_RELEASES)} or "
                   "MAJOR.MINOR.PATCH; repeatable; default all named releases. The operator table is 8.5's, the "
                   "floor of every release, whatever is chosen.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def check_command(bundle: Path, dla: bool, tile: int | None, releases: tuple[str, ...], as_json: bool):
    """Check that every stage graph of BUNDLE builds on TensorRT >= 8.5, without TensorRT.

    One line per finding (stage, precision, node, reason); exit status 1 when any is an
    error. Checks: ops and their restrictions (TensorRT's ONNX operator table), opset,
    static tile spatial dims (or dims the manifest's tile pins), symmetric INT8 Q/DQ with
    per-channel weight scales, no data-dependent shapes. Notes name the ops a TensorRT
    release imports as plugin layers.
    """
    versions = tuple(sorted({parse_trt_version(text) for text in releases})) or None
    loaded = Bundle(bundle)
    findings = check_bundle(loaded, dla=dla, tile=tile, **({"versions": versions} if versions else {}))
    errors = sum(f.severity == ERROR for f in findings)
    warnings = sum(f.severity == WARNING for f in findings)
    notes = sum(f.severity == NOTE for f in findings)
    files = sum(len(info.files) for info in loaded.stages.values())
    if as_json:
        click.echo(json.dumps({"bundle": str(bundle), "ok": not errors, "errors": errors, "warnings": warnings,
                               "notes": notes, "stage_files": files, "findings": [f.to_json() for f in findings]},
                              indent=2))
    else:
        for finding in findings:
            click.echo(finding.line())
        verdict = "fails" if errors else "passes"
        click.echo(f"{bundle}: {verdict} the TensorRT check ({files} stage files, {errors} errors, "
                   f"{warnings} warnings{f', {notes} notes' if notes else ''})", err=True)
    if errors:
        click.get_current_context().exit(1)


@click.command("build")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--tensorrt", "use_tensorrt", is_flag=True, help="Build TensorRT engines (the only builder so far).")
@click.option("--precision", type=click.Choice(PRECISION_CHOICES), default="fp16", show_default=True,
              help="int8: explicit Q/DQ on TensorRT >= 10, calibration cache on 8.x (and with --dla on 10.x).")
@click.option("--dla", "dla_core", type=click.IntRange(0), default=None, metavar="CORE",
              help="Build for this DLA core, falling back to the GPU for unsupported layers (fixed batch).")
@click.option("--max-batch", type=click.IntRange(1), default=16, show_default=True,
              help="Largest tile batch of the optimization profile (min 1, opt = max).")
@click.option("--workspace", type=click.IntRange(1), default=1024, show_default=True, metavar="MB",
              help="Builder workspace memory pool limit.")
@click.option("--tile", type=click.IntRange(1), default=None,
              help="Tile size the engines' spatial dims are pinned to (default: the manifest's).")
@click.option("--trtexec", "trtexec_release", metavar="VERSION", default=None,
              help=f"Instead of building, print the trtexec command of each stage for TensorRT VERSION "
                   f"({', '.join(TRT_RELEASES)} or MAJOR.MINOR.PATCH; 8.5 = JetPack 5.1, where edgerestore's Python "
                   "runtime does not run). Needs no TensorRT.")
def build_command(bundle: Path, use_tensorrt: bool, precision: str, dla_core: int | None, max_batch: int,
                  workspace: int, tile: int | None, trtexec_release: str | None):
    """Build one engine per stage of BUNDLE for this machine's TensorRT and GPU.

    Engines go to BUNDLE/engines/<tensorrt version>/<gpu>/<stage>.<precision>.engine, each
    with a json of what it was built for; a timing cache beside them speeds up later
    builds. Run it on the target device: engines only run on the TensorRT version and GPU
    they were built with. The bundle is checked first (as `edgerestore check`).
    """
    if trtexec_release is not None:
        if use_tensorrt:
            raise EdgeRestoreError("--trtexec prints commands instead of building: pass it without --tensorrt")
        from .trtexec import trtexec_commands

        for line in trtexec_commands(Bundle(bundle), precision, parse_trt_version(trtexec_release), dla_core,
                                     max_batch, workspace, tile):
            click.echo(line)
        return
    if not use_tensorrt:
        raise EdgeRestoreError("nothing to build: pass --tensorrt (TensorRT engines are the only build target), or "
                               "--trtexec VERSION for trtexec command lines")
    from .build import build_engines  # imports tensorrt lazily, with a clear error when it is absent

    built = build_engines(Bundle(bundle), precision=precision, dla_core=dla_core, max_batch=max_batch,
                          workspace_mb=workspace, tile=tile, progress=lambda line: click.echo(line, err=True))
    for path in built:
        click.echo(str(path))
