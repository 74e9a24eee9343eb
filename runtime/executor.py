"""The plan executor: one pass of a bundle's plan over a set of rows (tiles, or images).

Each row (a tile) carries named tensors, the plan variables (``image``, features,
recurrent state, ...). Steps:

* ``run``: call a stage on the rows that reach it (a subset after a switch).
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

A pass does not call backends itself: :meth:`PlanPass.steps` is a generator that *yields*
each stage call (:class:`StageCall`) and each decision that needs more rows than its own
(:class:`Decide`: a vote over a whole image whose tiles are split into several passes) and
is sent the answer. The scheduler (:mod:`.scheduler`) drives many passes at once, so the
tiles several passes route to one stage run together in fixed-size buckets, and an image's
vote waits for all of its tiles. Plan variables live in ``xp``, an array namespace with
numpy's API (numpy here; a device array library on a GPU); router logits are brought to
the host for the decisions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generator

import numpy as np

from .bundle import Bundle, walk_plan
from .errors import EdgeRestoreError
from .resize import resize_bilinear, scaled_size


@dataclass(frozen=True)
class RoutePolicy:
    """How logits become branches. A switch may name its ``cheap`` branch (a bypass):
    it is taken only where its probability is at least ``min_confidence``; elsewhere
    the most probable other branch. 0.5 on a two-way switch is the argmax; 1.0
    forces the expensive path. Switches without a cheap branch use the argmax.

    ``vote``: every row of one image takes the branch most of them chose, ties to the lower
    branch index -- one decision per image and switch (RL-Restore's official whole-image
    mode) instead of one per tile."""

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
        """Each row's own branch (no vote)."""
        cheap = step.get("cheap")
        if cheap is None:
            return probs.argmax(1)
        others = probs.copy()
        others[:, cheap] = -1.0
        # 1.0 means never: a saturated softmax can round P(cheap) up to exactly 1.0.
        take_cheap = probs[:, cheap] >= self.min_confidence if self.min_confidence < 1.0 else False
        return np.where(take_cheap, cheap, others.argmax(1))

    def vote_of(self, counts: np.ndarray) -> int:
        """The branch of an image from its rows' own choices counted per branch."""
        return int(np.argmax(counts))

    def rank(self, probs: np.ndarray, mean: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Blending: per row the ``blend`` most probable branches (ties to the lower index) and
        their weights, the probabilities renormalised over them. With ``mean`` (a vote: the
        image's mean probabilities) every row takes the ranking and weights of ``mean``."""
        k = min(self.blend, probs.shape[1])
        if mean is not None:
            probs = np.broadcast_to(mean, probs.shape)
        ranked = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        weights = np.take_along_axis(probs, ranked, 1)
        return ranked, weights / weights.sum(1, keepdims=True)


@dataclass
class StageCall:
    """A stage to run on ``rows`` of the pass (all rows when None): ``feeds`` maps each graph
    input to the plan variable holding it (all rows of the pass). Answered with a dict of
    graph outputs, one entry per row in ``rows``."""

    stage: str
    feeds: dict[str, Any]
    rows: np.ndarray | None
    count: int


@dataclass
class Decide:
    """A decision that needs the whole image: the router's probabilities of ``rows`` (host
    float64). Answered with the branch per row, or (ranked, weights) for a blend."""

    step: dict[str, Any]
    probs: np.ndarray
    rows: np.ndarray
    blend: bool


Request = StageCall | Decide


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


@dataclass
class PlanContext:
    """What every pass of one session shares."""

    bundle: Bundle
    policy: RoutePolicy = field(default_factory=RoutePolicy)
    xp: Any = np  # array namespace of the plan variables
    to_host: Callable[[Any], np.ndarray] = np.asarray
    from_host: Callable[[np.ndarray], Any] = np.asarray

    @property
    def image_wide(self) -> bool:
        """Decisions need every row of an image (a vote): passes ask the scheduler."""
        return self.policy.vote


class PlanPass:
    """One pass of the plan over ``tensors`` (each the same number of rows)."""

    def __init__(self, ctx: PlanContext, tensors: dict[str, Any],
                 on_decision: Callable[[str, np.ndarray, np.ndarray, np.ndarray], None] | None = None):
        self.ctx = ctx
        self.on_decision = on_decision  # (switch, rows, branch per row, probabilities) as each switch decides
        xp = ctx.xp
        self.rows = len(next(iter(tensors.values())))
        self.env: dict[str, Any] = dict(tensors)
        for name, spec in ctx.bundle.initial.items():
            shape = [*spec["shape"], *_like_size(spec, lambda var, name=name: self._variable(var, name).shape[-2:])]
            self.env[name] = xp.full((self.rows, *shape), spec.get("value", 0.0), dtype=xp.float32)
        self.active = np.ones(self.rows, bool)
        self.macs = np.zeros(self.rows)
        self.decisions: dict[str, np.ndarray] = {}  # switch -> branch per row, -1 where not reached
        self._loop_values: dict[str, Any] = {}

    def steps(self) -> Generator[Request, Any, None]:
        yield from self._steps(self.ctx.bundle.plan, np.arange(self.rows))

    def _variable(self, var: str, reader: str) -> Any:
        if var not in self.env:
            raise EdgeRestoreError(f"bundle '{self.ctx.bundle.root}': '{reader}' reads '{var}' before any step "
                                   "writes it")
        return self.env[var]

    # -- steps ---------------------------------------------------------------------
    def _steps(self, steps: list[dict[str, Any]], rows: np.ndarray):
        for step in steps:
            rows = rows[self.active[rows]]
            if not len(rows):
                return
            op = step.get("op")
            if op == "run":
                yield from self._run_stage(step, rows)
            elif op == "switch":
                yield from self._switch(step, rows)
            elif op == "loop":
                yield from self._loop(step, rows)
            elif op == "resize":
                self._resize(step, rows)
            else:
                raise EdgeRestoreError(f"bundle '{self.ctx.bundle.root}': plan step op '{op}' is not supported")

    def _run_stage(self, step: dict[str, Any], rows: np.ndarray):
        stage = step["stage"]
        everyone = len(rows) == self.rows
        feeds = {port: self._variable(var, f"stage '{stage}'") for port, var in step["in"].items()}
        outputs = yield StageCall(stage, feeds, None if everyone else rows, len(rows))
        self.macs[rows] += self._macs_per_row(stage, feeds)
        for port, var in step["out"].items():
            self._store(var, rows, outputs[port], everyone, f"stage '{stage}'")

    def _store(self, var: str, rows: np.ndarray, value: Any, everyone: bool, writer: str) -> None:
        """Write ``value`` (one row per entry of ``rows``) into the plan variable ``var``.

        A variable some rows write first is created for all rows (the others never read it:
        the schema refuses a plan that reads a variable on a path where nothing wrote it);
        an existing one keeps its shape: a subset of rows writing another shape into it would
        leave the other rows' values meaningless, so that is an error, not a silent refill."""
        xp = self.ctx.xp
        if everyone:
            self.env[var] = value
            return
        if var not in self.env:
            self.env[var] = xp.zeros((self.rows, *value.shape[1:]), dtype=value.dtype)
        elif self.env[var].shape[1:] != value.shape[1:]:
            raise EdgeRestoreError(f"bundle '{self.ctx.bundle.root}': {writer} writes '{var}' with shape "
                                   f"{tuple(value.shape[1:])} for {len(rows)} of {self.rows} rows, but '{var}' has "
                                   f"shape {tuple(self.env[var].shape[1:])}; a subset of rows cannot reshape a variable")
        self.env[var][rows] = value

    def _switch(self, step: dict[str, Any], rows: np.ndarray):
        ctx = self.ctx
        probs = softmax(ctx.to_host(self._variable(step["logits"], f"switch '{step['name']}'")[rows]).astype(np.float64))
        branches = step["branches"]
        if probs.shape[1] != len(branches):
            raise EdgeRestoreError(f"bundle '{ctx.bundle.root}': switch '{step['name']}' has {len(branches)} "
                                   f"branches but its router gives {probs.shape[1]} logits")
        blended = bool(step.get("blend")) and ctx.policy.blend > 1
        if blended:
            ranked, weights = (yield Decide(step, probs, rows, True)) if ctx.image_wide else ctx.policy.rank(probs)
            choice = ranked[:, 0]  # what traces, route maps and one-hot outputs record
        else:
            choice = (yield Decide(step, probs, rows, False)) if ctx.image_wide else ctx.policy.choose(step, probs)
        record = self.decisions.setdefault(step["name"], np.full(self.rows, -1))
        record[rows] = choice
        if "one_hot" in step:
            one_hot = ctx.from_host(np.eye(len(branches), dtype=np.float32)[choice])
            self._store(step["one_hot"], rows, one_hot, len(rows) == self.rows, f"switch '{step['name']}'")
        if self.on_decision is not None:
            self.on_decision(step["name"], rows, choice, probs)
        if blended:
            yield from self._blend(step, rows, ranked, weights)
            return
        for index, branch in enumerate(branches):
            chosen = rows[choice == index]
            if not len(chosen):
                continue
            if branch.get("stop"):
                self.active[chosen] = False
            else:
                yield from self._steps(branch["steps"], chosen)

    def _blend(self, step: dict[str, Any], rows: np.ndarray, ranked: np.ndarray, weights: np.ndarray):
        """Every branch among a row's top K runs on that row from the switch's input; the
        ``blend`` variables become the weighted sum of those branches' outputs."""
        xp = self.ctx.xp
        _check_blendable(self.ctx.bundle, step)
        names = list(step["blend"])
        saved = {var: self.env[var] for var in names if var in self.env}
        mixed: dict[str, Any] = {}
        for index, branch in enumerate(step["branches"]):
            member = ranked == index
            taken = member.any(1)
            if not taken.any():
                continue
            for var, value in saved.items():  # each branch starts from the switch's input
                self.env[var] = value.copy()
            yield from self._steps(branch["steps"], rows[taken])
            weight = self.ctx.from_host((weights * member).sum(1)[taken].astype(np.float32))
            for var in names:
                out = self._variable(var, f"switch '{step['name']}'")[rows[taken]]
                if var not in mixed:
                    mixed[var] = xp.zeros((len(rows), *out.shape[1:]), dtype=xp.float32)
                mixed[var][taken] += weight.reshape(-1, *[1] * (out.ndim - 1)) * out
        for var, value in mixed.items():
            self._store(var, rows, value, len(rows) == self.rows, f"switch '{step['name']}'")

    def _loop(self, step: dict[str, Any], rows: np.ndarray):
        var = step["var"]
        for value in step["values"]:
            self._loop_values[var] = value
            yield from self._steps(step["body"], rows)
        self._loop_values.pop(var, None)

    def _resize(self, step: dict[str, Any], rows: np.ndarray) -> None:
        """Every row of a variable has one size, so the rows that reach a resize are all that
        matter; while some rows are retired, a resize may not change an existing variable's
        size (the retired rows' values could not stay: ``_store`` refuses it)."""
        source = self._variable(step["in"], "resize")
        everyone = len(rows) == self.rows
        size = resize_size(step, lambda var: self._variable(var, "resize").shape[-2:], self._loop_values,
                           self.ctx.bundle.root)
        value = resize_bilinear(source if everyone else source[rows], *size)
        self._store(step["out"], rows, value, everyone, f"the resize of '{step['in']}'")

    # -- compute accounting -------------------------------------------------------------
    def _macs_per_row(self, stage: str, feeds: dict[str, Any]) -> float:
        info = self.ctx.bundle.stages[stage]
        first = next(iter(feeds.values()))
        pixels = int(np.prod(first.shape[2:])) if first.ndim == 4 else 0
        return info.macs_per_call + info.macs_per_pixel * pixels


def full_path_macs(bundle: Bundle, item_shape: tuple[int, ...], blend: int = 1) -> float:
    """MACs per row if every switch took its most expensive branch (``item_shape``: C, H, W
    of the plan's input). Resize steps and loops are followed, so a pyramid's coarse
    scales count at their own size."""
    sizes = {bundle.io.get("input", "image"): tuple(item_shape[1:])}
    for name, spec in bundle.initial.items():
        if spec.get("like") in sizes:
            sizes[name] = tuple(_like_size(spec, sizes.__getitem__))
    return _plan_macs(bundle, bundle.plan, sizes, {}, blend)


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
