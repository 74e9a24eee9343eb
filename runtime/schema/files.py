"""A manifest against its bundle directory, and the one way manifests are read and written."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..errors import EdgeRestoreError
from ..onnx_names import NotOnnx, graph_names
from .fields import MANIFEST, ManifestError, fail, join
from .manifest import Manifest, StageSpec


def check_files(manifest: Manifest, root: Path, origin: str | None = None) -> None:
    """Every path stays inside ``root`` and exists; ``precisions`` lists exactly the
    precisions of the stage files, each for every stage; every stage file is an ONNX graph
    with the manifest's input and output names (read without loading weights: :mod:`..onnx_names`)."""
    try:
        for name, spec in manifest.stages.items():
            path = join("stages", name)
            for precision, rel in spec.files.items():
                file = _inside(root, rel, join(path, "files", precision))
                _check_graph(spec, file, rel, spec.sha256.get(precision), path, precision)
            if spec.calibration_cache is not None:
                _inside(root, spec.calibration_cache, join(path, "calibration_cache"))
        if manifest.calibration is not None:
            _inside(root, manifest.calibration, "calibration")
        for precision in manifest.precisions:
            lacking = [name for name, spec in manifest.stages.items() if precision not in spec.files]
            if lacking:
                fail("precisions", f"lists {precision}, but stage '{lacking[0]}' has no {precision} file")
        unlisted = sorted({p for spec in manifest.stages.values() for p in spec.files} - set(manifest.precisions))
        if unlisted:
            fail("precisions", f"does not list {unlisted[0]}, which stage files exist for")
    except ManifestError as err:
        raise ManifestError(err.field, err.problem, origin or f"bundle '{root}'") from None


def _inside(root: Path, rel: str, path: str) -> Path:
    """Refuse paths that leave the bundle (absolute, ``..``, or symlinks out); the file must exist."""
    candidate = Path(rel)
    try:
        resolved = (root / candidate).resolve()
        outside = candidate.is_absolute() or ".." in candidate.parts or not resolved.is_relative_to(root.resolve())
        present = not outside and resolved.is_file()
    except (OSError, ValueError, RuntimeError) as err:  # NUL bytes, names too long, symlink loops
        fail(path, f"path {rel!r} is not usable ({err})")
    if outside:
        fail(path, f"path '{rel}' points outside the bundle")
    if not present:
        fail(path, f"file '{rel}' is missing")
    return resolved


def _check_graph(spec: StageSpec, file: Path, rel: str, digest: str | None, path: str, precision: str) -> None:
    try:
        names = graph_names(file)
    except (NotOnnx, OSError, ValueError) as err:
        # the checksum tells a damaged file from one that was never ONNX (read only on this path)
        if digest is not None and file_sha256(file) != digest:
            fail(join(path, "files", precision), f"stage file '{rel}' is corrupt (checksum differs from the "
                                                 "manifest); export the bundle again")
        fail(join(path, "files", precision), f"stage file '{rel}' is not a readable ONNX model ({err})")
    for key, graph in (("inputs", names.inputs), ("outputs", names.outputs)):
        for i, tensor in enumerate(getattr(spec, key)):
            if tensor.name not in graph:
                fail(join(path, key, i, "name"),
                     f"'{tensor.name}' is not an {key[:-1]} of '{rel}' (its {key}: {', '.join(graph) or 'none'})")
    listed = {t.name for t in spec.inputs}
    unlisted = [n for n in names.inputs if n not in listed and n not in names.initializers]
    if unlisted:
        fail(join(path, "inputs"), f"'{rel}' also takes the input '{unlisted[0]}', which the manifest does not list")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(root: Path) -> Any:
    """The parsed manifest.json of the bundle ``root``, not validated yet."""
    if not root.is_dir():
        raise EdgeRestoreError(f"bundle '{root}' not found (expected a directory with {MANIFEST})")
    try:
        return json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        raise EdgeRestoreError(f"'{root}' is not a bundle: no {MANIFEST}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EdgeRestoreError(f"bundle '{root}': {MANIFEST} is not valid JSON ({err})") from None


def load_manifest(root: Path) -> Manifest:
    """The manifest of the bundle ``root``, validated, and checked against the bundle's files."""
    manifest = Manifest.from_json(read_json(root), f"bundle '{root}'")
    check_files(manifest, root)
    return manifest


def write_manifest(root: Path, manifest: Manifest, origin: str | None = None) -> Manifest:
    """Validate ``manifest`` as a reader would (against the files already in ``root``), then
    write it; returns the validated copy. So an exporter bug cannot write a bundle the reader refuses."""
    origin = origin or f"bundle '{root}'"
    checked = Manifest.from_json(manifest.to_json(), origin)
    check_files(checked, root, origin)
    tmp = root / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(checked.to_json(), indent=2) + "\n")
    os.replace(tmp, root / MANIFEST)
    return checked
