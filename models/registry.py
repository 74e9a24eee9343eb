"""The model registry: ``create_model(name, weights=...)`` as in timm.

Each entry is an architecture class plus a default config. Weights from a foreign
checkpoint set the config (depth, channels, ...) themselves, so users never have to
restate what the file already says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgerestore.runtime.errors import EdgeRestoreError

from .base import RestorationModel
from .checkpoint import Checkpoint


@dataclass(frozen=True)
class ModelEntry:
    name: str
    cls: type[RestorationModel]
    description: str
    config: dict[str, Any] = field(default_factory=dict)
    # A checkpoint shipped inside the package, used when no --weights is given.
    default_weights: Path | None = None


_REGISTRY: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    _REGISTRY[entry.name] = entry
    return entry


def list_models() -> list[ModelEntry]:
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise EdgeRestoreError(f"unknown model '{name}'; available: {', '.join(sorted(_REGISTRY))}") from None


def create_model(name: str, weights: str | Path | None = None, **overrides: Any) -> RestorationModel:
    """Build a registered architecture, loading ``weights`` (or its shipped default)."""
    entry = get_entry(name)
    path = weights if weights is not None else entry.default_weights
    if path is None:
        model = entry.cls(**{**entry.config, **overrides})
        model.provenance = {"weights": None}
        return model.eval()
    checkpoint = entry.cls.read_checkpoint(path)
    model = _build_from_checkpoint(entry, checkpoint, overrides)
    model.provenance = {"weights": str(path), "weights_sha256": checkpoint.sha256, "checkpoint_kind": checkpoint.kind}
    return model.eval()


def _build_from_checkpoint(entry: ModelEntry, ckpt: Checkpoint, overrides: dict[str, Any]) -> RestorationModel:
    if ckpt.kind == "edgerestore":
        if ckpt.arch != entry.cls.arch:
            raise EdgeRestoreError(f"checkpoint is a '{ckpt.arch}' model, not '{entry.cls.arch}'")
        config, state_dict = dict(ckpt.config or {}), ckpt.state_dict
    else:
        config = {**entry.config, **entry.cls.config_from_state_dict(ckpt.state_dict)}
        state_dict = entry.cls.adapt_state_dict(ckpt.state_dict, ckpt.meta)
    model = entry.cls(**{**config, **overrides})
    missing, unexpected = _mismatch(model, state_dict)
    if missing or unexpected:
        raise EdgeRestoreError(
            f"checkpoint does not fit '{entry.name}' ({_summary(config)}): "
            f"missing {_few(missing)}, unexpected {_few(unexpected)}")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:  # shape mismatches
        first = str(err).strip().splitlines()[-1].strip()
        raise EdgeRestoreError(f"checkpoint does not fit '{entry.name}' ({_summary(config)}): {first}") from None
    return model


def _mismatch(model: RestorationModel, state_dict: dict[str, Any]) -> tuple[list[str], list[str]]:
    # BatchNorm's step counters are dropped on load (load_state_dict restores them).
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    given = set(state_dict)
    return sorted(expected - given), sorted(given - expected)


def _few(keys: list[str]) -> str:
    if not keys:
        return "none"
    return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")


def _summary(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items())
