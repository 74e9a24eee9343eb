"""The plan executor: interprets a bundle's plan over a batch of tiles or images.

Each tile (a row of the batch) carries named tensors (``image``, features, recurrent
state, ...). Steps:

* ``run``: call a stage on the rows that reach it (gathered when it is a subset,
  scattered back after).
* ``switch``: the routing policy turns the router's logits into one branch per row;
  each branch's steps run on its own rows only, so an empty branch (a bypass) costs
  nothing; a branch with ``"stop": true`` retires its rows from the rest of the plan.
  ``"one_hot": VAR`` also writes each row's chosen branch as a one-hot vector into VAR
  (a router that takes its previous decision as input).

Hooks see every stage call and every decision, so the profiler, the calibration
capture and the route map observe exactly what runs, through this one traversal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import backends
from .bundle import Bundle
from .errors import EdgeRestoreError

StageHook = Callable[[str, np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray], float], None]
DecisionHook = Callable[[str, np.ndarray, np.ndarray, np.ndarray], None]


@dataclass(frozen=True)
class RoutePolicy:
    """How logits become branches. A switch may name its ``cheap`` branch (a bypass):
    it is taken only where its probability is at least ``min_confidence``; elsewhere
    the most probable other branch. 0.5 on a two-way switch is the argmax; 1.0
    forces the expensive path. Switches without a cheap branch use the argmax.

    ``vote``: every row of one :meth:`Executor.run` (one image's tiles) takes the branch
    most of them chose, ties to the lower branch index -- one decision per image and
    switch (RL-Restore's official whole-image mode) instead of one per tile."""

    min_confidence: float = 0.5
    vote: bool = False

    def __post_init__(self):
        if not 0.0 <= self.min_confidence <= 1.0:
            raise EdgeRestoreError(f"--min-confidence must be within [0, 1], got {self.min_confidence}")

    def choose(self, step: dict[str, Any], probs: np.ndarray) -> np.ndarray:
        cheap = step.get("cheap")
        if cheap is None:
            return probs.argmax(1)
        others = probs.copy()
        others[:, cheap] = -1.0
        # 1.0 means never: a saturated softmax can round P(cheap) up to exactly 1.0.
        take_cheap = probs[:, cheap] >= self.min_confidence if self.min_confidence < 1.0 else False
        return np.where(take_cheap, cheap, others.argmax(1))

    def decide(self, step: dict[str, Any], probs: np.ndarray) -> np.ndarray:
        """One branch index per row."""
        choice = self.choose(step, probs)
        if self.vote:
            return np.full_like(choice, np.bincount(choice, minlength=probs.shape[1]).argmax())
        return choice


@dataclass
class Trace:
    """What one :meth:`Executor.run` did, per row."""

    macs: np.ndarray  # executed multiply-accumulates per row
    decisions: dict[str, np.ndarray] = field(default_factory=dict)  # switch -> branch per row (-1: not reached)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


class Executor:
    def __init__(self, bundle: Bundle, backend: str = "auto", precision: str | None = None,
                 policy: RoutePolicy | None = None):
        self.bundle = bundle
        self.backend = backends.resolve(backend)
        available = backends.precisions(self.backend, bundle)  # a device backend: what has engines
        self.precision = precision or (available[0] if available else "fp32")
        if self.precision not in available:
            raise EdgeRestoreError(f"bundle '{bundle.root}' has no {self.precision} stages "
                                   f"(has: {', '.join(available) or 'none'})")
        self.policy = policy or RoutePolicy()
        self._runners: dict[str, backends.StageRunner] = {}
        self.stage_hooks: list[StageHook] = []
        self.decision_hooks: list[DecisionHook] = []
        self.trace: Trace | None = None

    def runner(self, stage: str) -> backends.StageRunner:
        if stage not in self._runners:
            self._runners[stage] = backends.open_stage(self.backend, self.bundle, stage, self.precision)
        return self._runners[stage]

    def load_all(self) -> None:
        """Load every stage now (errors surface before any image is read)."""
        for stage in self.bundle.stages:
            self.runner(stage)

    def run(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(tensors.values())))
        # Copies: a branch updates its rows of a variable in place, the caller's arrays stay intact.
        env = {name: np.array(value) for name, value in tensors.items()}
        for name, spec in self.bundle.initial.items():
            env[name] = np.full((n, *spec["shape"]), spec.get("value", 0.0), np.float32)
        self._active = np.ones(n, bool)
        self.trace = Trace(np.zeros(n))
        self._steps(self.bundle.plan, env, np.arange(n))
        return env

    # -- steps ---------------------------------------------------------------------
    def _steps(self, steps: list[dict[str, Any]], env: dict[str, np.ndarray], rows: np.ndarray) -> None:
        for step in steps:
            rows = rows[self._active[rows]]
            if not len(rows):
                return
            op = step.get("op")
            if op == "run":
                self._run_stage(step, env, rows)
            elif op == "switch":
                self._switch(step, env, rows)
            else:
                raise EdgeRestoreError(f"bundle '{self.bundle.root}': plan step op '{op}' is not supported")

    def _run_stage(self, step: dict[str, Any], env: dict[str, np.ndarray], rows: np.ndarray) -> None:
        stage = step["stage"]
        everyone = len(rows) == len(self._active)
        feeds = {}
        for graph_name, var in step["in"].items():
            if var not in env:
                raise EdgeRestoreError(f"bundle '{self.bundle.root}': stage '{stage}' reads '{var}' before any step writes it")
            feeds[graph_name] = env[var] if everyone else env[var][rows]
        start = time.perf_counter()
        outputs = self.runner(stage)(feeds)
        seconds = time.perf_counter() - start
        self.trace.macs[rows] += self._macs_per_row(stage, feeds)
        for hook in self.stage_hooks:
            hook(stage, rows, feeds, outputs, seconds)
        for graph_name, var in step["out"].items():
            self._store(env, var, rows, outputs[graph_name], everyone)

    def _store(self, env: dict[str, np.ndarray], var: str, rows: np.ndarray, value: np.ndarray,
               everyone: bool) -> None:
        """Write ``value`` (one row per entry of ``rows``) into the plan variable ``var``."""
        if everyone:
            env[var] = value
            return
        if var not in env or env[var].shape[1:] != value.shape[1:]:
            env[var] = np.zeros((len(self._active), *value.shape[1:]), value.dtype)
        env[var][rows] = value

    def _switch(self, step: dict[str, Any], env: dict[str, np.ndarray], rows: np.ndarray) -> None:
        probs = softmax(env[step["logits"]][rows].astype(np.float64))
        branches = step["branches"]
        if probs.shape[1] != len(branches):
            raise EdgeRestoreError(f"bundle '{self.bundle.root}': switch '{step['name']}' has {len(branches)} "
                                   f"branches but its router gives {probs.shape[1]} logits")
        choice = self.policy.decide(step, probs)
        record = self.trace.decisions.setdefault(step["name"], np.full(len(self._active), -1))
        record[rows] = choice
        if "one_hot" in step:
            one_hot = np.eye(len(branches), dtype=np.float32)[choice]
            self._store(env, step["one_hot"], rows, one_hot, len(rows) == len(self._active))
        for hook in self.decision_hooks:
            hook(step["name"], rows, choice, probs)
        for index, branch in enumerate(branches):
            chosen = rows[choice == index]
            if not len(chosen):
                continue
            if branch.get("stop"):
                self._active[chosen] = False
            else:
                self._steps(branch["steps"], env, chosen)

    # -- compute accounting -------------------------------------------------------------
    def _macs_per_row(self, stage: str, feeds: dict[str, np.ndarray]) -> float:
        info = self.bundle.stages[stage]
        first = next(iter(feeds.values()))
        pixels = int(np.prod(first.shape[2:])) if first.ndim == 4 else 0
        return info.macs_per_call + info.macs_per_pixel * pixels

    def full_path_macs(self, item_shape: tuple[int, ...]) -> float:
        """MACs per row if every switch took its most expensive branch."""
        pixels = int(np.prod(item_shape[1:]))
        return _plan_macs(self.bundle, self.bundle.plan, pixels)


def switches(steps: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every switch step of a plan by name, through nested branches."""
    found = {}
    for step in steps:
        if step.get("op") == "switch":
            found[step["name"]] = step
            for branch in step["branches"]:
                found.update(switches(branch.get("steps", [])))
    return found


def _plan_macs(bundle: Bundle, steps: list[dict[str, Any]], pixels: int) -> float:
    total = 0.0
    for step in steps:
        if step.get("op") == "run":
            info = bundle.stages[step["stage"]]
            total += info.macs_per_call + info.macs_per_pixel * pixels
        elif step.get("op") == "switch":
            total += max(_plan_macs(bundle, b.get("steps", []), pixels) for b in step["branches"])
    return total
