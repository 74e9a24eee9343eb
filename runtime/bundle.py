"""The bundle: a directory with ``manifest.json`` and one ONNX file per stage.

This module reads and validates bundles; everything downstream (backends, executor,
calibration, TensorRT build) reads a model only through a :class:`Bundle`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import EdgeRestoreError

MANIFEST = "manifest.json"
FORMAT = "edgerestore.bundle"
FORMAT_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class StageInfo:
    name: str
    files: dict[str, str]  # precision -> relative path
    sha256: dict[str, str]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    macs_per_pixel: float
    macs_per_call: float


class Bundle:
    """A validated bundle. Construction checks the manifest, the plan and that every
    stage file exists inside the bundle; :meth:`stage_path` checks file hashes."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifest = _read_manifest(self.root)
        m = self.manifest
        self.name: str = m["model"]["name"]
        self.io: dict[str, Any] = m["io"]
        self.tiling: dict[str, Any] = m["tiling"]
        self.plan: list[dict[str, Any]] = m["plan"]
        self.initial: dict[str, Any] = m.get("initial", {})
        self.stages = {name: _stage_info(self.root, name, s) for name, s in m["stages"].items()}
        missing = sorted(set(iter_plan_stages(self.plan)) - set(self.stages))
        if missing:
            raise EdgeRestoreError(f"bundle '{self.root}': plan uses stage '{missing[0]}' that the manifest does not define")
        self._verified: set[tuple[str, str]] = set()

    @property
    def channels(self) -> int:
        return int(self.io["channels"])

    @property
    def precisions(self) -> list[str]:
        """Precisions every stage has, best (fastest) first."""
        common = set(PRECISIONS)
        for stage in self.stages.values():
            common &= set(stage.files)
        return [p for p in reversed(PRECISIONS) if p in common]

    def stage_path(self, stage: str, precision: str) -> Path:
        info = self.stages[stage]
        if precision not in info.files:
            raise EdgeRestoreError(f"bundle '{self.root}' has no {precision} file for stage '{stage}' "
                                   f"(has: {', '.join(sorted(info.files))})")
        path = self.root / info.files[precision]
        if (stage, precision) not in self._verified:
            expected = info.sha256.get(precision)
            if expected and file_sha256(path) != expected:
                raise EdgeRestoreError(f"bundle '{self.root}': stage file '{info.files[precision]}' is corrupt "
                                       "(checksum differs from the manifest); export the bundle again")
            self._verified.add((stage, precision))
        return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def walk_plan(steps: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every step of a plan, depth first in plan order: a step, then the steps nested in it
    (loop ``body``, ``then``, each branch's ``steps``). The one traversal the executor's
    helpers, the calibration policy and the bundle checks share."""
    for step in steps:
        yield step
        for key in ("body", "then"):
            yield from walk_plan(step.get(key, []))
        for branch in step.get("branches", []):
            yield from walk_plan(branch.get("steps", []))


def iter_plan_stages(plan: list[dict[str, Any]]) -> Iterator[str]:
    """Every stage name a plan refers to, through nested steps."""
    return (step["stage"] for step in walk_plan(plan) if "stage" in step)


def _read_manifest(root: Path) -> dict[str, Any]:
    if not root.is_dir():
        raise EdgeRestoreError(f"bundle '{root}' not found (expected a directory with {MANIFEST})")
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise EdgeRestoreError(f"'{root}' is not a bundle: no {MANIFEST}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EdgeRestoreError(f"bundle '{root}': {MANIFEST} is not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise EdgeRestoreError(f"bundle '{root}': {MANIFEST} is not an edgerestore manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise EdgeRestoreError(f"bundle '{root}' has format version {manifest.get('format_version')}; "
                               f"this edgerestore reads version {FORMAT_VERSION}")
    for key in ("model", "io", "tiling", "stages", "plan"):
        if key not in manifest:
            raise EdgeRestoreError(f"bundle '{root}': {MANIFEST} lacks '{key}'")
    return manifest


def _stage_info(root: Path, name: str, spec: dict[str, Any]) -> StageInfo:
    files = spec.get("files")
    if not isinstance(files, dict) or not files:
        raise EdgeRestoreError(f"bundle '{root}': stage '{name}' lists no files")
    for precision, rel in files.items():
        _check_inside(root, name, rel)
    return StageInfo(name, dict(files), dict(spec.get("sha256", {})), spec.get("inputs", []),
                     spec.get("outputs", []), float(spec.get("macs_per_pixel", 0.0)),
                     float(spec.get("macs_per_call", 0.0)))


def _check_inside(root: Path, stage: str, rel: str) -> None:
    """Refuse manifests whose paths leave the bundle (absolute, ``..``, or symlinks out)."""
    candidate = Path(rel)
    resolved = (root / candidate).resolve()
    if candidate.is_absolute() or ".." in candidate.parts or not resolved.is_relative_to(root.resolve()):
        raise EdgeRestoreError(f"bundle '{root}': stage '{stage}' path '{rel}' points outside the bundle")
    if not resolved.is_file():
        raise EdgeRestoreError(f"bundle '{root}': stage '{stage}' file '{rel}' is missing")
