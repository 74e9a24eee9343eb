"""Engine files in a bundle, what they were built for, and finding the one this machine can run.

Layout (a serialized engine runs only on the TensorRT version and the GPU it was built with,
so both name the folder)::

    BUNDLE/engines/<tensorrt version>/<gpu name, sanitized>/
        <stage>.<variant>.engine     serialized engine
        <stage>.<variant>.json       EngineInfo: TensorRT version, GPU, compute capability,
                                     precision, DLA core, profile, source graph + sha256
        timing.cache                 builder timing cache, shared by all stages of the folder

``variant`` is the precision (``fp32``, ``fp16``, ``int8``), with ``-dla<core>`` appended for
DLA engines. The json is written after the engine, so an engine without one is an
interrupted build and is ignored.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_file
from ..bundle import Bundle
from ..errors import EdgeRestoreError

ENGINES = "engines"
TIMING_CACHE = "timing.cache"
FORMAT = "edgerestore.tensorrt-engine"


@dataclass(frozen=True)
class Target:
    """What an engine is built for and a machine runs: TensorRT version and GPU."""

    tensorrt: str  # tensorrt.__version__, e.g. "10.3.0.30"
    gpu: str  # the name the CUDA driver reports, e.g. "Orin"
    compute_capability: tuple[int, int]

    def describe(self) -> str:
        major, minor = self.compute_capability
        return f"TensorRT {self.tensorrt} on '{self.gpu}' (sm_{major}{minor})"


@dataclass
class EngineInfo:
    stage: str
    precision: str
    dla_core: int | None
    tensorrt: str
    gpu: str
    compute_capability: tuple[int, int]
    quantization: str | None  # "explicit" (Q/DQ graph), "implicit" (calibration cache) or None
    source: dict[str, str]  # {"file": stage graph built from, "sha256": its checksum}
    profile: dict[str, dict[str, list[int]]]  # input -> {"min": [...], "opt": [...], "max": [...]}
    built_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @property
    def target(self) -> Target:
        return Target(self.tensorrt, self.gpu, tuple(self.compute_capability))

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self), "compute_capability": list(self.compute_capability)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "EngineInfo":
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        fields["compute_capability"] = tuple(fields.get("compute_capability", ()))
        return cls(**fields)


def sanitize(name: str) -> str:
    """A folder name from a GPU name or version: ``NVIDIA GeForce RTX 4090`` -> ``NVIDIA-GeForce-RTX-4090``."""
    cleaned = re.sub(r"[^A-Za-z0-9._]+", "-", name).strip("-.")
    if not cleaned:
        raise EdgeRestoreError(f"cannot make a folder name from {name!r}")
    return cleaned


def variant(precision: str, dla_core: int | None = None) -> str:
    return precision if dla_core is None else f"{precision}-dla{dla_core}"


def engine_dir(root: Path, target: Target) -> Path:
    return Path(root) / ENGINES / sanitize(target.tensorrt) / sanitize(target.gpu)


def engine_path(root: Path, target: Target, stage: str, precision: str, dla_core: int | None = None) -> Path:
    return engine_dir(root, target) / f"{stage}.{variant(precision, dla_core)}.engine"


def info_path(engine: Path) -> Path:
    return engine.with_suffix(".json")


def write_info(engine: Path, info: EngineInfo) -> Path:
    path = info_path(engine)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(info.to_json(), indent=2) + "\n")
    return path


def read_info(path: Path) -> EngineInfo:
    try:
        data = json.loads(Path(path).read_text())
        if data.get("format") != FORMAT:
            raise ValueError("not an edgerestore engine description")
        return EngineInfo.from_json(data)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise EdgeRestoreError(f"engine description '{path}' is unreadable ({err}); rebuild the engines") from None


def mismatch(info: EngineInfo, running: Target) -> str | None:
    """Why an engine cannot run here, naming both sides; None when it can."""
    if info.tensorrt != running.tensorrt or info.gpu != running.gpu \
            or tuple(info.compute_capability) != tuple(running.compute_capability):
        return f"it was built with {info.target.describe()}, this machine runs {running.describe()}"
    return None


def find_engine(bundle: Bundle, stage: str, precision: str, running: Target) -> tuple[Path, EngineInfo]:
    """The engine of ``stage`` at ``precision`` this machine can run: the GPU engine, else a
    DLA one (lowest core). Errors say what the bundle has instead and how to rebuild."""
    folder = engine_dir(bundle.root, running)
    rebuild = f"run `edgerestore build {bundle.root} --tensorrt --precision {precision}` on this machine"
    candidates = [folder / f"{stage}.{precision}.engine"]
    if folder.is_dir():
        candidates += sorted(p for p in folder.iterdir() if p.name.startswith(f"{stage}.{precision}-dla")
                             and p.suffix == ".engine")
    for engine in candidates:
        if engine.is_file() and info_path(engine).is_file():
            info = read_info(info_path(engine))
            why = mismatch(info, running)
            if why:
                raise EdgeRestoreError(f"TensorRT engine '{engine}' cannot run here: {why}; {rebuild}")
            _check_source(bundle, engine, info, rebuild)
            return engine, info
    elsewhere = [info for info in _all_infos(bundle.root) if info.stage == stage and info.precision == precision]
    if elsewhere:
        built = ", ".join(sorted({info.target.describe() for info in elsewhere}))
        raise EdgeRestoreError(f"bundle '{bundle.root}' has no {precision} TensorRT engine of stage '{stage}' for "
                               f"{running.describe()}; its engines were built with {built}, and an engine only runs "
                               f"on the TensorRT version and GPU it was built with: {rebuild}")
    raise EdgeRestoreError(f"bundle '{bundle.root}' has no {precision} TensorRT engine of stage '{stage}': {rebuild}")


def engine_precisions(bundle: Bundle, running: Target) -> list[str]:
    """Precisions (best first) with an engine for every stage in this machine's folder.
    Whether each engine really fits is :func:`find_engine`'s to say, with the reason."""
    folder = engine_dir(bundle.root, running)
    if not folder.is_dir():
        return []
    have: dict[str, set[str]] = {}
    for path in folder.glob("*.json"):
        info = read_info(path)
        if path.with_suffix(".engine").is_file():
            have.setdefault(info.precision, set()).add(info.stage)
    return [p for p in ("int8", "fp16", "fp32") if have.get(p, set()) >= set(bundle.stages)]


def describe_available(bundle: Bundle) -> str:
    """One phrase on what engines a bundle holds, for error messages."""
    targets = sorted({f"{info.precision} for {info.target.describe()}" for info in _all_infos(bundle.root)})
    return "engines: " + "; ".join(targets) if targets else "no TensorRT engines"


def _all_infos(root: Path) -> list[EngineInfo]:
    base = Path(root) / ENGINES
    return [read_info(p) for p in sorted(base.glob("*/*/*.json"))] if base.is_dir() else []


def _check_source(bundle: Bundle, engine: Path, info: EngineInfo, rebuild: str) -> None:
    """Refuse an engine built from another export of the stage (a stale engine)."""
    spec = bundle.stages.get(info.stage)
    current = {spec.files[p]: spec.sha256.get(p) for p in spec.files} if spec else {}
    built_from, sha = info.source.get("file"), info.source.get("sha256")
    if built_from not in current or (current[built_from] and sha != current[built_from]):
        raise EdgeRestoreError(f"TensorRT engine '{engine}' was built from another export of stage '{info.stage}' "
                               f"({built_from}); {rebuild}")
