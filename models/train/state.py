"""Resumable training state (``OUTPUT.state``), saved and loaded without pickled code.

``torch.load(weights_only=False)`` would run whatever a state file's pickle says, and a
state file is as easy to swap as a checkpoint. Everything a trainer keeps is therefore
stored as tensors and plain Python values, which ``weights_only=True`` reads: the one
thing that is not, a numpy ``RandomState`` state (it holds a uint32 array), goes in as
an int64 tensor and comes back as the array.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgerestore.runtime.atomic import atomic_file
from edgerestore.runtime.errors import EdgeRestoreError


def pack_numpy_rng(rng: np.random.RandomState) -> tuple:
    name, key, position, has_gauss, cached = rng.get_state()
    return name, torch.from_numpy(key.astype(np.int64)), int(position), int(has_gauss), float(cached)


def unpack_numpy_rng(rng: np.random.RandomState, packed: tuple) -> None:
    name, key, position, has_gauss, cached = packed
    rng.set_state((name, key.numpy().astype(np.uint32), position, has_gauss, cached))


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, state dicts, plain values) atomically."""
    with atomic_file(path) as tmp:
        torch.save(_plain(state), tmp)


def _plain(value: Any) -> Any:
    """numpy scalars (a learning rate from ``np.cos`` in an optimizer's param groups, say)
    become the Python numbers they equal; a safe load refuses numpy's scalar type."""
    if isinstance(value, np.generic):
        return value.item()
    # Containers are rebuilt only where something changed: a module's state_dict carries
    # version ``_metadata`` that a copy would lose.
    if isinstance(value, dict):
        items = {k: _plain(v) for k, v in value.items()}
        return value if all(items[k] is v for k, v in value.items()) else type(value)(items)
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return value if all(a is b for a, b in zip(items, value)) else type(value)(items)
    return value


def load_state(path: Path) -> dict[str, Any]:
    """Read a state file with ``weights_only=True``; anything else is one user-facing error."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a damaged, foreign or pre-0.2 state file alike
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        # torch's refusal explains itself on the "Unsupported global" line, not the first one
        reason = next((line.split("WeightsUnpickler error: ")[-1] for line in lines if "Unsupported global" in line),
                      lines[0] if lines else type(err).__name__)
        raise EdgeRestoreError(f"cannot resume from '{path}' ({reason}); delete it to start over") from None
    if not isinstance(state, dict):
        raise EdgeRestoreError(f"cannot resume from '{path}' (not a training state); delete it to start over")
    return state
