"""The bundle schema (runtime/schema): malformed manifests through the real CLI (one
``error:`` line naming the field, exit 1, nothing written), the flow and file checks in
process, the executor's refusal to re-create a variable, exact round trips of every
model's manifest, and a bounded fuzz of the loader."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from edgerestore.runtime.bundle import Bundle
from edgerestore.runtime.errors import EdgeRestoreError
from edgerestore.runtime.session import Session
from edgerestore.runtime.onnx_names import NotOnnx, graph_names
from edgerestore.runtime.schema import (FORMAT_VERSION, MANIFEST, Manifest, ManifestError, file_sha256, load_manifest,
                                        write_manifest)


# -- a small bundle with every step op, built without torch ---------------------------------
def _model(nodes, inputs, outputs, initializers=(), ir_version=8) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "stage", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=ir_version)


def _image(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 1, "height", "width"])


def _router() -> onnx.ModelProto:
    """logits = 10 * (mean - 0.5) * [-1, 1]: bright items choose branch 1, dark ones branch 0."""
    weight = numpy_helper.from_array(np.array([[-10.0, 10.0]], np.float32), "weight")
    bias = numpy_helper.from_array(np.array([5.0, -5.0], np.float32), "bias")
    nodes = [helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2, 3], keepdims=0),
             helper.make_node("Unsqueeze", ["mean", "axis"], ["column"]),
             helper.make_node("Gemm", ["column", "weight", "bias"], ["logits"])]
    axis = numpy_helper.from_array(np.array([1], np.int64), "axis")
    return _model(nodes, [_image("image")],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])], [weight, bias, axis])


def _smooth() -> onnx.ModelProto:
    """image_out = 0.9 * image."""
    factor = numpy_helper.from_array(np.array(0.9, np.float32), "factor")
    return _model([helper.make_node("Mul", ["image", "factor"], ["image_out"])], [_image("image")],
                  [_image("image_out")], [factor])


def _tensor(name: str, shape: list, kind: str) -> dict[str, Any]:
    return {"name": name, "shape": shape, "kind": kind}


def _run(stage: str, inputs: dict, outputs: dict) -> dict[str, Any]:
    return {"op": "run", "stage": stage, "in": inputs, "out": outputs}


def synthetic_manifest() -> dict[str, Any]:
    """run, switch (cheap branch, one_hot), loop over resize steps, initial entries (one ``like``)."""
    image = _tensor("image", [1, None, None], "image")
    return {
        "format": "edgerestore.bundle", "format_version": FORMAT_VERSION,
        "model": {"name": "synthetic", "arch": "synthetic", "config": {"any": ["free", "form"]}},
        "io": {"input": "image", "output": "image", "layout": "NCHW", "dtype": "float32", "channels": 1,
               "range": [0.0, 1.0], "size_multiple": 1, "scale": 1, "pad": "reflect"},
        "receptive_field": 1,
        "tiling": {"tile": 32, "overlap": 8, "halo": 0, "ramp": 2, "fixed": False, "whole": False},
        "precisions": ["fp32"],
        "stages": {
            "router": {"files": {"fp32": "router.onnx"}, "sha256": {}, "inputs": [image],
                       "outputs": [_tensor("logits", [2], "logits")], "macs_per_pixel": 0.0, "macs_per_call": 2,
                       "activation_bytes_per_pixel": 64.0},
            "smooth": {"files": {"fp32": "smooth.onnx"}, "sha256": {}, "inputs": [image],
                       "outputs": [_tensor("image_out", [1, None, None], "image")], "macs_per_pixel": 1.0,
                       "macs_per_call": 0.0, "activation_bytes_per_pixel": 16.0},
        },
        "plan": [
            _run("router", {"image": "image"}, {"logits": "logits"}),
            {"op": "switch", "name": "route", "logits": "logits", "cheap": 0, "one_hot": "choice", "branches": [
                {"name": "keep", "steps": []},
                {"name": "smooth", "label": "s",
                 "steps": [_run("smooth", {"image": "image"}, {"image_out": "image"})]}]},
            {"op": "loop", "name": "scales", "var": "s", "values": [0.5, 1.0], "body": [
                {"op": "resize", "in": "image", "out": "half", "scale": "s"},
                _run("smooth", {"image": "half"}, {"image_out": "half"}),
                {"op": "resize", "in": "half", "out": "half", "like": "state", "divisor": 1}]},
        ],
        "initial": {"choice": {"shape": [2], "value": 0.0},
                    "state": {"shape": [1], "like": "image", "divisor": 2, "value": 0.5}},
        "provenance": {"weights": None, "note": "built by tests/test_bundle_schema.py"},
    }


def make_bundle(root: Path, manifest: dict[str, Any] | None = None) -> Path:
    root.mkdir(parents=True)
    onnx.save(_router(), str(root / "router.onnx"))
    onnx.save(_smooth(), str(root / "smooth.onnx"))
    data = manifest or synthetic_manifest()
    for name, spec in data["stages"].items():
        spec["sha256"] = {"fp32": file_sha256(root / spec["files"]["fp32"])}
    write_manifest(root, Manifest.from_json(data))
    return root


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("schema") / "synthetic")


# -- malformed manifests: (name, edit of the manifest dict and bundle folder, field the error names) ---
def _set(path: str, value: Any) -> Callable[[dict, Path], None]:
    def edit(manifest: dict, _root: Path) -> None:
        keys = path.split("/")
        target = manifest
        for key in keys[:-1]:
            target = target[int(key)] if isinstance(target, list) else target[key]
        last = keys[-1]
        if value is _DELETE:
            del target[last]
        else:
            target[int(last) if isinstance(target, list) else last] = value
    return edit


_DELETE = object()


def _rename_port(stage: str, key: str, old: str, new: str) -> Callable[[dict, Path], None]:
    """Rename a stage's graph port in its spec and in every run step: only the ONNX file disagrees."""
    def edit(manifest: dict, _root: Path) -> None:
        for spec in manifest["stages"][stage][key + "s"]:
            spec["name"] = new if spec["name"] == old else spec["name"]
        for step in _walk(manifest["plan"]):
            if step.get("stage") == stage:
                ports = step["in" if key == "input" else "out"]
                ports[new] = ports.pop(old)
    return edit


def _walk(steps):
    for step in steps:
        yield step
        yield from _walk(step.get("body", []))
        for branch in step.get("branches", []):
            yield from _walk(branch["steps"])


def _escape(path: str) -> Callable[[dict, Path], None]:
    def edit(manifest: dict, root: Path) -> None:
        shutil.copy(root / "smooth.onnx", root.parent / "outside.onnx")
        manifest["stages"]["smooth"]["files"]["fp32"] = path
        manifest["stages"]["smooth"]["sha256"] = {}
    return edit


def _dangling_branch_variable(manifest: dict, _root: Path) -> None:
    """Only branch 'smooth' writes 'extra'; a step after the switch reads it."""
    manifest["plan"][1]["branches"][1]["steps"].append(_run("smooth", {"image": "image"}, {"image_out": "extra"}))
    manifest["plan"].append(_run("smooth", {"image": "extra"}, {"image_out": "image"}))


def _duplicate_switch(manifest: dict, _root: Path) -> None:
    manifest["plan"].insert(2, copy.deepcopy(manifest["plan"][1]))


def _third_branch(manifest: dict, _root: Path) -> None:
    manifest["plan"][1]["branches"].append({"name": "extra", "steps": []})


def _missing_file(manifest: dict, root: Path) -> None:
    (root / "smooth.onnx").unlink()


def _not_json(manifest: dict, root: Path) -> None:
    manifest.clear()
    manifest["__text__"] = '{"format": "edgerestore.bundle", '


MALFORMED = [
    # name, edit, what the one error line says (the field path first)
    ("wrong_type", _set("tiling/tile", "64"), 'tiling.tile: expected an integer, got a string ("64")'),
    ("missing_field", _set("io/channels", _DELETE), "io.channels: missing"),
    ("extra_field", _set("plan/0/colour", "red"), "plan[0].colour: unknown field"),
    ("unknown_op", _set("plan/0/op", "jump"), "plan[0].op: expected one of run, switch, loop, resize"),
    ("unknown_stage", _set("plan/1/branches/1/steps/0/stage", "foo"),
     "plan[1].branches[1].steps[0].stage: unknown stage 'foo'"),
    ("dangling_variable", _set("plan/0/in/image", "picture"), "plan[0].in.image: reads 'picture' before any step"),
    ("variable_of_one_branch", _dangling_branch_variable, "plan[3].in.image: reads 'extra' before any step"),
    ("switch_logits_missing", _set("plan/1/logits", "scores"), "plan[1].logits: reads 'scores' before any step"),
    ("step_port_not_in_stage", _set("plan/0/out", {"probs": "logits"}), "plan[0].out.probs: stage 'router' has no "
                                                                       "output 'probs'"),
    ("stage_input_not_in_onnx", _rename_port("smooth", "input", "image", "picture"),
     "stages.smooth.inputs[0].name: 'picture' is not an input of 'smooth.onnx' (its inputs: image)"),
    ("stage_output_not_in_onnx", _rename_port("router", "output", "logits", "scores"),
     "stages.router.outputs[0].name: 'scores' is not an output of 'router.onnx'"),
    ("escaping_path", _escape("../outside.onnx"), "stages.smooth.files.fp32: path '../outside.onnx' points outside"),
    ("absolute_path", _escape("/etc/hostname"), "stages.smooth.files.fp32: path '/etc/hostname' points outside"),
    ("missing_stage_file", _missing_file, "stages.smooth.files.fp32: file 'smooth.onnx' is missing"),
    ("old_format_version", _set("format_version", 1),
     "has format version 1; this edgerestore reads version 2: export it again (edgerestore export synthetic ...)"),
    ("format_version_type", _set("format_version", "2"), "format_version: expected an integer"),
    ("bad_sha256", _set("stages/router/sha256/fp32", "abc123"), "stages.router.sha256.fp32: expected a sha256 hex"),
    ("not_json", _not_json, "manifest.json is not valid JSON"),
    ("plan_not_a_list", _set("plan", {"op": "run"}), "plan: expected a list, got an object"),
    ("branch_without_steps", _set("plan/1/branches/0/steps", _DELETE), "plan[1].branches[0].steps: missing"),
    ("loop_variable_misuse", _set("plan/2/body/0/scale", "t"),
     "plan[2].body[0].scale: 't' is not the variable of an enclosing loop"),
    ("duplicate_switch_name", _duplicate_switch, "plan[2].name: 'route' is also the name of the switch at plan[1]"),
    ("branch_count", _third_branch, "plan[1].branches: switch 'route' has 3 branches but its router gives 2 logits"),
    ("precisions_mismatch", _set("precisions", ["fp32", "int8"]),
     "precisions: lists int8, but stage 'router' has no int8 file"),
    ("output_never_written", _set("io/output", "result"), "io.output: the plan does not write 'result'"),
    ("initial_like_unknown", _set("initial/state/like", "ghost"),
     "initial.state.like: 'ghost' is neither io.input nor an earlier initial entry"),
    ("negative_macs", _set("stages/smooth/macs_per_pixel", -1.0), "stages.smooth.macs_per_pixel: must be at least 0"),
    ("cheap_out_of_range", _set("plan/1/cheap", 2), "plan[1].cheap: branch index 2, but the switch has 2 branches"),
]


def _malformed_bundle(base: Path, root: Path, edit) -> Path:
    shutil.copytree(base, root)
    manifest = json.loads((root / MANIFEST).read_text())
    edit(manifest, root)
    text = manifest.pop("__text__", None)
    (root / MANIFEST).write_text(text if text is not None else json.dumps(manifest, indent=2))
    return root


def edgerestore_command() -> list[str]:
    """The installed console script of this environment (python -m where it has none)."""
    found = shutil.which("edgerestore", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "edgerestore.runtime.cli"]


@pytest.fixture(scope="module")
def cli_runs(synthetic, tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """``edgerestore restore`` on every malformed bundle (and the intact one), a few processes at a time."""
    work = tmp_path_factory.mktemp("malformed")
    image = work / "in.png"
    cv2.imwrite(str(image), (np.random.default_rng(0).random((40, 48)) * 255).astype(np.uint8))
    jobs = {"intact": synthetic}
    for name, edit, _ in MALFORMED:
        jobs[name] = _malformed_bundle(synthetic, work / name / "bundle", edit)

    def run(name: str):
        out = work / f"{name}.png"
        result = subprocess.run([*edgerestore_command(), "restore", str(jobs[name]), str(image), "-o", str(out),
                                 "--backend", "onnxruntime"], capture_output=True, text=True, timeout=120)
        return name, (result, out)

    with ThreadPoolExecutor(4) as pool:
        return dict(pool.map(run, jobs))


def test_the_intact_bundle_restores_through_the_cli(cli_runs):
    result, out = cli_runs["intact"]
    assert result.returncode == 0, result.stderr
    assert out.is_file()


@pytest.mark.parametrize("name,expected", [(name, expected) for name, _, expected in MALFORMED],
                         ids=[name for name, _, _ in MALFORMED])
def test_malformed_manifest_is_one_error_line(cli_runs, name, expected):
    result, out = cli_runs[name]
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: bundle '"), result.stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not out.exists()


def test_at_least_fifteen_kinds():
    assert len({name for name, _, _ in MALFORMED}) >= 15


# -- in process: the field path and the flow rules ------------------------------------------------
def refusal(data: dict) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        Manifest.from_json(data)
    return info.value


def test_error_names_field_and_origin():
    data = synthetic_manifest()
    data["plan"][1]["branches"][1]["steps"][0]["stage"] = "foo"
    with pytest.raises(ManifestError) as info:
        Manifest.from_json(data, "bundle 'X'")
    assert info.value.field == "plan[1].branches[1].steps[0].stage"
    assert str(info.value).startswith("bundle 'X': manifest.json: plan[1].branches[1].steps[0].stage: "
                                      "unknown stage 'foo'")


def test_stage_names_with_dots_are_quoted_in_paths():
    data = synthetic_manifest()
    data["stages"]["block0.branch"] = data["stages"].pop("smooth")
    data["stages"]["block0.branch"]["macs_per_call"] = "many"
    assert refusal(data).field == 'stages["block0.branch"].macs_per_call'


def test_free_form_objects_accept_anything_but_the_rest_is_closed():
    data = synthetic_manifest()
    data["provenance"]["anything"] = {"nested": [1, None]}
    data["model"]["config"]["more"] = True
    Manifest.from_json(data)
    for where in (data["io"], data["tiling"], data["stages"]["router"], data["stages"]["router"]["inputs"][0],
                  data["plan"][1], data["plan"][1]["branches"][0], data["plan"][2], data["plan"][2]["body"][0],
                  data["initial"]["state"], data["model"]):
        where["surprise"] = 1
        assert refusal(data).problem.startswith("unknown field")
        del where["surprise"]


@pytest.mark.parametrize("edit,field,problem", [
    # a stop branch runs nothing, and only once the output exists
    (lambda d: d["plan"][1]["branches"][0].update(stop=True, steps=[_run("smooth", {"image": "image"},
                                                                         {"image_out": "image"})]),
     "plan[1].branches[0].steps", "a branch with stop retires its rows"),
    (lambda d: (d["io"].update(output="final"), d["plan"][1]["branches"][0].update(stop=True),
                d["plan"].append(_run("smooth", {"image": "image"}, {"image_out": "final"}))),
     "plan[1].branches[0].stop", "retires rows before the plan output 'final' is written"),
    # blend variables come out of every branch
    (lambda d: d["plan"][1].update(blend=["mixed"]), "plan[1].blend", "'mixed' is neither written before the switch"),
    # nested loops over one variable; a resize with both or neither size rule
    (lambda d: d["plan"][2]["body"].append({"op": "loop", "name": "inner", "var": "s", "values": [1.0], "body": [
        {"op": "resize", "in": "image", "out": "image", "scale": 1.0}]}),
     "plan[2].body[3].var", "already the variable"),
    (lambda d: d["plan"][2]["body"][2].update(scale=0.5), "plan[2].body[2].scale", "not both"),
    (lambda d: d["plan"][2]["body"][0].pop("scale"), "plan[2].body[0]", "needs 'scale' or 'like'"),
    (lambda d: d["plan"][2]["body"][0].update(divisor=2), "plan[2].body[0].divisor", "needs 'like'"),
    # a loop variable is read before the loop writes it
    (lambda d: d["plan"][2]["body"].reverse(), "plan[2].body[0].in", "reads 'half' before"),
    # run steps feed every graph input, write each variable once
    (lambda d: d["plan"][0].update({"in": {"image": "image", "extra": "image"}}), "plan[0].in.extra", "no input"),
    (lambda d: d["stages"]["smooth"]["inputs"].append(_tensor("mask", [1, None, None], "image")), "plan[1].branches[1]"
     ".steps[0].in", "feeds nothing to input 'mask'"),
    # one_hot sizes and switch logits
    (lambda d: d["initial"]["choice"].update(shape=[3]), "plan[1].one_hot", "has shape [3]"),
    (lambda d: d["plan"][1].update(logits="image"), "plan[1].logits", "a switch needs one value per branch"),
    # names
    (lambda d: d["plan"][1]["branches"][1].update(name="keep"), "plan[1].branches[1].name", "named 'keep'"),
    (lambda d: d["initial"].update(image={"shape": [1], "value": 0.0}), "initial.image", "the plan's input"),
    (lambda d: d["stages"]["router"]["files"].update(fp64="router.onnx"), "stages.router.files.fp64",
     "unknown precision"),
    (lambda d: d["stages"]["router"]["sha256"].update(int8="0" * 64), "stages.router.sha256.int8", "no int8 file"),
    (lambda d: d["stages"]["router"]["outputs"].append(_tensor("logits", [2], "logits")),
     "stages.router.outputs[1].name", "listed twice"),
    # values
    (lambda d: d["tiling"].update(overlap=32), "tiling.overlap", "not smaller than the tile"),
    (lambda d: d["io"].update(range=[1.0, 0.0]), "io.range", "low < high"),
    (lambda d: d["io"].update(pad="wrap"), "io.pad", "expected one of reflect, constant"),
    (lambda d: d["stages"]["router"].update(macs_per_call=float("nan")), "stages.router.macs_per_call", "finite"),
    (lambda d: d["tiling"].update(fixed=1), "tiling.fixed", "expected true or false"),
    (lambda d: d["stages"]["router"]["inputs"][0].update(shape=[1, 0, None]), "stages.router.inputs[0].shape[1]",
     "at least 1"),
    (lambda d: d["plan"][2].update(values=[]), "plan[2].values", "must not be empty"),
    (lambda d: d["precisions"].append("fp32"), "precisions", "twice"),
    (lambda d: d.update(calibration=7), "calibration", "expected a non-empty string"),
])
def test_plan_and_value_rules(edit, field, problem):
    data = synthetic_manifest()
    edit(data)
    err = refusal(data)
    assert err.field == field and problem in err.problem, str(err)


def test_a_branch_may_create_a_variable_for_its_own_rows():
    data = synthetic_manifest()
    data["plan"][1]["branches"][1]["steps"] = [_run("smooth", {"image": "image"}, {"image_out": "tmp"}),
                                               _run("smooth", {"image": "tmp"}, {"image_out": "image"})]
    Manifest.from_json(data)  # 'tmp' is written and read inside the branch only


def test_unknown_format_and_newer_version():
    with pytest.raises(EdgeRestoreError, match="not an edgerestore manifest"):
        Manifest.from_json({"format": "something-else"})
    data = synthetic_manifest()
    data["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(EdgeRestoreError, match="has format version 3; this edgerestore reads version 2: upgrade"):
        Manifest.from_json(data)


# -- files: ONNX names, extra graph inputs, corrupt files, writers ----------------------------------
def test_graph_names_match_onnx_on_every_kind_of_file(synthetic, small_bundle, tmp_path):
    ir3 = _model([helper.make_node("Add", ["x", "w"], ["y"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
                  helper.make_tensor_value_info("w", TensorProto.FLOAT, [1])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                 [numpy_helper.from_array(np.ones(1, np.float32), "w")], ir_version=3)
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.ones(1, np.float32), "s"),
                                       numpy_helper.from_array(np.zeros(1, np.int64), "s_idx"), [4])
    ir3.graph.sparse_initializer.append(sparse)
    onnx.save(ir3, str(tmp_path / "ir3.onnx"))
    files = [*synthetic.glob("*.onnx"), *small_bundle.glob("*.onnx"), tmp_path / "ir3.onnx"]
    for file in files:
        model = onnx.load(str(file), load_external_data=False)
        names = graph_names(file)
        assert names.inputs == tuple(i.name for i in model.graph.input)
        assert names.outputs == tuple(o.name for o in model.graph.output)
        assert names.initializers == ({t.name for t in model.graph.initializer}
                                      | {s.values.name for s in model.graph.sparse_initializer})
    assert graph_names(tmp_path / "ir3.onnx").initializers == {"w", "s"}


@pytest.mark.parametrize("content", [b"", b"\x0a\xff\xff\xff\xff\x0f", b"\x3b\x00", b"plain text, not protobuf"])
def test_graph_names_refuses_what_is_not_onnx(tmp_path, content):
    path = tmp_path / "x.onnx"
    path.write_bytes(content)
    with pytest.raises(NotOnnx):
        graph_names(path)


def test_graph_inputs_the_manifest_does_not_list(synthetic, tmp_path):
    root = tmp_path / "b"
    shutil.copytree(synthetic, root)
    model = _smooth()
    model.graph.input.append(_image("mask"))
    onnx.save(model, str(root / "smooth.onnx"))
    data = json.loads((root / MANIFEST).read_text())
    data["stages"]["smooth"]["sha256"]["fp32"] = file_sha256(root / "smooth.onnx")
    (root / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="'smooth.onnx' also takes the input 'mask'") as info:
        Bundle(root)
    assert info.value.field == "stages.smooth.inputs"


def test_corrupt_stage_file_is_named_by_its_checksum(synthetic, tmp_path):
    root = tmp_path / "b"
    shutil.copytree(synthetic, root)
    (root / "smooth.onnx").write_bytes((root / "smooth.onnx").read_bytes()[:40])
    with pytest.raises(ManifestError, match="stage file 'smooth.onnx' is corrupt"):
        Bundle(root)
    data = json.loads((root / MANIFEST).read_text())
    data["stages"]["smooth"]["sha256"] = {}
    (root / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="stage file 'smooth.onnx' is not a readable ONNX model"):
        Bundle(root)


def test_write_manifest_refuses_what_a_reader_would(synthetic, tmp_path):
    root = tmp_path / "b"
    shutil.copytree(synthetic, root)
    before = (root / MANIFEST).read_text()
    manifest = load_manifest(root)
    manifest.plan[0].stage = "missing"
    with pytest.raises(ManifestError, match=r"plan\[0\]\.stage: unknown stage 'missing'"):
        write_manifest(root, manifest)
    manifest = load_manifest(root)
    manifest.stages["smooth"].files["int8"] = "smooth.int8.onnx"  # a file that does not exist
    manifest.precisions.append("int8")
    with pytest.raises(ManifestError, match="file 'smooth.int8.onnx' is missing"):
        write_manifest(root, manifest)
    assert (root / MANIFEST).read_text() == before and sorted(p.name for p in root.iterdir()) == \
        sorted(p.name for p in synthetic.iterdir())


def test_export_of_a_model_with_a_broken_plan_writes_nothing(tmp_path):
    import torch

    from edgerestore.export import write_bundle
    from edgerestore.models import DnCNN

    class Broken(DnCNN):
        def stage_plan(self):
            split = super().stage_plan()
            split.plan[0]["in"] = {"input": "noise"}  # no step writes 'noise'
            return split

    torch.manual_seed(0)
    with pytest.raises(ManifestError, match=r"plan\[0\]\.in\.input: reads 'noise' before any step writes it"):
        write_bundle(Broken(channels=1, depth=3, features=8).eval(), "dncnn", tmp_path / "b")
    assert not (tmp_path / "b").exists() and list(tmp_path.iterdir()) == []


# -- the executor: a subset of rows may create a variable, never reshape one --------------------------
def _items(*brightness: float) -> np.ndarray:
    return np.stack([np.full((1, 8, 8), b, np.float32) for b in brightness])


def test_branch_rows_create_their_own_variable(tmp_path):
    data = synthetic_manifest()
    data["plan"] = data["plan"][:2]
    data["plan"][1]["branches"][1]["steps"] = [_run("smooth", {"image": "image"}, {"image_out": "tmp"}),
                                               _run("smooth", {"image": "tmp"}, {"image_out": "image"})]
    route = Session(make_bundle(tmp_path / "b", data), "onnxruntime").run_rows({"image": _items(0.2, 0.8, 0.3)})
    np.testing.assert_allclose(route.image[:, 0, 0, 0], [0.2, 0.8 * 0.81, 0.3], rtol=1e-6)
    assert route.decisions["route"].tolist() == [0, 1, 0]


def test_a_subset_of_rows_may_not_reshape_a_variable(tmp_path):
    data = synthetic_manifest()
    data["plan"] = data["plan"][:2]
    data["plan"][1]["branches"][1]["steps"] = [{"op": "resize", "in": "image", "out": "image", "scale": 0.5}]
    session = Session(make_bundle(tmp_path / "b", data), "onnxruntime")
    with pytest.raises(EdgeRestoreError, match=r"the resize of 'image' writes 'image' with shape \(1, 4, 4\) for "
                                               r"1 of 2 rows, but 'image' has shape \(1, 8, 8\)"):
        session.run_rows({"image": _items(0.2, 0.8)})
    route = session.run_rows({"image": _items(0.8, 0.9)})  # every row resizes: fine
    assert route.image.shape == (2, 1, 4, 4)


# -- round trips ------------------------------------------------------------------------------------
def test_exported_manifest_round_trips_to_the_same_text(small_bundle, synthetic):
    for root in (small_bundle, synthetic):
        text = (root / MANIFEST).read_text()
        assert json.dumps(Manifest.from_json(json.loads(text)).to_json(), indent=2) + "\n" == text


def model_manifests() -> dict[str, dict[str, Any]]:
    """Every registered model's manifest as the exporter builds it (random or shipped weights,
    no ONNX export: file hashes are placeholders; the plan, stages and io are the model's)."""
    import torch

    from edgerestore.export.bundle_writer import build_manifest, stage_entry
    from edgerestore.models import create_model, list_models

    torch.manual_seed(0)
    manifests = {}
    for entry in list_models():
        model = create_model(entry.name)
        split = model.stage_plan()
        stages = {s.name: stage_entry(s, f"{s.name}.onnx", "0" * 64, 256.0) for s in split.stages}
        manifest = build_manifest(model, entry.name, stages, split.plan, split.initial, [], split.output)
        manifests[entry.name] = json.loads(json.dumps(manifest.to_json()))
    return manifests


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    return model_manifests()


def test_every_model_manifest_round_trips(manifests):
    assert {"pathrestore", "rlrestore", "srn", "allinone", "deblurganv2", "memnet", "dncnn"} <= set(manifests)
    ops = set()
    for name, data in manifests.items():
        manifest = Manifest.from_json(data)
        assert manifest.to_json() == data, name
        assert json.dumps(manifest.to_json(), indent=2) == json.dumps(data, indent=2), name  # key order too
        ops |= {step["op"] for step in _walk(data["plan"])}
    assert ops == {"run", "switch", "loop", "resize"}


# -- fuzz ---------------------------------------------------------------------------------------------
def _nodes(value: Any, path: tuple = ()) -> list[tuple]:
    """Paths to every value inside a JSON document."""
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _nodes(item, path + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _nodes(item, path + (i,))
    return found


def _get(doc: Any, path: tuple) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def _strings(value: Any) -> set[str]:
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        items = list(value.items())
    else:
        items = list(enumerate(value)) if isinstance(value, list) else []
    return set().union(*[_strings(v) | ({k} if isinstance(k, str) else set()) for k, v in items])


def _rename(value: Any, old: str, new: str) -> Any:
    if isinstance(value, str):
        return new if value == old else value
    if isinstance(value, dict):
        return {(new if k == old else k): _rename(v, old, new) for k, v in value.items()}
    return [_rename(v, old, new) for v in value] if isinstance(value, list) else value


def _containers(inner: st.SearchStrategy) -> st.SearchStrategy:
    keys = st.sampled_from(["op", "in", "out", "name", "steps", "shape", "stage"])
    return st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3)


_LEAVES = st.none() | st.booleans() | st.integers(-3, 70) | st.floats(allow_nan=True) | st.sampled_from(
    ["image", "logits", "x", "", "run", "fp32", "../x.onnx", "0" * 64, "nul\x00", "n" * 300, "/", ".", "two\nlines"])
_JSON = st.recursive(_LEAVES, _containers, max_leaves=6)


@st.composite
def mutated(draw, sources: list[dict]) -> dict:
    doc = copy.deepcopy(draw(st.sampled_from(sources)))
    for _ in range(draw(st.integers(1, 3))):
        paths = _nodes(doc)[1:]
        path = draw(st.sampled_from(paths))
        parent, key = _get(doc, path[:-1]), path[-1]
        action = draw(st.sampled_from(["delete", "replace", "copy", "rename", "duplicate", "add"]))
        if action == "delete":
            del parent[key]
        elif action == "replace":
            parent[key] = draw(_JSON)
        elif action == "copy":  # another field's value here: right types in the wrong place
            parent[key] = copy.deepcopy(_get(doc, draw(st.sampled_from(paths))))
        elif action == "rename":
            names = sorted(_strings(doc) - {"format", "edgerestore.bundle"})  # those only make a non-manifest
            doc = _rename(doc, draw(st.sampled_from(names)), draw(st.sampled_from(names + ["ghost"])))
        elif action == "duplicate" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(["extra", "op", "stop", "like", "divisor", "blend"]))] = draw(_JSON)
        if not isinstance(doc, dict) or not _nodes(doc)[1:]:
            break
    return doc


@pytest.fixture(scope="module")
def fuzz_sources(manifests, synthetic) -> list[dict]:
    return [manifests[name] for name in ("pathrestore", "rlrestore", "srn", "allinone")] + \
        [json.loads((synthetic / MANIFEST).read_text())]


def test_fuzzed_manifests_load_or_refuse_in_one_line(fuzz_sources):
    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(mutated(fuzz_sources))
    def check(doc):
        try:
            manifest = Manifest.from_json(doc)
        except EdgeRestoreError as err:
            assert "\n" not in str(err)
            return
        again = manifest.to_json()
        assert Manifest.from_json(again).to_json() == again  # what loads writes back the same

    check()


def test_fuzzed_bundles_load_or_refuse(synthetic, tmp_path):
    """The same against the files: the whole load (Bundle) of a mutated synthetic bundle."""
    source = json.loads((synthetic / MANIFEST).read_text())
    root = tmp_path / "b"
    shutil.copytree(synthetic, root)

    @settings(max_examples=60, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(mutated([source]))
    def check(doc):
        (root / MANIFEST).write_text(json.dumps(doc))
        try:
            Bundle(root)
        except EdgeRestoreError as err:
            assert "\n" not in str(err)

    check()
