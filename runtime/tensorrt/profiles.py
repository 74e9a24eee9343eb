"""Optimization-profile shapes of a stage from its graph inputs and the bundle's tiling.

A profile gives every input a (min, opt, max) shape. The executor feeds tile batches: the
batch varies from 1 (a branch that got one tile) up to the restorer's batch, the tile's H/W
do not. So: batch min 1, opt = max = ``max_batch`` (full batches are the common call;
branch subsets vary too much to optimize for one size), spatial dims pinned to the tile.
DLA runs static shapes only: there the batch is fixed at ``max_batch`` too, and the runtime
pads smaller batches up to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from ..errors import EdgeRestoreError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Profile:
    min: Shape
    opt: Shape
    max: Shape

    def to_json(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def graph_inputs(path: Path) -> dict[str, list[int | None]]:
    """Input name -> dims (None where dynamic) of an ONNX file, initializers excluded."""
    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    return {value.name: [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
            for value in graph.input if value.name not in weights}


def stage_profile(stage: str, inputs: dict[str, list[int | None]], tile: int | None, max_batch: int,
                  fixed_batch: bool = False) -> dict[str, Profile]:
    if max_batch < 1:
        raise EdgeRestoreError(f"--max-batch must be at least 1, got {max_batch}")
    profile = {}
    for name, dims in inputs.items():
        low, high = [], []
        for axis, dim in enumerate(dims):
            if axis == 0 and dim is None:  # the tile batch
                low.append(max_batch if fixed_batch else 1)
                high.append(max_batch)
            elif dim is not None:
                low.append(dim)
                high.append(dim)
            elif len(dims) == 4 and axis in (2, 3):
                if not tile:
                    raise EdgeRestoreError(f"stage '{stage}' input '{name}' has dynamic H/W and the bundle has no tile "
                                           "size to pin them: pass --tile N")
                low.append(tile)
                high.append(tile)
            else:
                raise EdgeRestoreError(f"stage '{stage}' input '{name}' axis {axis} is dynamic; only the batch and a "
                                       "tile's H/W can be given a profile")
        profile[name] = Profile(tuple(low), tuple(high), tuple(high))
    return profile
