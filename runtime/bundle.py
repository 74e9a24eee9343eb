"""The bundle: a directory with ``manifest.json`` and one ONNX file per stage.

This module reads and validates bundles; everything downstream (backends, executor,
calibration, TensorRT build) reads a model only through a :class:`Bundle`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from .errors import EdgeRestoreError
from .schema import FORMAT, FORMAT_VERSION, MANIFEST, PRECISIONS, Manifest, StageSpec, file_sha256, load_manifest

# The schema's names that code reading bundles has always imported from here, too.
__all__ = ["Bundle", "walk_plan", "FORMAT", "FORMAT_VERSION", "MANIFEST", "PRECISIONS", "file_sha256"]


class Bundle:
    """A validated bundle. Construction validates the manifest completely and against the
    bundle's files (:mod:`.schema`); :meth:`stage_path` checks file hashes.

    ``spec`` is the typed manifest; ``manifest``, ``io``, ``tiling``, ``plan`` and ``initial``
    are its JSON form (what the executor and the rest of the runtime read)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.spec: Manifest = load_manifest(self.root)
        self.manifest: dict[str, Any] = self.spec.to_json()
        m = self.manifest
        self.name: str = self.spec.model.name
        self.io: dict[str, Any] = m["io"]
        self.tiling: dict[str, Any] = m["tiling"]
        self.plan: list[dict[str, Any]] = m["plan"]
        self.initial: dict[str, Any] = m["initial"]
        self.stages: dict[str, StageSpec] = self.spec.stages
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


def walk_plan(steps: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every step of a plan, depth first in plan order: a step, then the steps nested in it
    (loop ``body``, each branch's ``steps``). The one traversal of a plan's JSON form the
    executor's helpers and the calibration policy share."""
    for step in steps:
        yield step
        yield from walk_plan(step.get("body", []))
        for branch in step.get("branches", []):
            yield from walk_plan(branch.get("steps", []))

