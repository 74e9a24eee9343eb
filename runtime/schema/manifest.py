"""The manifest and its plan as dataclasses, read from JSON with every field checked and
written back to the same JSON. Optional fields a manifest leaves out are ``None`` here and
stay out when written, so ``to_json(from_json(x)) == x`` for every manifest the exporter writes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Union

from ..errors import EdgeRestoreError
from .fields import (MANIFEST, ManifestError, Obj, boolean, digest, fail, free, integer, join, listing, mapping,
                     number, one_line, one_of, record, text)
from .plan import check_plan

FORMAT = "edgerestore.bundle"
# 2: manifests are validated completely on load and before every write (runtime/schema).
FORMAT_VERSION = 2
PRECISIONS = ("fp32", "fp16", "int8")
KINDS = ("image", "features", "state", "logits")
PADS = ("reflect", "constant")
OPS = ("run", "switch", "loop", "resize")


@dataclass
class ModelInfo:
    name: str
    arch: str
    config: dict[str, Any]  # free-form: the keyword arguments that rebuild the model


@dataclass
class IOSpec:
    input: str  # the plan variable the image enters as
    output: str  # the plan variable holding the result when the plan ends
    layout: str  # "NCHW"
    dtype: str  # "float32"
    channels: int
    range: list[float]  # [low, high] of the model's pixel values
    size_multiple: int
    scale: int
    pad: str  # "reflect" | "constant"


@dataclass
class Tiling:
    tile: int
    overlap: int
    halo: int
    ramp: int
    fixed: bool
    whole: bool


@dataclass
class TensorInfo:
    """A stage graph input or output; ``shape`` excludes the batch axis, None is dynamic."""

    name: str
    shape: list[int | None]
    kind: str  # one of KINDS
    divisor: int | None = None  # dynamic spatial axes are the image size divided by this


@dataclass
class StageSpec:
    name: str  # the key in ``stages`` (not written inside the entry)
    files: dict[str, str]  # precision -> path inside the bundle
    sha256: dict[str, str]  # precision -> hex digest (a file may have none)
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    macs_per_pixel: float
    macs_per_call: float
    # Peak bytes of live intermediate tensors per pixel of the first input (batch 1): what
    # the runtime's memory budget divides into batch sizes (export/activations.py).
    activation_bytes_per_pixel: float
    calibration_cache: str | None = None  # TensorRT INT8 cache, path inside the bundle


@dataclass
class RunStep:
    stage: str
    inputs: dict[str, str]  # "in": graph input -> plan variable
    outputs: dict[str, str]  # "out": graph output -> plan variable
    op = "run"


@dataclass
class Branch:
    name: str
    steps: list[Step]
    label: str | None = None
    stop: bool | None = None  # true: the rows that take this branch leave the plan


@dataclass
class SwitchStep:
    name: str
    logits: str
    branches: list[Branch]
    cheap: int | None = None  # index of the bypass branch
    one_hot: str | None = None  # variable that receives each row's decision as a one-hot row
    blend: list[str] | None = None  # variables a soft decision mixes
    op = "switch"


@dataclass
class LoopStep:
    name: str
    var: str
    values: list[float]
    body: list[Step]
    op = "loop"


@dataclass
class ResizeStep:
    input: str  # "in"
    output: str  # "out"
    scale: float | str | None = None  # a factor, or the name of an enclosing loop's variable
    like: str | None = None  # or: the spatial size of this variable ...
    divisor: int | None = None  # ... divided by this
    op = "resize"


Step = Union[RunStep, SwitchStep, LoopStep, ResizeStep]


@dataclass(kw_only=True)
class InitialVar:
    """A variable the plan starts with, every entry ``value``: ``shape`` (without the batch
    axis), then, with ``like``, that variable's spatial size divided by ``divisor``."""

    shape: list[int]
    like: str | None = None
    divisor: int | None = None
    value: float


@dataclass
class Manifest:
    model: ModelInfo
    io: IOSpec
    receptive_field: int
    tiling: Tiling
    precisions: list[str]
    stages: dict[str, StageSpec]
    plan: list[Step]
    initial: dict[str, InitialVar]
    provenance: dict[str, Any]  # free-form: weights, versions, parity
    calibration: str | None = None  # calibration.json of an INT8 export
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_json(cls, data: Any, origin: str = "bundle") -> Manifest:
        """Validate ``data`` (a parsed manifest.json) completely; ``origin`` starts every error
        line (``bundle 'PATH'``). The bundle's files are :func:`.files.check_files`' part."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise EdgeRestoreError(f"{origin}: {MANIFEST} is not an edgerestore manifest")
        version = data.get("format_version")
        if type(version) is int and version != FORMAT_VERSION:
            model = data.get("model")
            name = model.get("name") if isinstance(model, dict) and isinstance(model.get("name"), str) else "MODEL"
            fix = f"export it again (edgerestore export {name} ...)" if version < FORMAT_VERSION else \
                "upgrade edgerestore"
            raise EdgeRestoreError(one_line(f"{origin} has format version {version}; this edgerestore reads "
                                            f"version {FORMAT_VERSION}: {fix}"))
        try:
            manifest = record(_manifest)(data, "")
            check_plan(manifest)
        except ManifestError as err:
            raise ManifestError(err.field, err.problem, origin) from None
        return manifest

    def to_json(self) -> dict[str, Any]:
        out = {"format": FORMAT, "format_version": self.format_version, "model": _plain(self.model),
               "io": _plain(self.io), "receptive_field": self.receptive_field, "tiling": _plain(self.tiling),
               "precisions": self.precisions,
               "stages": {name: _stage_json(spec) for name, spec in self.stages.items()},
               "plan": [_step_json(step) for step in self.plan],
               "initial": {name: _plain(var) for name, var in self.initial.items()},
               "provenance": self.provenance}
        if self.calibration is not None:
            out["calibration"] = self.calibration
        return json.loads(json.dumps(out))  # a copy: editing it leaves this manifest alone


# -- reading ---------------------------------------------------------------------------------
def _manifest(m: Obj) -> Manifest:
    m("format", text)
    manifest = Manifest(
        format_version=m("format_version", integer(1)),
        model=m("model", record(lambda o: ModelInfo(o("name", text), o("arch", text), o("config", free)))),
        io=m("io", record(_io)), receptive_field=m("receptive_field", integer(0)), tiling=m("tiling", record(_tiling)),
        precisions=m("precisions", listing(one_of(PRECISIONS), nonempty=True)),
        stages=m("stages", mapping(_stage, nonempty=True)), plan=m("plan", listing(_step, nonempty=True)),
        initial=m("initial", mapping(record(_initial))), provenance=m("provenance", free),
        calibration=m("calibration", text, required=False))
    if len(set(manifest.precisions)) != len(manifest.precisions):
        fail("precisions", f"lists a precision twice: {manifest.precisions}")
    for name, stage in manifest.stages.items():
        stage.name = name
    return manifest


def _io(o: Obj) -> IOSpec:
    io = IOSpec(o("input", text), o("output", text), o("layout", one_of(("NCHW",))), o("dtype", one_of(("float32",))),
                o("channels", integer(1)), o("range", listing(number())), o("size_multiple", integer(1)),
                o("scale", integer(1)), o("pad", one_of(PADS)))
    if len(io.range) != 2 or not io.range[0] < io.range[1]:
        fail(join(o.path, "range"), f"expected [low, high] with low < high, got {io.range}")
    return io


def _tiling(o: Obj) -> Tiling:
    tiling = Tiling(o("tile", integer(1)), o("overlap", integer(0)), o("halo", integer(0)), o("ramp", integer(0)),
                    o("fixed", boolean), o("whole", boolean))
    if tiling.overlap >= tiling.tile:
        fail(join(o.path, "overlap"), f"{tiling.overlap} is not smaller than the tile ({tiling.tile})")
    return tiling


def _dim(value: Any, path: str) -> int | None:
    return None if value is None else integer(1)(value, path)


def _tensor(o: Obj) -> TensorInfo:
    return TensorInfo(o("name", text), o("shape", listing(_dim)), o("kind", one_of(KINDS)),
                      o("divisor", integer(1), required=False))


def _stage(value: Any, path: str) -> StageSpec:
    o = Obj(value, path)
    spec = StageSpec("", o("files", mapping(text, nonempty=True)), o("sha256", mapping(digest)),
                     o("inputs", listing(record(_tensor), nonempty=True)),
                     o("outputs", listing(record(_tensor), nonempty=True)),
                     o("macs_per_pixel", number(0)), o("macs_per_call", number(0)),
                     o("activation_bytes_per_pixel", number(0)), o("calibration_cache", text, required=False))
    o.close()
    for precision in spec.files:
        if precision not in PRECISIONS:
            fail(join(path, "files", precision), f"unknown precision (known: {', '.join(PRECISIONS)})")
    for precision in spec.sha256:
        if precision not in spec.files:
            fail(join(path, "sha256", precision), f"no {precision} file in 'files' to check")
    for key in ("inputs", "outputs"):
        names = [t.name for t in getattr(spec, key)]
        for i, name in enumerate(names):
            if name in names[:i]:
                fail(join(path, key, i, "name"), f"'{name}' is listed twice")
    return spec


def _step(value: Any, path: str) -> Step:
    o = Obj(value, path)
    op = o("op", one_of(OPS))
    if op == "run":
        step = RunStep(o("stage", text), o("in", mapping(text, nonempty=True)), o("out", mapping(text, nonempty=True)))
    elif op == "switch":
        step = SwitchStep(o("name", text), o("logits", text), o("branches", listing(record(_branch), nonempty=True)),
                          o("cheap", integer(0), required=False), o("one_hot", text, required=False),
                          o("blend", listing(text, nonempty=True), required=False))
    elif op == "loop":
        step = LoopStep(o("name", text), o("var", text), o("values", listing(number(positive=True), nonempty=True)),
                        o("body", listing(_step, nonempty=True)))
    else:
        step = ResizeStep(o("in", text), o("out", text), o("scale", _scale, required=False),
                          o("like", text, required=False), o("divisor", integer(1), required=False))
    o.close()
    return step


def _scale(value: Any, path: str) -> float | str:
    return value if isinstance(value, str) and value else number(positive=True)(value, path)


def _branch(o: Obj) -> Branch:
    return Branch(o("name", text), o("steps", listing(_step)), o("label", text, required=False),
                  o("stop", boolean, required=False))


def _initial(o: Obj) -> InitialVar:
    return InitialVar(shape=o("shape", listing(integer(1))), like=o("like", text, required=False),
                      divisor=o("divisor", integer(1), required=False), value=o("value", number()))


# -- writing ------------------------------------------------------------------------------------
_JSON_NAMES = {"input": "in", "output": "out", "inputs": "in", "outputs": "out"}


def _plain(obj: Any) -> dict[str, Any]:
    """A dataclass as its manifest object: fields in declaration order, ``None`` left out."""
    return {k: v for k, v in vars(obj).items() if v is not None}


def _stage_json(spec: StageSpec) -> dict[str, Any]:
    out = _plain(spec)
    del out["name"]
    out["inputs"], out["outputs"] = [_plain(t) for t in spec.inputs], [_plain(t) for t in spec.outputs]
    return out


def _step_json(step: Step) -> dict[str, Any]:
    out: dict[str, Any] = {"op": step.op}
    for key, value in vars(step).items():
        if value is None:
            continue
        if key == "body":
            value = [_step_json(s) for s in value]
        elif key == "branches":
            value = [_branch_json(b) for b in value]
        out[_JSON_NAMES.get(key, key)] = value
    if "branches" in out:  # a switch's branches come last, as the models write them
        out["branches"] = out.pop("branches")
    return out


def _branch_json(branch: Branch) -> dict[str, Any]:
    out = {k: v for k, v in (("name", branch.name), ("label", branch.label), ("stop", branch.stop)) if v is not None}
    out["steps"] = [_step_json(s) for s in branch.steps]
    return out
