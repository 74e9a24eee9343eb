"""``edgerestore restore --ray``: the command's side of :mod:`.distributed` (a progress bar,
the failed items, a summary line or ``--json``, the exit status)."""

from __future__ import annotations

import json

import click

from .errors import EdgeRestoreError
from .video import is_camera, is_pipeline

_SHOWN_FAILURES = 10  # failed items listed one a line; the rest are counted


def restore_on_ray(bundle, inputs: list[str], output, as_json: bool, **options) -> None:
    """Run the job; exits 1 when any item failed."""
    streams = [s for s in inputs if is_camera(s) or is_pipeline(s)]
    if streams:
        raise EdgeRestoreError(f"--ray restores image files, folders, file lists and video files; '{streams[0]}' is "
                               "a live stream (restore it without --ray)")
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .distributed import restore

    console = Console(stderr=True)
    columns = (TextColumn("restoring on Ray"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=as_json or not console.is_terminal) as bar:
        task = bar.add_task("restoring", total=None)
        report = restore(bundle, inputs, output, progress=lambda record: bar.advance(task),
                         on_start=lambda pending, skipped: bar.update(task, total=pending), **options)
    for line in report.warnings:
        console.print(f"warning: {line}", soft_wrap=True, markup=False, highlight=False)
    for source, error in list(report.failed.items())[:_SHOWN_FAILURES]:
        console.print(f"failed: {error}", soft_wrap=True, markup=False, highlight=False)
    if len(report.failed) > _SHOWN_FAILURES:
        console.print(f"failed: {len(report.failed) - _SHOWN_FAILURES} more (see {report.results})",
                      soft_wrap=True, markup=False, highlight=False)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    elif report.restored == 0 and not report.failed:
        what = (f"{report.items} image(s)" if not report.videos else
                f"{report.items} item(s) ({report.items - report.videos} image(s), {report.videos} video(s))")
        click.echo(f"nothing to restore: all {what} are done (results: {report.results})")
    else:
        noun = "item(s)" if report.videos else "image(s)"
        segments = f" and {report.segments} video segment(s)" if report.segments else ""
        line = (f"restored {report.restored} {noun}{segments} -> {report.output} on Ray ({report.actors} actor(s) x "
                f"{report.threads} thread(s), {report.seconds:.2f} s, {report.images_per_second:.2f} {noun[:-3]}s/s)")
        extras = [f"{report.skipped} done before"] if report.skipped else []
        extras += [f"{len(report.failed)} failed"] if report.failed else []
        extras += [f"PSNR {report.psnr:.2f} dB"] if report.psnr is not None else []
        click.echo(line + "".join(f"; {e}" for e in extras) + f"; results: {report.results}")
    if report.failed:
        click.get_current_context().exit(1)
