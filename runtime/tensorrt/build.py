"""Build one TensorRT engine per stage: the thin layer over the TensorRT builder API.

Everything decided without TensorRT lives elsewhere and is tested without it: the check
(:mod:`.check`), which graph and flags (:mod:`.policy`), profile shapes (:mod:`.profiles`),
file layout and metadata (:mod:`.engines`), the calibration cache (:mod:`.calibrator`), the
FP16 cast for TensorRT >= 11 (:mod:`.fp16`). Here those decisions become calls of the
documented Python API (``init_libnvinfer_plugins``, ``Builder.create_network``,
``OnnxParser.parse``, ``IBuilderConfig.set_memory_pool_limit``/``set_flag``/``set_timing_cache``,
``create_optimization_profile().set_shape``, ``build_serialized_network``), valid from
TensorRT 8.5 on (8.x needs the EXPLICIT_BATCH network flag, which 10 ignores and 11 removed).
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from ..atomic import atomic_file
from ..bundle import Bundle
from ..errors import EdgeRestoreError
from . import cuda_driver
from .calibrator import load_cache, make_calibrator
from .check import ERROR, check_model, load_graph
from .engines import TIMING_CACHE, EngineInfo, Target, engine_dir, engine_path, write_info
from .fp16 import cast_to_fp16
from .signed import to_signed_int8
from .policy import STRONG_TYPING, StagePlan, Version, parse_version, plan_stage
from .profiles import graph_inputs, stage_profile

MIN_VERSION = (8, 5, 0)


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise EdgeRestoreError("TensorRT is not installed: building engines needs its Python package (JetPack ships "
                               "it; on x86-64 `pip install tensorrt`) and an NVIDIA GPU") from None
    return tensorrt


@lru_cache(maxsize=None)
def tensorrt_logger(trt: Any) -> Any:
    """The process's one TensorRT logger, with TensorRT's own plugins registered under it.

    The ONNX parser imports some ops as plugins (InstanceNormalization on 8.x as
    ``InstanceNormalization_TRT``, RoiAlign as ``ROIAlign_TRT``: :data:`.ops.PLUGIN_OPS`):
    their creators must be in the plugin registry before parsing, and an engine holding such
    a layer needs them again before it deserializes (another process, the runtime). The
    plugin library keeps the logger it was registered with, so the logger lives as long as
    the process: one per ``tensorrt`` module, cached here, shared by builder and runtime
    (TensorRT itself uses the first logger it is given).
    """
    logger = trt.Logger(trt.Logger.WARNING)
    if not trt.init_libnvinfer_plugins(logger, ""):
        raise EdgeRestoreError("TensorRT could not register its plugins (init_libnvinfer_plugins failed): check that "
                               "libnvinfer_plugin of the same TensorRT version is installed")
    return logger


def current_target(trt: Any) -> Target:
    name, capability = cuda_driver.device_identity(0)
    return Target(trt.__version__, name, capability)


def build_engines(bundle: Bundle, precision: str, dla_core: int | None = None, max_batch: int = 16,
                  workspace_mb: int = 1024, tile: int | None = None,
                  progress: Callable[[str], None] = lambda _: None) -> list[Path]:
    """Build every stage of ``bundle``; returns the engine paths (each with its json beside)."""
    trt = import_tensorrt()
    version = parse_version(trt.__version__)
    if version < MIN_VERSION:
        raise EdgeRestoreError(f"TensorRT {trt.__version__} is older than 8.5, the oldest release edgerestore builds for")
    plans = [plan_stage(bundle, stage, precision, version, dla_core) for stage in bundle.stages]
    pin = tile if tile is not None else bundle.tiling.get("tile")
    plans, graphs = checked_graphs(bundle, plans, pin, dla_core is not None, version)
    target = current_target(trt)
    logger = tensorrt_logger(trt)  # registers the plugins before anything is parsed
    builder = trt.Builder(logger)
    if dla_core is not None and not 0 <= dla_core < builder.num_DLA_cores:
        raise EdgeRestoreError(f"--dla {dla_core}: this device has {builder.num_DLA_cores} DLA cores")
    if dla_core is not None and max_batch > builder.max_DLA_batch_size:
        raise EdgeRestoreError(f"--max-batch {max_batch} exceeds what DLA runs ({builder.max_DLA_batch_size})")
    folder = engine_dir(bundle.root, target)
    folder.mkdir(parents=True, exist_ok=True)
    cache_file = folder / TIMING_CACHE
    timing = _TimingCache(cache_file)
    built = []
    for plan in plans:
        progress(f"building {plan.stage} ({plan.precision}{', DLA core %d' % dla_core if dla_core is not None else ''}"
                 f", {target.describe()})")
        source = bundle.stage_path(plan.stage, plan.source)
        profile = stage_profile(plan.stage, graph_inputs(source), pin, max_batch, fixed_batch=dla_core is not None)
        serialized = _build_one(trt, builder, logger, bundle, plan, source, graphs[plan.stage], profile, version,
                                workspace_mb, timing)
        path = engine_path(bundle.root, target, plan.stage, plan.precision, plan.dla_core)
        with atomic_file(path) as tmp:
            tmp.write_bytes(bytes(serialized))
        write_info(path, EngineInfo(
            plan.stage, plan.precision, plan.dla_core, target.tensorrt, target.gpu, target.compute_capability,
            plan.quantization, {"file": bundle.stages[plan.stage].files[plan.source],
                                "sha256": bundle.stages[plan.stage].sha256.get(plan.source, ""),
                                **({"cast": plan.cast} if plan.cast else {})},
            {name: shapes.to_json() for name, shapes in profile.items()}))
        timing.save()  # after every stage: an interrupted build keeps what it measured
        built.append(path)
    return built


def checked_graphs(bundle: Bundle, plans: list[StagePlan], pin: int | None, dla: bool,
                   version: Version) -> tuple[list[StagePlan], dict]:
    """The plans and, per stage, the graph each builds from (cast to FP16 where the plan says
    so; a Q/DQ graph with unsigned activations made signed, :mod:`.signed`, its plan then
    saying ``cast="signed"``), after the TensorRT check of exactly those graphs; its first
    error stops the build."""
    graphs = {plan.stage: load_graph(bundle.stage_path(plan.stage, plan.source)) for plan in plans}
    graphs.update({plan.stage: cast_to_fp16(graphs[plan.stage], plan.stage) for plan in plans if plan.cast == "fp16"})
    final = []
    for plan in plans:
        if plan.source == "int8" and plan.quantization == "explicit":
            graphs[plan.stage], changed = to_signed_int8(graphs[plan.stage])
            plan = replace(plan, cast="signed") if changed else plan
        final.append(plan)
    errors = [f for plan in final for f in check_model(graphs[plan.stage], plan.stage, plan.cast or plan.source, pin,
                                                       dla, (version,))
              if f.severity == ERROR]
    if errors:
        raise EdgeRestoreError(f"bundle '{bundle.root}' fails the TensorRT check ({len(errors)} errors; "
                               f"`edgerestore check` lists them), first: {errors[0].line()}")
    return final, graphs


class _TimingCache:
    """One ITimingCache for all stages of a build, loaded from and saved to the bundle."""

    def __init__(self, path: Path):
        self.path = path
        self.blob = path.read_bytes() if path.is_file() else b""
        self.cache = None

    def attach(self, config: Any) -> None:
        if self.cache is None:
            self.cache = config.create_timing_cache(self.blob)
        config.set_timing_cache(self.cache, False)  # ignore_mismatch=False: never reuse another GPU's timings

    def save(self) -> None:
        if self.cache is not None:
            with atomic_file(self.path) as tmp:
                tmp.write_bytes(bytes(self.cache.serialize()))


def network_flags(trt: Any, version: Version, plan: StagePlan) -> int:
    """EXPLICIT_BATCH below 10 (required on 8.x; deprecated on 10, gone in 11); STRONGLY_TYPED
    only from 10 on (8.x has no such flag: the policy never plans a typed network there)."""
    if plan.strongly_typed and version[0] < STRONG_TYPING:
        raise EdgeRestoreError(f"TensorRT {'.'.join(map(str, version))} has no strongly typed networks "
                               f"(stage '{plan.stage}')")
    flags = 0
    if version[0] < STRONG_TYPING:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if plan.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags


def _build_one(trt: Any, builder: Any, logger: Any, bundle: Bundle, plan: StagePlan, source: Path, graph: Any,
               profile: dict, version: Version, workspace_mb: int, timing: _TimingCache) -> Any:
    network = builder.create_network(network_flags(trt, version, plan))
    parser = trt.OnnxParser(network, logger)
    # A cast graph exists in memory only; `path` still resolves external weights next to the stage file.
    parsed = parser.parse(graph.SerializeToString(), str(source)) if plan.cast else parser.parse_from_file(str(source))
    if not parsed:
        messages = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EdgeRestoreError(f"TensorRT's ONNX parser rejects stage '{plan.stage}' ({source.name}): "
                               + ("; ".join(messages) or "no message"))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    timing.attach(config)
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    optimization = builder.create_optimization_profile()
    for name, shapes in profile.items():
        optimization.set_shape(name, shapes.min, shapes.opt, shapes.max)
    config.add_optimization_profile(optimization)
    if plan.quantization == "implicit":
        cache = load_cache(bundle, plan.stage, version)
        config.int8_calibrator = make_calibrator(trt, cache)
        config.set_calibration_profile(optimization)  # dynamic batch: the calibrator needs a profile
    if plan.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgeRestoreError(f"TensorRT could not build stage '{plan.stage}' (its messages above say why)")
    return serialized


def _parser_error(error: Any) -> str:
    node = error.node() if hasattr(error, "node") else -1
    text = error.desc() if hasattr(error, "desc") else str(error)
    return f"{text} (node {node})" if node >= 0 else text
