"""The plan executor: interprets a bundle's plan over a batch of tiles or images.

Each tile carries named tensors (``image``, features, recurrent state, ...); a step
reads and writes them. Hooks see every stage call, so the profiler, the calibration
capture and the route map observe exactly what runs, through this one traversal.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np

from . import backends
from .bundle import Bundle
from .errors import EdgeRestoreError


class StageHook(Protocol):
    def __call__(self, stage: str, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray],
                 seconds: float) -> None: ...


class Executor:
    def __init__(self, bundle: Bundle, backend: str = "auto", precision: str | None = None):
        self.bundle = bundle
        self.backend = backends.resolve(backend)
        available = bundle.precisions
        self.precision = precision or available[0]
        if self.precision not in available:
            raise EdgeRestoreError(f"bundle '{bundle.root}' has no {self.precision} stages "
                                   f"(has: {', '.join(available) or 'none'})")
        self._load = backends.loader(self.backend)
        self._runners: dict[str, backends.StageRunner] = {}
        self.hooks: list[StageHook] = []

    def runner(self, stage: str) -> backends.StageRunner:
        if stage not in self._runners:
            self._runners[stage] = self._load(self.bundle.stage_path(stage, self.precision))
        return self._runners[stage]

    def load_all(self) -> None:
        """Load every stage now (errors surface before any image is read)."""
        for stage in self.bundle.stages:
            self.runner(stage)

    def run(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        env = dict(tensors)
        self._steps(self.bundle.plan, env)
        return env

    def _steps(self, steps: list[dict[str, Any]], env: dict[str, np.ndarray]) -> None:
        for step in steps:
            op = step.get("op")
            if op == "run":
                self._run_stage(step, env)
            else:
                raise EdgeRestoreError(f"bundle '{self.bundle.root}': plan step op '{op}' is not supported by this runtime")

    def _run_stage(self, step: dict[str, Any], env: dict[str, np.ndarray]) -> None:
        stage = step["stage"]
        feeds = {graph_name: env[var] for graph_name, var in step["in"].items()}
        start = time.perf_counter()
        outputs = self.runner(stage)(feeds)
        seconds = time.perf_counter() - start
        for hook in self.hooks:
            hook(stage, feeds, outputs, seconds)
        for graph_name, var in step["out"].items():
            env[var] = outputs[graph_name]
