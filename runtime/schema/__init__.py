"""The bundle schema: the one definition of ``manifest.json`` that every writer (export,
``export --int8``, the benchmarks) and every reader (:class:`..bundle.Bundle`) goes through.

* :mod:`.manifest`: the manifest and its plan as dataclasses; :meth:`Manifest.from_json`
  validates every field (types, missing and unknown fields at every level except inside the
  free-form ``model.config`` and ``provenance``, known ops, sha256 digests) and
  :meth:`Manifest.to_json` writes the same JSON back.
* :mod:`.plan`: stage names and graph ports of run steps, switch names and branch counts,
  and the flow of plan variables (nothing is read before it is written on every path).
* :mod:`.files`: the manifest against its bundle directory (paths inside it, files
  present, precisions, stage I/O names against the ONNX graphs); :func:`load_manifest` and
  :func:`write_manifest`, which validates before it writes.

Every problem is one line that names the field:
``bundle 'b': manifest.json: plan[3].branches[1].steps[0].stage: unknown stage 'foo' (...)``.
"""

from .fields import MANIFEST, ManifestError
from .files import check_files, file_sha256, load_manifest, read_json, write_manifest
from .manifest import (FORMAT, FORMAT_VERSION, KINDS, OPS, PRECISIONS, Branch, InitialVar, IOSpec, LoopStep,
                       Manifest, ModelInfo, ResizeStep, RunStep, StageSpec, Step, SwitchStep, TensorInfo, Tiling)

__all__ = ["FORMAT", "FORMAT_VERSION", "KINDS", "MANIFEST", "OPS", "PRECISIONS", "Branch", "IOSpec", "InitialVar",
           "LoopStep", "Manifest", "ManifestError", "ModelInfo", "ResizeStep", "RunStep", "StageSpec", "Step",
           "SwitchStep", "TensorInfo", "Tiling", "check_files", "file_sha256", "load_manifest", "read_json",
           "write_manifest"]
