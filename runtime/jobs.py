"""A batch job over many images that survives being stopped: what ``restore --ray`` runs.

The job is a list of items (source image -> output image, optionally a ground truth; videos
are split into segment items, see :mod:`.video_jobs`). Each
finished item is one JSON line in the job's results file (output, SHA-256 of the output
file, route statistics, GMAC, seconds, PSNR against the ground truth); a rerun of the same
job skips the items whose line says done, whose output is still there and which the same
bundle and settings restored from the same source. Outputs are written atomically (:mod:`.atomic`), so an item
is either done or absent; the temporary files of a worker killed mid-write are removed when
the job ends. The results file is appended to by one process (the job's driver) and read
back line by line: a line cut short by a crash is ignored, and its item is restored again.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import imageio, metrics
from .atomic import leftover_of
from .avio import DEFAULT_CODECS
from .errors import EdgeRestoreError
from .schema import file_sha256
from .session import Session
from .video import VIDEO_SUFFIXES

RESULTS_NAME = "edgerestore-results.jsonl"
LIST_SUFFIXES = (".txt", ".lst")  # a file list: one image path a line, relative to the list's folder


@dataclass(frozen=True)
class Item:
    source: str
    output: str
    gt: str = ""  # "" when no ground truth: columnar engines (Ray Data) keep one type per column
    segment: str = ""  # a video segment's bounds and encoder (JSON, see video_jobs.plan); "" for an image


def is_video(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _output_name(source: Path) -> str:
    """A video keeps its name where we write its container, else becomes .mkv (which holds any codec)."""
    if is_video(source) and source.suffix.lower() not in DEFAULT_CODECS:
        return f"{source.stem}.mkv"
    return source.name


def list_items(sources: list[str | os.PathLike[str]], output: str | os.PathLike[str],
               gt: str | os.PathLike[str] | None = None) -> list[Item]:
    """Items of image files, folders of images, file lists and video files, restored into the
    folder ``output`` under their own names (``gt``: a folder with the same names, for images)."""
    files: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            files.extend(imageio.list_images(source))
        elif source.suffix.lower() in LIST_SUFFIXES:
            files.extend(_read_list(source))
        else:
            files.append(source)
    names = [_output_name(f) for f in files]
    if len(set(names)) != len(names):
        raise EdgeRestoreError("two inputs have the same file name; restore them into separate directories")
    output = Path(output)
    if output.suffix.lower() in imageio.IMAGE_EXTENSIONS or (output.exists() and not output.is_dir()):
        raise EdgeRestoreError(f"a batch job writes into a directory, not the file '{output}'")
    if gt is not None and not Path(gt).is_dir():
        raise EdgeRestoreError(f"ground-truth directory '{gt}' does not exist")
    return [Item(str(f.resolve()), str((output / name).resolve()),
                 str(Path(gt, f.name).resolve()) if gt and not is_video(f) else "") for f, name in zip(files, names)]


def _read_list(path: Path) -> list[Path]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgeRestoreError(f"cannot read file list '{path}': {getattr(exc, 'strerror', None) or exc}") from None
    files = [path.parent / line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not files:
        raise EdgeRestoreError(f"file list '{path}' names no images or videos")
    return files


def fingerprint(bundle: str | os.PathLike[str], backend: str, precision: str | None, options: dict[str, Any]) -> str:
    """What decides an output's pixels: the bundle's manifest, backend, precision and the
    tiling and routing options (not threads or the memory budget, which only pace the work)."""
    try:
        manifest = Path(bundle, "manifest.json").read_bytes()
    except OSError as exc:
        raise EdgeRestoreError(f"cannot read bundle '{bundle}': {exc.strerror or exc}") from None
    key = json.dumps({"manifest": hashlib.sha256(manifest).hexdigest(), "backend": backend, "precision": precision,
                      **options}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class Results:
    """The job's results file: one JSON record per finished item, appended as they finish."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def finished(self, key: str) -> dict[str, dict]:
        """Output path -> record of the items done with settings ``key`` whose output exists."""
        done: dict[str, dict] = {}
        if not self.path.exists():
            return done
        with open(self.path, encoding="utf-8") as lines:
            for line in lines:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the last line of a driver that was killed while writing it
                if not isinstance(record, dict) or "output" not in record:
                    continue
                if record.get("status") == "ok" and record.get("fingerprint") == key:
                    done[record["output"]] = record
                else:
                    done.pop(record["output"], None)  # a later failure or other settings supersede
        return {out: r for out, r in done.items() if Path(out).is_file()}

    def append(self, records: list[dict]) -> None:
        """Write records durably: a line is on disk before its item counts as done."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as out:
            out.write("".join(json.dumps(r) + "\n" for r in records))
            out.flush()
            os.fsync(out.fileno())


def worker_name() -> str:
    """host:pid of the process restoring an item, plus the Ray node's id inside a Ray worker
    (several nodes may share a host: `ray start` twice on one machine)."""
    name = f"{socket.gethostname()}:{os.getpid()}"
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        name += f":node-{ray.get_runtime_context().get_node_id()[:12]}"
    return name


@contextmanager
def failures_recorded(record: dict[str, Any]) -> Iterator[None]:
    """Run an item's work: an exception becomes the record's failure (an EdgeRestoreError's one
    line, else the exception's type and message), not the job's; either way the record gets
    the seconds the work took."""
    start = time.perf_counter()
    try:
        yield
    except EdgeRestoreError as err:
        record.update(status="failed", error=str(err))
    except Exception as exc:  # noqa: BLE001 - one item's failure of any kind must not stop the job
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    record["seconds"] = time.perf_counter() - start


def restore_item(session: Session, item: Item, key: str) -> dict:
    """Restore one item and describe it; a bad item (unreadable, unwritable) is a failed
    record, not an exception, so the job goes on with the others."""
    record: dict[str, Any] = {"source": item.source, "output": item.output, "fingerprint": key,
                              "worker": worker_name()}
    with failures_recorded(record):
        image = imageio.read_image(item.source)
        result = session.run(image.pixels)
        if item.gt:  # before writing: an item whose score fails is not done
            record["psnr"] = _psnr(result.image, imageio.read_image(item.gt), item.gt)
        Path(item.output).parent.mkdir(parents=True, exist_ok=True)
        imageio.write_image(item.output, result.image, image.alpha, image.metadata)
        record.update(status="ok", sha256=file_sha256(Path(item.output)),
                      gmac=result.gmac, full_gmac=result.full_gmac,
                      bypass_share=result.cheap_share(session.bundle.plan),
                      branches={name: np.bincount(choice[choice >= 0]).tolist() for name, choice in
                                result.decisions.items()},
                      restore_seconds=result.seconds)
    return record


def _psnr(restored: np.ndarray, gt: imageio.Image, path: str) -> float:
    """PSNR of the restored pixels (before any lossy encoding) on 8 bits, as ``eval`` scores."""
    if gt.pixels.shape != restored.shape:
        raise EdgeRestoreError(f"ground truth '{path}' is {gt.pixels.shape}, the restored image {restored.shape}")
    eight = [a if a.dtype == np.uint8 else imageio.from_float(a.astype(np.float32) / 65535, 8)
             for a in (restored, gt.pixels)]
    return metrics.psnr(*eight)


def remove_partial_outputs(items: list[Item]) -> int:
    """Delete the temporary files (:func:`.atomic.leftover_of`) of the items' outputs that a
    killed worker left behind, one listing per output folder; returns how many."""
    removed = 0
    for folder, names in _by_folder(items).items():
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if leftover_of(entry.name) in names:
                entry.unlink(missing_ok=True)
                removed += 1
    return removed


def _by_folder(items: list[Item]) -> dict[Path, set[str]]:
    folders: dict[Path, set[str]] = {}
    for item in items:
        path = Path(item.output)
        folders.setdefault(path.parent, set()).add(path.name)
    return folders
