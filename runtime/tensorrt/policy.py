"""Which graph a stage's engine is built from, and with which network and builder flags.

Per TensorRT version (REFERENCE.md section 4: 10.1 deprecated implicit INT8, 11 removed it
and weak typing). The Jetson releases: JetPack 5.1 ships TensorRT 8.5.2, JetPack 6.0 8.6.2,
JetPack 6.1/6.2 10.3; TensorRT 11 does not support JetPack.

==========  ================================  =================================  ==============================
precision   TensorRT 8.x / 9.x                TensorRT 10.x                      TensorRT >= 11 (strong typing)
==========  ================================  =================================  ==============================
fp32        FP32 graph                        FP32 graph                         FP32 graph
fp16        FP32 graph + BuilderFlag.FP16     the bundle's FP16 graph, typed;    the bundle's FP16 graph, else
                                              else FP32 graph + BuilderFlag.FP16 the FP32 graph cast to FP16 at
                                                                                 build time (I/O stay float32)
int8        explicit: the Q/DQ graph +        explicit: the Q/DQ graph, typed    explicit: the Q/DQ graph
            BuilderFlag.INT8 (weak typing)
int8, DLA   implicit: FP32 graph + INT8 +     implicit, as on 8.x                explicit: the Q/DQ graph
            FP16 + the calibration cache
==========  ================================  =================================  ==============================

Explicit Q/DQ everywhere but DLA below 11: the engine computes the graph ``export --int8``
validated, with its learned rounding and corrected biases (calibration/). Implicit INT8 reads
the FP32 graph and takes only the cache's scales, so DLA engines go without both; the export
report says so.

"Typed" is the STRONGLY_TYPED network flag, which TensorRT 8.x does not have (it appeared
with 9.x, whose releases never reached Jetson): below 10 every network is weakly typed and
created with EXPLICIT_BATCH instead (:func:`.build.network_flags`). A strongly typed network
takes its precisions from the graph: it never gets the FP16/INT8 flags.

DLA (``dla_core``) runs FP16/INT8 only, so FP32 is refused; implicit INT8 on DLA adds FP16
for the tensors the cache leaves unscaled, and GPU_FALLBACK lets layers DLA cannot run
go to the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..bundle import Bundle
from ..errors import EdgeRestoreError
from .calibrator import cache_path

Version = tuple[int, int, int]

# Majors: the first that builds strongly typed networks here, and the first without weak typing.
STRONG_TYPING = 10
WEAK_TYPING_REMOVED = 11


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
    cast: str | None = None  # "fp16": the build casts the source graph to FP16 before parsing (TensorRT >= 11)


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
        if major < STRONG_TYPING:  # no STRONGLY_TYPED flag: the FP16 graph would gain nothing over the builder flag
            return plan("fp32", False, ("FP16",))
        if "fp16" in files:
            return plan("fp16", True)
        if major >= WEAK_TYPING_REMOVED:  # no FP16 builder flag any more: the graph itself must be FP16
            return replace(plan("fp32", True), cast="fp16")
        return plan("fp32", False, ("FP16",))
    if precision == "int8":
        if dla_core is not None and major < WEAK_TYPING_REMOVED:
            return plan("fp32", False, ("INT8", "FP16"), "implicit", cache_path(bundle, stage))
        if major < STRONG_TYPING:  # a weakly typed Q/DQ network: 8.x wants the INT8 flag for it
            return plan("int8", False, ("INT8",), "explicit")
        return plan("int8", True, (), "explicit")
    raise EdgeRestoreError(f"unknown precision '{precision}'")
