"""Which graph a stage's engine is built from, and with which network and builder flags.

Per TensorRT version (REFERENCE.md section 4: 10.1 deprecated implicit INT8, 11 removed it
and weak typing; JetPack 5.1 ships 8.5, JetPack 6 ships 10.3):

==========  =======================================  =========================================
precision   TensorRT 8.x / 9.x                       TensorRT >= 10
==========  =======================================  =========================================
fp32        FP32 graph                               FP32 graph
fp16        FP32 graph + BuilderFlag.FP16            same on 10.x; on >= 11 (strong typing
            (or the bundle's FP16 graph, typed)      only) the bundle's FP16 graph, typed
int8        implicit: FP32 graph + BuilderFlag.INT8  explicit: the Q/DQ graph, STRONGLY_TYPED
            + the stage's calibration cache          (10.x with DLA: implicit, as on 8.x)
==========  =======================================  =========================================

DLA (``dla_core``) runs FP16/INT8 only, so FP32 is refused; implicit INT8 on DLA adds FP16
for the tensors the cache leaves unscaled, and GPU_FALLBACK lets layers DLA cannot run
go to the GPU. A strongly typed network takes its precisions from the graph: it never gets
the FP16/INT8 flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..bundle import Bundle
from ..errors import EdgeRestoreError
from .calibrator import cache_path

Version = tuple[int, int, int]


@dataclass(frozen=True)
class StagePlan:
    stage: str
    precision: str  # engine precision
    source: str  # precision key of the stage file to parse ("fp32", "fp16", "int8")
    strongly_typed: bool
    flags: tuple[str, ...]  # tensorrt.BuilderFlag member names
    quantization: str | None  # "explicit" | "implicit" | None
    calibration_cache: Path | None
    dla_core: int | None


def parse_version(text: str) -> Version:
    """``tensorrt.__version__`` ("10.3.0.30", "8.5.2.2") -> (major, minor, patch)."""
    parts = text.split(".")
    try:
        numbers = [int(p) for p in parts[:3]]
    except ValueError:
        raise EdgeRestoreError(f"cannot read the TensorRT version '{text}'") from None
    return tuple(numbers + [0] * (3 - len(numbers)))


def plan_stage(bundle: Bundle, stage: str, precision: str, version: Version,
               dla_core: int | None = None) -> StagePlan:
    files = bundle.stages[stage].files
    major = version[0]
    dla_flags = ("GPU_FALLBACK",) if dla_core is not None else ()
    if dla_core is not None and precision == "fp32":
        raise EdgeRestoreError("DLA runs FP16 and INT8 only: pass --precision fp16 or int8 with --dla")

    def plan(source, strongly_typed, flags=(), quantization=None, cache=None):
        if source not in files:
            raise EdgeRestoreError(f"bundle '{bundle.root}' has no {source} graph of stage '{stage}', which a "
                                   f"{precision} engine needs on TensorRT {'.'.join(map(str, version))}"
                                   + (": export it with --int8" if source == "int8" else ""))
        return StagePlan(stage, precision, source, strongly_typed, (*flags, *dla_flags), quantization, cache,
                         dla_core)

    if precision == "fp32":
        return plan("fp32", False)
    if precision == "fp16":
        if "fp16" in files:
            return plan("fp16", True)
        if major >= 11:
            raise EdgeRestoreError(f"TensorRT {major} builds FP16 only from an FP16 graph (strong typing), and bundle "
                                   f"'{bundle.root}' has no fp16 graph of stage '{stage}'")
        return plan("fp32", False, ("FP16",))
    if precision == "int8":
        if major < 10 or (major == 10 and dla_core is not None):
            flags = ("INT8", "FP16") if dla_core is not None else ("INT8",)
            return plan("fp32", False, flags, "implicit", cache_path(bundle, stage))
        return plan("int8", True, (), "explicit")
    raise EdgeRestoreError(f"unknown precision '{precision}'")
