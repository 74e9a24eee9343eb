"""Write a bundle: stage ONNX files plus ``manifest.json``, atomically."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import onnx
import torch

from edgerestore.models import RestorationModel, create_model
from edgerestore.models.base import StageGraph
from edgerestore.runtime.atomic import atomic_directory
from edgerestore.runtime.errors import EdgeRestoreError
from edgerestore.runtime.schema import FORMAT, FORMAT_VERSION, MANIFEST, Manifest, file_sha256, write_manifest

from .activations import activation_bytes_per_pixel
from .parity import Parity, check_stage
from .to_onnx import OPSET, export_stage


# Float32 graph vs eager PyTorch on the same inputs: reordered sums differ by ~1e-6;
# anything near 1e-3 is a wrong graph, not rounding.
PARITY_TOLERANCE = 1e-3

if TYPE_CHECKING:
    from edgerestore.calibration.int8 import Int8Options, Int8Report


@dataclass
class ExportReport:
    bundle: Path
    model: str
    parity: list[Parity] = field(default_factory=list)
    seconds: float = 0.0
    int8: "Int8Report | None" = None


def package_version() -> str:
    try:
        return version("edgerestore")
    except PackageNotFoundError:
        return "0+unknown"


def is_bundle(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def export_bundle(name: str, output: str | Path, weights: str | Path | None = None,
                  progress: Callable[..., None] = lambda *_: None, int8: "Int8Options | None" = None) -> ExportReport:
    """Build ``name`` (with ``weights``), export every stage, check parity, write the bundle;
    with ``int8``, calibrate it and add the INT8 artifacts before the bundle appears."""
    start = time.perf_counter()
    progress("loading model")
    model = create_model(name, weights=weights)
    return write_bundle(model, name, Path(output), progress, start, int8=int8)


def write_bundle(model: RestorationModel, name: str, output: Path,
                 progress: Callable[..., None] = lambda *_: None, start: float | None = None,
                 int8: "Int8Options | None" = None) -> ExportReport:
    start = time.perf_counter() if start is None else start
    if int8 is not None:
        int8.check_tiling(name, model.default_tiling().to_json())
    split = model.stage_plan()
    report = ExportReport(bundle=output, model=name)
    stages: dict[str, Any] = {}
    with atomic_directory(output, replace_if=is_bundle) as tmp:
        for stage in split.stages:
            progress(f"exporting stage '{stage.name}'")
            file = f"{stage.name}.onnx"
            export_stage(stage, tmp / file)
            parity = check_stage(stage, tmp / file)
            report.parity.append(parity)
            if not parity.max_abs_error <= PARITY_TOLERANCE:
                raise EdgeRestoreError(f"export of stage '{stage.name}' does not reproduce PyTorch: max abs error "
                                       f"{parity.max_abs_error:.2e} > {PARITY_TOLERANCE:g}; no bundle written")
            stages[stage.name] = stage_entry(stage, file, file_sha256(tmp / file),
                                             activation_bytes_per_pixel(onnx.load(str(tmp / file))))
        manifest = build_manifest(model, name, stages, split.plan, split.initial, report.parity, split.output,
                                  origin=f"bundle '{output}'")
        write_manifest(tmp, manifest, origin=f"bundle '{output}'")
        if int8 is not None:
            from edgerestore.calibration.int8 import add_int8

            report.int8 = add_int8(tmp, int8, progress)[1]  # it writes the manifest with the INT8 files
    report.seconds = time.perf_counter() - start
    return report


def stage_entry(stage: StageGraph, file: str, sha256: str, activations: float) -> dict[str, Any]:
    """The manifest entry of an exported FP32 stage (``activations``: its peak activation
    bytes per pixel, export/activations.py)."""
    return {
        "files": {"fp32": file},
        "sha256": {"fp32": sha256},
        "inputs": [s.to_json() for s in stage.inputs],
        "outputs": [s.to_json() for s in stage.outputs],
        "macs_per_pixel": stage.macs_per_pixel,
        "macs_per_call": stage.macs_per_call,
        "activation_bytes_per_pixel": activations,
    }


def build_manifest(model: RestorationModel, name: str, stages: dict[str, Any], plan: list[dict[str, Any]],
                   initial: dict[str, Any], parity: list[Parity], output: str = "image",
                   origin: str = "export") -> Manifest:
    """The manifest of an FP32 export, validated (:mod:`edgerestore.runtime.schema`): the model's
    plan and stage specs are checked here, before a bundle a reader would refuse can be written."""
    low, high = model.value_range
    return Manifest.from_json({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {"name": name, "arch": model.arch, "config": model.config()},
        "io": {
            "input": "image", "output": output, "layout": "NCHW", "dtype": "float32",
            "channels": model.channels, "range": [low, high],
            "size_multiple": model.size_multiple, "scale": model.scale, "pad": model.pad_mode,
        },
        "receptive_field": model.receptive_field,
        "tiling": model.default_tiling().to_json(),
        "precisions": ["fp32"],
        "stages": stages,
        "plan": plan,
        "initial": initial,
        "provenance": {
            **getattr(model, "provenance", {"weights": None}),
            "edgerestore_version": package_version(),
            "torch_version": torch.__version__,
            "onnx_version": onnx.__version__,
            "opset": OPSET,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": platform.platform(),
            "parity": [p.to_json() for p in parity],
        },
    }, origin)


def require_weights(name: str, weights: str | Path | None) -> None:
    """Models without a shipped checkpoint cannot be exported untrained by accident."""
    from edgerestore.models import get_entry

    if weights is None and get_entry(name).default_weights is None:
        raise EdgeRestoreError(f"model '{name}' has no shipped checkpoint: pass --weights PATH")
