"""`trtexec` command lines that build a bundle's engines where edgerestore itself does not run.

JetPack 5.1 ships TensorRT 8.5 with Python bindings for Python 3.8 only, and edgerestore
needs Python >= 3.10, so on JetPack 5 the engines come from NVIDIA's ``trtexec``
(``/usr/src/tensorrt/bin/trtexec``), fed with what the bundle holds: the stage graph the
:mod:`.policy` picks for that TensorRT version, the stage's calibration cache for implicit
INT8, and the optimization profile ``build`` would use (:mod:`.profiles`). ``edgerestore build
BUNDLE --trtexec 8.5`` prints one line per stage, on any machine with the bundle.

Flags, as trtexec 8.5 to 10 spell them: ``--onnx``, ``--minShapes``/``--optShapes``/``--maxShapes``
(``--shapes`` when the profile is static, DLA), ``--fp16``, ``--int8`` with ``--calib=<cache>``,
``--useDLACore`` with ``--allowGPUFallback``, ``--stronglyTyped`` (10.x, typed networks),
``--memPoolSize=workspace:<MiB>``, ``--saveEngine``. Engines built so run with TensorRT's own
runtime; edgerestore's TensorRT backend loads only the engines ``build --tensorrt`` writes.

An INT8 graph with unsigned activations (``export --int8``'s default) is not what TensorRT
parses: its signed form (:mod:`.signed`) is written to ``BUNDLE/tensorrt-signed/<stage>.int8.onnx``
and the command reads that file.
"""

from __future__ import annotations

import shlex

import onnx

from ..atomic import atomic_file
from ..bundle import Bundle
from ..errors import EdgeRestoreError
from .build import MIN_VERSION, checked_graphs
from .calibrator import load_cache
from .engines import variant
from .policy import Version, plan_stage
from .profiles import graph_inputs, stage_profile

# where `build --trtexec` writes the signed-INT8 form of a Q/DQ graph with unsigned activations (.signed)
SIGNED_FOLDER = "tensorrt-signed"


def _shapes(profile) -> list[str]:
    def spec(which):
        return ",".join(f"{name}:{'x'.join(map(str, getattr(shapes, which)))}" for name, shapes in profile.items())

    if all(shapes.min == shapes.max for shapes in profile.values()):
        return [f"--shapes={spec('max')}"]
    return [f"--minShapes={spec('min')}", f"--optShapes={spec('opt')}", f"--maxShapes={spec('max')}"]


def trtexec_commands(bundle: Bundle, precision: str, version: Version, dla_core: int | None = None,
                     max_batch: int = 16, workspace_mb: int = 1024, tile: int | None = None) -> list[str]:
    """One trtexec command line per stage, in the bundle's stage order; engines are written
    to the current directory as ``<stage>.<precision>[-dla<core>].engine``."""
    named = ".".join(map(str, version))
    if version < MIN_VERSION:
        raise EdgeRestoreError(f"TensorRT {named} is older than 8.5, the oldest release edgerestore builds for")
    pin = tile if tile is not None else bundle.tiling.get("tile")
    plans = [plan_stage(bundle, stage, precision, version, dla_core) for stage in bundle.stages]
    if any(plan.cast for plan in plans):
        raise EdgeRestoreError(f"TensorRT {named} builds FP16 only from an FP16 graph, which this bundle does not "
                               "hold: run `edgerestore build --tensorrt --precision fp16` on that machine (it casts "
                               "one)")
    plans, graphs = checked_graphs(bundle, plans, pin, dla_core is not None, version)
    lines = []
    for plan in plans:
        stage = plan.stage
        source = bundle.stage_path(stage, plan.source)
        if plan.cast == "signed":  # trtexec reads files: the signed form TensorRT parses goes beside the bundle's
            source = bundle.root / SIGNED_FOLDER / f"{stage}.int8.onnx"
            source.parent.mkdir(exist_ok=True)
            with atomic_file(source) as tmp:
                onnx.save(graphs[stage], str(tmp))
        profile = stage_profile(stage, graph_inputs(source), pin, max_batch, fixed_batch=dla_core is not None)
        args = ["trtexec", f"--onnx={source}", *_shapes(profile)]
        if plan.strongly_typed:
            args.append("--stronglyTyped")
        args += [f"--{flag.lower()}" for flag in plan.flags if flag in ("FP16", "INT8")]
        if plan.quantization == "implicit":
            args.append(f"--calib={load_cache(bundle, stage, version).path}")  # header checked against the version
        if dla_core is not None:
            args += [f"--useDLACore={dla_core}", "--allowGPUFallback"]
        engine = f"{stage}.{variant(precision, dla_core)}.engine"
        args += [f"--memPoolSize=workspace:{workspace_mb}", f"--saveEngine={engine}"]
        lines.append(shlex.join(args))
    return lines
