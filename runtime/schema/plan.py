"""The plan's consistency beyond field types: stage names and their graph ports, unique
switch names, and the flow of plan variables.

The check walks the plan as the executor does, tracking which variables every row holds
by then (and their shape where a stage spec or ``initial`` says it). A variable a step
reads must be written on every path to that step: after a switch, only what every
continuing branch wrote counts; a loop body runs at least once. So no row ever reads a
value it did not produce -- which is what makes the executor's zero filler safe when a
branch creates a variable for its own rows only (runtime/executor.py, ``_store``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .fields import fail, join

if TYPE_CHECKING:
    from .manifest import LoopStep, Manifest, ResizeStep, RunStep, Step, SwitchStep

Known = dict[str, "list[int | None] | None"]  # variable -> shape without the batch axis (None: unknown)


def check_plan(manifest: Manifest) -> None:
    _PlanCheck(manifest).run()


class _PlanCheck:
    def __init__(self, manifest: Manifest):
        self.m = manifest
        self.switches: dict[str, str] = {}  # name -> path of the switch

    def run(self) -> None:
        io = self.m.io
        known: Known = {io.input: [io.channels, None, None]}
        for name, var in self.m.initial.items():
            path = join("initial", name)
            if name == io.input:
                fail(path, f"'{name}' is the plan's input (io.input)")
            if var.like is not None and var.like not in known:
                fail(join(path, "like"), f"'{var.like}' is neither io.input nor an earlier initial entry")
            if var.divisor is not None and var.like is None:
                fail(join(path, "divisor"), "needs 'like' (the variable whose size it divides)")
            known[name] = list(var.shape) + ([None, None] if var.like is not None else [])
        known = self.steps(self.m.plan, "plan", known, ())
        if io.output not in known:
            fail("io.output", f"the plan does not write '{io.output}' on every path")

    def steps(self, steps: list[Step], path: str, known: Known, loops: tuple[str, ...]) -> Known:
        for i, step in enumerate(steps):
            where = join(path, i)
            if step.op == "run":
                self.run_step(step, where, known)
            elif step.op == "switch":
                known = self.switch(step, where, known, loops)
            elif step.op == "loop":
                known = self.loop(step, where, known, loops)
            else:
                self.resize(step, where, known, loops)
        return known

    @staticmethod
    def read(var: str, path: str, known: Known) -> None:
        if var not in known:
            fail(path, f"reads '{var}' before any step writes it (on some path through the plan)")

    def run_step(self, step: RunStep, path: str, known: Known) -> None:
        stage = self.m.stages.get(step.stage)
        if stage is None:
            names = list(self.m.stages)
            fail(join(path, "stage"), f"unknown stage '{step.stage}' (stages: {', '.join(names[:6])}"
                                      f"{', ...' if len(names) > 6 else ''})")
        inputs = [t.name for t in stage.inputs]
        for port, var in step.inputs.items():
            if port not in inputs:
                fail(join(path, "in", port), f"stage '{step.stage}' has no input '{port}' "
                                             f"(inputs: {', '.join(inputs)})")
            self.read(var, join(path, "in", port), known)
        unfed = [name for name in inputs if name not in step.inputs]
        if unfed:
            fail(join(path, "in"), f"feeds nothing to input '{unfed[0]}' of stage '{step.stage}'")
        shapes = {t.name: t.shape for t in stage.outputs}
        written: list[str] = []
        for port, var in step.outputs.items():
            if port not in shapes:
                fail(join(path, "out", port), f"stage '{step.stage}' has no output '{port}' "
                                              f"(outputs: {', '.join(shapes)})")
            if var in written:
                fail(join(path, "out", port), f"'{var}' is written by two outputs of the step")
            written.append(var)
            known[var] = list(shapes[port])

    def switch(self, step: SwitchStep, path: str, known: Known, loops: tuple[str, ...]) -> Known:
        if step.name in self.switches:
            fail(join(path, "name"), f"'{step.name}' is also the name of the switch at {self.switches[step.name]}")
        self.switches[step.name] = path
        self.read(step.logits, join(path, "logits"), known)
        count, logits = len(step.branches), known[step.logits]
        if logits is not None and (len(logits) != 1 or logits[0] is None):
            fail(join(path, "logits"), f"'{step.logits}' has shape {logits}: a switch needs one value per branch")
        if logits is not None and logits[0] != count:
            fail(join(path, "branches"), f"switch '{step.name}' has {count} branches but its router gives "
                                         f"{logits[0]} logits ('{step.logits}')")
        if step.cheap is not None and step.cheap >= count:
            fail(join(path, "cheap"), f"branch index {step.cheap}, but the switch has {count} branches")
        names = [b.name for b in step.branches]
        for i, name in enumerate(names):
            if name in names[:i]:
                fail(join(path, "branches", i, "name"), f"another branch of switch '{step.name}' is named '{name}'")
        if step.one_hot is not None:
            if known.get(step.one_hot) not in (None, [count]):
                fail(join(path, "one_hot"), f"'{step.one_hot}' has shape {known[step.one_hot]}, but the switch "
                                            f"writes {count} values into it (one per branch)")
            known[step.one_hot] = [count]
        after = []  # (branch, what its rows hold when it ends), for the branches that continue
        for i, branch in enumerate(step.branches):
            where = join(path, "branches", i)
            if branch.stop:
                if branch.steps:
                    fail(join(where, "steps"), "a branch with stop retires its rows: it runs no steps")
                if self.m.io.output not in known:
                    fail(join(where, "stop"), f"retires rows before the plan output '{self.m.io.output}' is written")
                continue
            after.append((branch, self.steps(branch.steps, join(where, "steps"), dict(known), loops)))
        for var in step.blend or []:
            for branch, held in after:
                if var not in held:
                    fail(join(path, "blend"), f"'{var}' is neither written before the switch nor by its branch "
                                              f"'{branch.name}'")
        if not after:
            return known
        merged = dict(known)
        for var in set.intersection(*(set(held) for _, held in after)):
            shapes = {json.dumps(held[var]) for _, held in after}
            merged[var] = after[0][1][var] if len(shapes) == 1 else None
        return merged

    def loop(self, step: LoopStep, path: str, known: Known, loops: tuple[str, ...]) -> Known:
        if step.var in loops:
            fail(join(path, "var"), f"'{step.var}' is already the variable of an enclosing loop")
        # values is never empty: the body runs at least once, and what it writes stays
        return self.steps(step.body, join(path, "body"), dict(known), loops + (step.var,))

    def resize(self, step: ResizeStep, path: str, known: Known, loops: tuple[str, ...]) -> None:
        self.read(step.input, join(path, "in"), known)
        if step.like is not None and step.scale is not None:
            fail(join(path, "scale"), "a resize takes 'scale' or 'like', not both")
        if step.like is None and step.scale is None:
            fail(path, "a resize needs 'scale' or 'like'")
        if step.like is not None:
            self.read(step.like, join(path, "like"), known)
        elif step.divisor is not None:
            fail(join(path, "divisor"), "needs 'like' (the variable whose size it divides)")
        if isinstance(step.scale, str) and step.scale not in loops:
            fail(join(path, "scale"), f"'{step.scale}' is not the variable of an enclosing loop")
        known[step.output] = None
