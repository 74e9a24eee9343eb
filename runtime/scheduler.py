"""Drives plan passes over the chunks of an image within the memory budget.

An image's tiles arrive in chunks (a band of tile rows each). Every chunk's pass through the
plan (:class:`.executor.PlanPass`) is a generator that stops at each stage call; the stage
calls of all chunks in flight queue per stage and run together in the stage's fixed bucket
sizes (:mod:`.buckets`), so a branch that takes a few tiles of each chunk still runs full
batches. The loop, in order of preference:

1. advance every chunk that has its answer, until it asks again or finishes;
2. admit the next chunk while its plan variables fit in the budget (``max_rows``);
3. run a stage whose queue fills its largest bucket;
4. decide an image-wide vote once every chunk of the image waits for it; while chunks are
   still to come and the budget is full, the waiting chunks are *spilled*: their plan
   variables go to files (and leave memory) until the vote is decided -- a vote over an image
   larger than the budget costs disk traffic, not memory;
5. otherwise run the fullest queue, its last bucket smaller or padded.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from .buckets import BucketedStage, Queued, StageHook
from .executor import Decide, PlanContext, PlanPass, StageCall

DecisionHook = Callable[[str, np.ndarray, np.ndarray, np.ndarray], None]  # (switch, row ids, branch, probs)


@dataclass(eq=False)
class Chunk:
    row_ids: np.ndarray  # frame-wide ids of the chunk's rows
    plan_pass: PlanPass
    steps: Iterator = field(init=False)
    waiting: Any = None  # the request it is blocked on (None: running, or answered)
    answer: Any = None
    started: bool = False
    done: bool = False
    spilled: Path | None = None

    def __post_init__(self):
        self.steps = self.plan_pass.steps()

    @property
    def rows(self) -> int:
        return len(self.row_ids)

    @property
    def ready(self) -> bool:
        return self.waiting is None and not self.done

    def resume(self, answer: Any) -> None:
        self.waiting, self.answer = None, answer


@dataclass
class SchedulerStats:
    spills: int = 0  # chunks written out while a vote waited
    spilled_bytes: int = 0
    spill_seconds: float = 0.0  # writing spilled chunks and reading them back
    peak_rows: int = 0  # rows in memory at once


class Scheduler:
    def __init__(self, ctx: PlanContext, stages: dict[str, BucketedStage], max_rows: int,
                 stage_hooks: list[StageHook], decision_hooks: list[DecisionHook]):
        self.ctx, self.stages, self.max_rows = ctx, stages, max_rows
        self.stage_hooks, self.decision_hooks = stage_hooks, decision_hooks
        self.stats = SchedulerStats()

    def run(self, chunks: Iterable[tuple[np.ndarray, dict[str, Any]]], on_done: Callable[[Chunk], None]) -> None:
        """Run every chunk ``(row_ids, plan inputs)`` of one image through the plan; ``on_done``
        receives each finished chunk (its pass holds the outputs) as soon as it finishes."""
        source, upcoming = iter(chunks), None
        exhausted = False
        live: list[Chunk] = []
        # per stage and input shapes (a stage in a loop runs at each scale of a pyramid)
        queues: dict[tuple, list[Queued]] = defaultdict(list)
        with tempfile.TemporaryDirectory(prefix="edgerestore-spill-") as spill_dir:
            while True:
                self._advance(live, queues, on_done)
                if upcoming is None and not exhausted:
                    upcoming = next(source, None)
                    exhausted = upcoming is None
                in_memory = sum(c.rows for c in live if c.spilled is None)
                self.stats.peak_rows = max(self.stats.peak_rows, in_memory)
                if upcoming is not None and (not in_memory or in_memory + len(upcoming[0]) <= self.max_rows):
                    live.append(self._chunk(*upcoming))
                    upcoming = None
                    continue
                if self._reload(live, in_memory):
                    continue
                key = max(queues, key=lambda k: sum(q.waiting for q in queues[k]), default=None)
                waiting = sum(q.waiting for q in queues[key]) if key else 0
                largest = self.stages[key[0]].sizes[0] if key else 0
                if waiting >= largest > 0:
                    self._run_stage(key, queues, waiting // largest * largest)
                    continue
                if not waiting and self._vote_or_spill(live, exhausted, upcoming is not None, Path(spill_dir)):
                    continue
                if waiting:
                    self._run_stage(key, queues, waiting)
                    continue
                if not live and exhausted:
                    return
                raise RuntimeError("scheduler stalled: chunks wait on different votes")  # a plan bug, not input

    # -- chunks -------------------------------------------------------------------------
    def _chunk(self, row_ids: np.ndarray, tensors: dict[str, Any]) -> Chunk:
        chunk = Chunk(row_ids, PlanPass(self.ctx, tensors))
        hooks = self.decision_hooks
        if hooks:
            chunk.plan_pass.on_decision = lambda name, rows, choice, probs: [
                hook(name, row_ids[rows], choice, probs) for hook in hooks]
        return chunk

    def _advance(self, live: list[Chunk], queues: dict[tuple, list[Queued]], on_done) -> None:
        for chunk in list(live):
            while chunk.ready and chunk.spilled is None:
                try:
                    request = chunk.steps.send(chunk.answer) if chunk.started else next(chunk.steps)
                except StopIteration:
                    chunk.done = True
                    live.remove(chunk)
                    on_done(chunk)
                    chunk.plan_pass.env = {}  # its output is handed over; the rest goes now
                    break
                chunk.started, chunk.waiting, chunk.answer = True, request, None
                if isinstance(request, StageCall):
                    ids = chunk.row_ids if request.rows is None else chunk.row_ids[request.rows]
                    shapes = tuple((port, value.shape[1:]) for port, value in request.feeds.items())
                    queues[(request.stage, shapes)].append(Queued(request, ids, owner=chunk))

    def _run_stage(self, key: tuple, queues: dict[tuple, list[Queued]], rows: int) -> None:
        queue = queues[key]
        for request in self.stages[key[0]].run(queue, rows, self.stage_hooks):
            request.owner.resume(request.outputs)
        queue[:] = [q for q in queue if q.done < q.call.count]
        if not queue:
            del queues[key]

    # -- votes ---------------------------------------------------------------------------
    def _vote_or_spill(self, live: list[Chunk], exhausted: bool, upcoming: bool, folder: Path) -> bool:
        """Decide the vote every chunk of the image waits for, or spill the waiting chunks
        that block others (a chunk still to come, or a spilled one with its answer). (A
        method, not the loop's locals: a list of voters kept across iterations would hold
        every chunk of the image, and their plan variables, until the next vote.)"""
        voters = [c for c in live if isinstance(c.waiting, Decide)]
        if voters and len(voters) == len(live) and exhausted:
            self._decide(voters)
            return True
        shut_out = upcoming or any(c.spilled is not None and c.ready for c in live)
        in_memory = [c for c in voters if c.spilled is None]
        if in_memory and shut_out:
            self._spill(in_memory, folder)
            return True
        return False

    def _decide(self, voters: list[Chunk]) -> None:
        """One decision for the whole image from every row's router probabilities."""
        names = {c.waiting.step["name"] for c in voters}
        if len(names) != 1:
            raise RuntimeError(f"chunks of one image wait on different switches: {sorted(names)}")
        policy = self.ctx.policy
        first = voters[0].waiting
        if first.blend:
            total = sum(c.waiting.probs.sum(0) for c in voters)
            mean = total / sum(len(c.waiting.probs) for c in voters)
            for chunk in voters:
                chunk.resume(policy.rank(chunk.waiting.probs, mean))
        else:
            counts = sum(np.bincount(policy.choose(c.waiting.step, c.waiting.probs), minlength=first.probs.shape[1])
                         for c in voters)
            branch = policy.vote_of(counts)
            for chunk in voters:
                chunk.resume(np.full(len(chunk.waiting.probs), branch))

    def _spill(self, voters: list[Chunk], folder: Path) -> None:
        start = time.perf_counter()
        for chunk in voters:
            if chunk.spilled is not None:
                continue
            path = folder / f"chunk{id(chunk)}"
            path.mkdir()
            env = chunk.plan_pass.env
            for index, (name, value) in enumerate(env.items()):
                np.save(path / f"{index}.npy", self.ctx.to_host(value))
                self.stats.spilled_bytes += value.nbytes
            chunk.plan_pass.env = dict.fromkeys(env)  # names kept, arrays released
            chunk.spilled = path
            self.stats.spills += 1
        self.stats.spill_seconds += time.perf_counter() - start

    def _reload(self, live: list[Chunk], in_memory: int) -> bool:
        """Bring back one spilled chunk that has its answer, if it fits."""
        for chunk in live:
            if chunk.spilled is not None and chunk.ready and (not in_memory or in_memory + chunk.rows <= self.max_rows):
                start = time.perf_counter()
                env = chunk.plan_pass.env
                for index, name in enumerate(list(env)):
                    env[name] = self.ctx.from_host(np.load(chunk.spilled / f"{index}.npy"))
                for file in chunk.spilled.iterdir():
                    file.unlink()
                chunk.spilled.rmdir()
                chunk.spilled = None
                self.stats.spill_seconds += time.perf_counter() - start
                return True
        return False
