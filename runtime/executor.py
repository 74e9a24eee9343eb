"""The plan executor: interprets a bundle's plan over a batch of tiles or images.

Each tile (a row of the batch) carries named tensors (``image``, features, recurrent
state, ...). Steps:

* ``run``: call a stage on the rows that reach it (gathered when it is a subset,
  scattered back after).
* ``switch``: the routing policy turns the router's logits into one branch per row;
  each branch's steps run on its own rows only, so an empty branch (a bypass) costs
  nothing; a branch with ``"stop": true`` retires its rows from the rest of the plan.
  ``"one_hot": VAR`` also writes each row's chosen branch as a one-hot vector into VAR
  (a router that takes its previous decision as input). ``"blend": [VAR, ...]`` allows a
  soft decision: under a policy that blends K > 1 branches, each row runs its K most
  probable branches from the same input and VAR becomes the mix of their outputs, weighted
  by the router's probabilities renormalised over those K (such branches write nothing else).
* ``loop``: runs its ``body`` once per entry of ``values``, with the loop variable ``var``
  set to that entry (a coarse-to-fine pyramid: ``"values": [0.25, 0.5, 1.0]``).
* ``resize``: bilinear resize of the variable ``in`` into ``out`` (TF1 / ONNX "asymmetric"
  semantics, :mod:`.resize`), to ``scale`` times its own size (a number or the name of a
  loop variable) or to the size of the variable ``like`` divided by ``divisor``.

``initial`` entries with ``"like": VAR`` get VAR's spatial size (divided by ``divisor``)
as their trailing axes: a recurrent state at a fraction of the image's resolution.

Hooks see every stage call and every decision, so the profiler, the calibration
capture and the route map observe exactly what runs, through this one traversal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import backends
from .bundle import Bundle, walk_plan
from .errors import EdgeRestoreError
from .resize import resize_bilinear, scaled_size

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
    # Switches that declare "blend": mix the outputs of this many most probable branches.
    blend: int = 1

    def __post_init__(self):
        if not 0.0 <= self.min_confidence <= 1.0:
            raise EdgeRestoreError(f"--min-confidence must be within [0, 1], got {self.min_confidence}")
        if self.blend < 1:
            raise EdgeRestoreError(f"--blend must be at least 1 branch, got {self.blend}")

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

    def rank(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Blending: per row the ``blend`` most probable branches (ties to the lower index) and
        their weights, the probabilities renormalised over them. With ``vote`` every row takes
        the ranking and weights of the rows' mean probabilities (one mix per image)."""
        k = min(self.blend, probs.shape[1])
        if self.vote:
            probs = np.broadcast_to(probs.mean(0), probs.shape)
        ranked = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        weights = np.take_along_axis(probs, ranked, 1)
        return ranked, weights / weights.sum(1, keepdims=True)


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
            shape = [*spec["shape"], *_like_size(spec, lambda var, name=name: self._variable(env, var, name).shape[-2:])]
            env[name] = np.full((n, *shape), spec.get("value", 0.0), np.float32)
        self._active = np.ones(n, bool)
        self._loop_values: dict[str, Any] = {}
        self.trace = Trace(np.zeros(n))
        self._steps(self.bundle.plan, env, np.arange(n))
        return env

    def _variable(self, env: dict[str, np.ndarray], var: str, reader: str) -> np.ndarray:
        if var not in env:
            raise EdgeRestoreError(f"bundle '{self.bundle.root}': '{reader}' reads '{var}' before any step writes it")
        return env[var]

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
            elif op == "loop":
                self._loop(step, env, rows)
            elif op == "resize":
                self._resize(step, env, rows)
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
            self._store(env, var, rows, outputs[graph_name], everyone, f"stage '{stage}'")

    def _store(self, env: dict[str, np.ndarray], var: str, rows: np.ndarray, value: np.ndarray,
               everyone: bool, writer: str) -> None:
        """Write ``value`` (one row per entry of ``rows``) into the plan variable ``var``.

        A subset of rows may create a variable (a branch's own intermediate): the other rows
        get zeros, which nothing reads -- the bundle check (runtime/schema/plan.py) refuses a
        plan that reads a variable on a path where it was not written. A subset may not change
        an existing variable's shape: the other rows' values could not stay."""
        if everyone:
            env[var] = value
            return
        if var not in env:
            env[var] = np.zeros((len(self._active), *value.shape[1:]), value.dtype)
        elif env[var].shape[1:] != value.shape[1:]:
            raise EdgeRestoreError(f"bundle '{self.bundle.root}': {writer} writes '{var}' with shape "
                                   f"{tuple(value.shape[1:])} for some rows, but '{var}' has shape "
                                   f"{tuple(env[var].shape[1:])} for the others")
        env[var][rows] = value

    def _switch(self, step: dict[str, Any], env: dict[str, np.ndarray], rows: np.ndarray) -> None:
        probs = softmax(env[step["logits"]][rows].astype(np.float64))
        branches = step["branches"]
        if probs.shape[1] != len(branches):
            raise EdgeRestoreError(f"bundle '{self.bundle.root}': switch '{step['name']}' has {len(branches)} "
                                   f"branches but its router gives {probs.shape[1]} logits")
        blended = bool(step.get("blend")) and self.policy.blend > 1
        if blended:
            ranked, weights = self.policy.rank(probs)
            choice = ranked[:, 0]  # what traces, route maps and one-hot outputs record
        else:
            choice = self.policy.decide(step, probs)
        record = self.trace.decisions.setdefault(step["name"], np.full(len(self._active), -1))
        record[rows] = choice
        if "one_hot" in step:
            one_hot = np.eye(len(branches), dtype=np.float32)[choice]
            self._store(env, step["one_hot"], rows, one_hot, len(rows) == len(self._active),
                        f"switch '{step['name']}'")
        for hook in self.decision_hooks:
            hook(step["name"], rows, choice, probs)
        if blended:
            self._blend(step, env, rows, ranked, weights)
            return
        for index, branch in enumerate(branches):
            chosen = rows[choice == index]
            if not len(chosen):
                continue
            if branch.get("stop"):
                self._active[chosen] = False
            else:
                self._steps(branch["steps"], env, chosen)

    def _blend(self, step: dict[str, Any], env: dict[str, np.ndarray], rows: np.ndarray, ranked: np.ndarray,
               weights: np.ndarray) -> None:
        """Every branch among a row's top K runs on that row from the switch's input; the
        ``blend`` variables become the weighted sum of those branches' outputs."""
        _check_blendable(self.bundle, step)
        names = list(step["blend"])
        saved = {var: env[var] for var in names if var in env}
        mixed: dict[str, np.ndarray] = {}
        for index, branch in enumerate(step["branches"]):
            member = ranked == index
            taken = member.any(1)
            if not taken.any():
                continue
            for var, value in saved.items():  # each branch starts from the switch's input
                env[var] = value.copy()
            self._steps(branch["steps"], env, rows[taken])
            weight = (weights * member).sum(1)[taken].astype(np.float32)
            for var in names:
                out = self._variable(env, var, f"switch '{step['name']}'")[rows[taken]]
                if var not in mixed:
                    mixed[var] = np.zeros((len(rows), *out.shape[1:]), np.float32)
                mixed[var][taken] += weight.reshape(-1, *[1] * (out.ndim - 1)) * out
        for var, value in mixed.items():
            self._store(env, var, rows, value, len(rows) == len(self._active), f"switch '{step['name']}'")

    def _loop(self, step: dict[str, Any], env: dict[str, np.ndarray], rows: np.ndarray) -> None:
        var = step["var"]
        for value in step["values"]:
            self._loop_values[var] = value
            self._steps(step["body"], env, rows)
        self._loop_values.pop(var, None)

    def _resize(self, step: dict[str, Any], env: dict[str, np.ndarray], rows: np.ndarray) -> None:
        """Every row of a variable has one size, so the rows that reach a resize are all that
        matter; while some rows are retired, a resize may not change an existing variable's
        size (the retired rows' values could not stay: ``_store`` refuses it)."""
        source = self._variable(env, step["in"], "resize")
        everyone = len(rows) == len(self._active)
        size = resize_size(step, lambda var: self._variable(env, var, "resize").shape[-2:], self._loop_values,
                           self.bundle.root)
        value = resize_bilinear(source if everyone else source[rows], *size)
        self._store(env, step["out"], rows, value, everyone, f"the resize of '{step['in']}'")

    # -- compute accounting -------------------------------------------------------------
    def _macs_per_row(self, stage: str, feeds: dict[str, np.ndarray]) -> float:
        info = self.bundle.stages[stage]
        first = next(iter(feeds.values()))
        pixels = int(np.prod(first.shape[2:])) if first.ndim == 4 else 0
        return info.macs_per_call + info.macs_per_pixel * pixels

    def full_path_macs(self, item_shape: tuple[int, ...]) -> float:
        """MACs per row if every switch took its most expensive branch (``item_shape``: C, H, W
        of the plan's input). Resize steps and loops are followed, so a pyramid's coarse
        scales count at their own size."""
        sizes = {self.bundle.io.get("input", "image"): tuple(item_shape[1:])}
        for name, spec in self.bundle.initial.items():
            if spec.get("like") in sizes:
                sizes[name] = tuple(_like_size(spec, sizes.__getitem__))
        return _plan_macs(self.bundle, self.bundle.plan, sizes, {}, self.policy.blend)


def switches(steps: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every switch step of a plan by name, through nested branches and loop bodies.
    (A switch inside a loop records the decisions of its last iteration.)"""
    return {step["name"]: step for step in walk_plan(steps) if step.get("op") == "switch"}


def resize_size(step: dict[str, Any], size_of: Callable[[str], tuple[int, ...]], loop_values: dict[str, Any],
                root: Any = "") -> tuple[int, int]:
    """Target (height, width) of a ``resize`` step; ``size_of(var)`` gives a variable's (H, W)."""
    if "like" in step:
        return tuple(_like_size(step, size_of))
    scale = step.get("scale", 1.0)
    if isinstance(scale, str):
        if scale not in loop_values:
            raise EdgeRestoreError(f"bundle '{root}': resize scale '{scale}' is not a variable of an enclosing loop")
        scale = loop_values[scale]
    height, width = size_of(step["in"])
    return scaled_size(int(height), float(scale)), scaled_size(int(width), float(scale))


def _like_size(spec: dict[str, Any], size_of: Callable[[str], tuple[int, ...]]) -> list[int]:
    """The trailing (H, W) of an ``initial`` entry or resize step with ``"like": VAR``; none without it."""
    if "like" not in spec:
        return []
    divisor = int(spec.get("divisor", 1))
    return [max(1, int(v) // divisor) for v in size_of(spec["like"])]


def _plan_macs(bundle: Bundle, steps: list[dict[str, Any]], sizes: dict[str, tuple[int, ...]],
               loop_values: dict[str, Any], blend: int = 1) -> float:
    """Planned MACs of ``steps``; ``sizes`` tracks each variable's (H, W) through resizes.
    A stage's outputs are taken to keep the size of its first input (true of every stage
    exported here); stages with fixed-size inputs count per call anyway. A switch counts its
    most expensive branch (a blending one, its ``blend`` most expensive)."""
    total = 0.0
    for step in steps:
        op = step.get("op")
        if op == "run":
            info = bundle.stages[step["stage"]]
            first = next(iter(step["in"].values()), None)
            size = sizes.get(first, ())
            total += info.macs_per_call + info.macs_per_pixel * int(np.prod(size))
            for var in step["out"].values():
                if size:
                    sizes[var] = size
        elif op == "switch":
            costs = sorted((_plan_macs(bundle, b.get("steps", []), dict(sizes), loop_values, blend)
                            for b in step["branches"]), reverse=True)
            total += sum(costs[:blend if step.get("blend") else 1])
        elif op == "resize":
            try:
                sizes[step["out"]] = resize_size(step, sizes.__getitem__, loop_values, bundle.root)
            except KeyError:  # resizing a variable no earlier step gave a size: nothing to track
                pass
        elif op == "loop":
            for value in step["values"]:
                total += _plan_macs(bundle, step["body"], sizes, {**loop_values, step["var"]: value}, blend)
    return total


def _writes(steps: list[dict[str, Any]]) -> set[str]:
    """Every plan variable the steps write, through nested branches and loop bodies."""
    out: set[str] = set()
    for step in walk_plan(steps):
        written = step.get("out", {})  # a run's {port: var}, or a resize's var
        out.update(written.values() if isinstance(written, dict) else [written])
        out.update([step["one_hot"]] if "one_hot" in step else [])
    return out


def _stops(steps: list[dict[str, Any]]) -> bool:
    return any(branch.get("stop") for step in walk_plan(steps) for branch in step.get("branches", []))


def _check_blendable(bundle: Bundle, step: dict[str, Any]) -> None:
    """A blended branch may only compute the blended variables: anything else it wrote, or a
    row it retired, would depend on which of the K branches happened to run last."""
    blend = set(step["blend"])
    for branch in step["branches"]:
        extra = sorted(_writes(branch.get("steps", [])) - blend)
        if branch.get("stop") or _stops(branch.get("steps", [])) or extra:
            what = f"also writes '{extra[0]}'" if extra else "retires rows (stop)"
            raise EdgeRestoreError(f"bundle '{bundle.root}': switch '{step['name']}' blends "
                                   f"{', '.join(sorted(blend))} but its branch '{branch.get('name')}' {what}")
