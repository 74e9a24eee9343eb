"""`edgerestore check`: TensorRT compatibility of stage graphs, decided without TensorRT."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgerestore.runtime.bundle import Bundle, file_sha256
from edgerestore.runtime.tensorrt.check import ERROR, NOTE, WARNING, check_bundle, check_model


# -- the bundles the test-suite exports ---------------------------------------------------
@pytest.fixture(scope="module")
def pathrestore_bundle(tmp_path_factory) -> Path:
    """The tiny Path-Restore of test_pathrestore.py: 15 stages, fixed 63x63 tiles, LSTM router."""
    import torch

    from edgerestore.export import write_bundle
    from edgerestore.models import PathRestore

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("bundles") / "pathrestore_small"
    write_bundle(PathRestore(features=16).eval(), "pathrestore", out)
    return out


def with_int8_stages(bundle: Path, out: Path) -> Path:
    """A copy of ``bundle`` with a Q/DQ INT8 graph per stage written by the exporter's own
    quantizer (calibration/quantize.py), every activation at amax 2."""
    from edgerestore.calibration.quantize import quantize_stage

    shutil.copytree(bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    for stage, spec in manifest["stages"].items():
        source = out / spec["files"]["fp32"]
        graph = onnx.load(str(source)).graph
        weights = {t.name for t in graph.initializer}
        tensors = {name for node in graph.node for name in [*node.input, *node.output]
                   if name and name not in weights}
        target = out / f"{stage}.int8.onnx"
        quantize_stage(source, target, {name: 2.0 for name in tensors}, [])
        spec["files"]["int8"] = target.name
        spec["sha256"]["int8"] = file_sha256(target)
    manifest["precisions"] = ["fp32", "int8"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module")
def exported(small_bundle, pathrestore_bundle, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("int8")
    return {"dncnn": small_bundle, "pathrestore": pathrestore_bundle,
            "dncnn+int8": with_int8_stages(small_bundle, root / "dncnn"),
            "pathrestore+int8": with_int8_stages(pathrestore_bundle, root / "pathrestore")}


@pytest.mark.parametrize("kind", ["dncnn", "pathrestore", "dncnn+int8", "pathrestore+int8"])
def test_every_exported_bundle_passes(exported, kind, run_cli):
    bundle = Bundle(exported[kind])
    found = check_bundle(bundle)
    # INT8: the only finding is the note that TensorRT builds the unsigned activations signed
    notes = [f for f in found if f.severity == "note"]
    assert [f for f in found if f.severity != "note"] == []
    assert all(f.precision == "int8" and "TensorRT builds them as signed INT8" in f.reason for f in notes)
    assert bool(notes) == kind.endswith("int8")  # at most one per stage: a stage may have no ReLU output quantized
    assert len({f.stage for f in notes}) == len(notes)
    assert check_bundle(bundle, dla=True) == found  # tiles pin every dynamic H/W
    checked = {(s, p) for s, info in bundle.stages.items() for p in info.files}
    assert len(checked) == sum(len(info.files) for info in bundle.stages.values())
    if kind.endswith("int8"):
        assert all("int8" in info.files for info in bundle.stages.values())
        qdq = onnx.load(str(bundle.stage_path(next(iter(bundle.stages)), "int8")))
        assert any(n.op_type == "DequantizeLinear" for n in qdq.graph.node)  # really checked a Q/DQ graph
    result = run_cli("check", exported[kind], "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["errors"] == 0 and report["stage_files"] == len(checked)


# -- hand-made graphs ----------------------------------------------------------------------
def model(nodes, inputs, outputs, initializers=(), opset=17, extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])


def image_input(name="x", c=1, h=8, w=8):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", c, h, w])


def output(name="y"):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def qdq_conv(op="Conv", channels=4, weight_scale=None, weight_axis=0, activation_zero=0,
             zero_dtype=np.int8, bias_dq=False):
    """x -> Q/DQ -> Conv/ConvTranspose(DQ(int8 weights)) -> y, every knob a TensorRT rule."""
    weight_shape = (channels, 1, 3, 3) if op == "Conv" else (1, channels, 3, 3)
    if weight_scale is None:  # per channel on the output-channel axis
        weight_scale = np.full(channels, 0.01, np.float32)
    inits = [const("s", np.float32(0.02)), const("zp", zero_dtype(activation_zero)),
             const("w_q", np.ones(weight_shape, np.int8)), const("w_s", np.asarray(weight_scale, np.float32)),
             const("w_zp", np.zeros(np.shape(weight_scale), np.int8))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="quant_x"),
             helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dequant_x"),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w"], name="dequant_w", axis=weight_axis)]
    conv_inputs = ["xd", "w"]
    if bias_dq:
        inits += [const("b_q", np.zeros(channels, np.int32)), const("b_s", np.full(channels, 1e-4, np.float32)),
                  const("b_zp", np.zeros(channels, np.int32))]
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_zp"], ["b"], name="dequant_b", axis=0))
        conv_inputs.append("b")
    nodes.append(helper.make_node(op, conv_inputs, ["y"], name="conv", pads=[1, 1, 1, 1]))
    return model(nodes, [image_input()], [output()], inits)


def reasons(findings, severity=ERROR):
    return [f"{f.node}: {f.reason}" for f in findings if f.severity == severity]


def test_a_clean_qdq_conv_passes():
    assert check_model(qdq_conv()) == []
    assert check_model(qdq_conv("ConvTranspose", weight_axis=1)) == []


def test_nonzero_is_a_data_dependent_shape():
    graph = model([helper.make_node("NonZero", ["x"], ["y"], name="nz")], [image_input()], [output()])
    assert reasons(check_model(graph)) == ["nz (NonZero): NonZero has a data-dependent output shape: no static engine "
                                           "profile or tile batch can hold it"]


def test_asymmetric_zero_point_is_refused():
    found = reasons(check_model(qdq_conv(activation_zero=3)))
    assert len(found) == 2  # the Q and the DQ of the activation
    assert all("zero point 3 != 0: asymmetric quantization" in r for r in found)
    assert found[0].startswith("quant_x (QuantizeLinear)")


def test_per_tensor_conv_weights_are_refused():
    found = reasons(check_model(qdq_conv(weight_scale=np.float32(0.01))))
    assert found == ["conv (Conv): per-tensor weight scale: Conv weights need per-channel scales on axis 0 "
                     "(one per output channel)"]
    assert check_model(qdq_conv(channels=1, weight_scale=np.float32(0.01))) == []  # one channel: the same thing


def test_weight_scales_on_the_wrong_axis():
    found = reasons(check_model(qdq_conv("ConvTranspose", weight_axis=0)))
    assert found == ["conv (ConvTranspose): weight scales on axis 0: TensorRT expects per-channel axis 1 for "
                     "ConvTranspose weights"]


def test_unsupported_op():
    graph = model([helper.make_node("Hardmax", ["x"], ["y"], name="hm")], [image_input()], [output()])
    assert reasons(check_model(graph)) == ["hm (Hardmax): Hardmax is not supported by TensorRT's ONNX parser "
                                           "(8.5 operator table)"]
    made_up = model([helper.make_node("Frobnicate", ["x"], ["y"], name="f")], [image_input()], [output()])
    assert reasons(check_model(made_up)) == ["f (Frobnicate): Frobnicate is not in TensorRT's ONNX operator table (8.5)"]


def test_unsigned_and_int32_quantization():
    assert any("signed int8 only" in r for r in reasons(check_model(qdq_conv(zero_dtype=np.uint8))))
    found = reasons(check_model(qdq_conv(bias_dq=True)))
    assert found == ["dequant_b (DequantizeLinear): int32 Q/DQ (a quantized bias): TensorRT's Q/DQ take int8 only and "
                     "quantize biases themselves (ONNX Runtime's quantize_static: extra_options QuantizeBias=False)"]


def test_missing_zero_point_and_per_axis_activation():
    inits = [const("s", np.full(3, 0.1, np.float32)), const("zp", np.zeros(3, np.int8))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s"], ["q"], name="q", axis=1),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dq", axis=1)]
    found = reasons(check_model(model(nodes, [image_input(c=3)], [output()], inits)))
    assert found == ["q (QuantizeLinear): no zero-point input: TensorRT 8.5 needs all three Q/DQ inputs (an int8 zero "
                     "point of 0)",
                     "q (QuantizeLinear): per-axis scales on an activation: TensorRT quantizes activations per tensor "
                     "only",
                     "dq (DequantizeLinear): per-axis scales on an activation: TensorRT quantizes activations per "
                     "tensor only"]


def test_shapes_computed_from_values_vs_from_shapes():
    """Reshape's target from Shape(x) is fine; from the values of x it is data-dependent."""
    flat = helper.make_tensor_value_info("s", TensorProto.INT64, ["batch", 2])
    from_values = model([helper.make_node("Cast", ["s"], ["shape"], to=TensorProto.INT64),
                         helper.make_node("ReduceMax", ["shape"], ["target"], axes=[0], keepdims=0),
                         helper.make_node("Reshape", ["x", "target"], ["y"], name="r")],
                        [image_input(), flat], [output()])
    assert reasons(check_model(from_values)) == ["r (Reshape): shape input 'target' is computed from tensor values: a "
                                                 "data-dependent shape TensorRT cannot fix at build time"]
    from_shape = model([helper.make_node("Shape", ["x"], ["dims"]),
                        helper.make_node("Slice", ["dims", "zero", "one"], ["n"]),
                        helper.make_node("Concat", ["n", "minus1"], ["target"], axis=0),
                        helper.make_node("Reshape", ["x", "target"], ["y"], name="r")],
                       [image_input()], [output()],
                       [const("zero", np.array([0])), const("one", np.array([1])), const("minus1", np.array([-1]))])
    assert check_model(from_shape) == []


def test_pad_and_resize_modes():
    pad = model([helper.make_node("Pad", ["x", "pads"], ["y"], name="p", mode="wrap")], [image_input()], [output()],
                [const("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1]))])
    assert reasons(check_model(pad)) == ["p (Pad): Pad mode 'wrap' is not supported (TensorRT pads constant, edge, "
                                         "reflect)"]
    reflect = model([helper.make_node("Pad", ["x", "pads"], ["y"], mode="reflect")], [image_input()], [output()],
                    [const("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1]))])
    assert check_model(reflect) == []
    resize = model([helper.make_node("Resize", ["x", "", "scales"], ["y"], name="rs", mode="cubic",
                                     coordinate_transformation_mode="tf_crop_and_resize")],
                   [image_input()], [output()], [const("scales", np.array([1, 1, 2, 2], np.float32))])
    found = reasons(check_model(resize))
    assert [r.split(":")[1].strip() for r in found] == [
        "Resize mode 'cubic' is not supported (TensorRT", "Resize coordinate_transformation_mode 'tf_crop_and_resize' "
                                                          "is not supported (TensorRT"]


def test_opset_domain_and_non_constant_weights():
    assert reasons(check_model(model([helper.make_node("Relu", ["x"], ["y"])], [image_input()], [output()],
                                     opset=18))) == [
        "graph: opset 18 is outside the range TensorRT 8.5 parses (9..17); export with opset 17"]
    custom = model([helper.make_node("Fused", ["x"], ["y"], name="f", domain="com.microsoft")], [image_input()],
                   [output()], extra_opsets=[helper.make_opsetid("com.microsoft", 1)])
    assert "TensorRT would need a plugin" in reasons(check_model(custom))[0]
    weights_in = helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 1, 3, 3])
    conv = model([helper.make_node("Conv", ["x", "w"], ["y"], name="c")], [image_input(), weights_in], [output()])
    assert reasons(check_model(conv)) == ["c (Conv): Conv weights must be a constant (initializer) for TensorRT"]


def test_dynamic_spatial_dims_need_a_tile_to_pin_them():
    dynamic = model([helper.make_node("Relu", ["x"], ["y"])], [image_input(h="height", w="width")], [output()])
    assert check_model(dynamic, tile=64) == [] and check_model(dynamic, tile=64, dla=True) == []
    warned = check_model(dynamic)
    assert reasons(warned, WARNING) == ["input 'x': dynamic H/W (height, width) and the manifest has no tile size to "
                                        "pin them: the build has no spatial range for the profile"]
    assert reasons(warned) == []
    assert reasons(check_model(dynamic, dla=True)) == [
        "input 'x': dynamic H/W (height, width) and the manifest has no tile size to pin them: DLA runs static shapes "
        "only"]
    channels = model([helper.make_node("Relu", ["x"], ["y"])], [image_input(c="c")], [output()])
    assert reasons(check_model(channels, tile=64)) == [
        "input 'x': axis 1 ('c') is dynamic: only the batch and a tile's H/W may be"]


def test_cli_lists_findings_and_fails(small_bundle, tmp_path, run_cli):
    bad = tmp_path / "bad"
    shutil.copytree(small_bundle, bad)
    onnx.save(model([helper.make_node("NonZero", ["input"], ["output"], name="nz")],
                    [image_input("input", h="height", w="width")], [output("output")]), str(bad / "main.onnx"))
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["stages"]["main"]["sha256"]["fp32"] = file_sha256(bad / "main.onnx")
    (bad / "manifest.json").write_text(json.dumps(manifest))
    result = run_cli("check", bad)
    assert result.exit_code == 1
    # (the manifest's tile pins the dynamic H/W: no warning; a manifest without a tile is
    # refused on load, see tests/test_bundle_schema.py)
    assert result.stdout.splitlines() == [
        "error: main [fp32] nz (NonZero): NonZero has a data-dependent output shape: no static engine profile or tile "
        "batch can hold it"]
    assert "fails the TensorRT check (1 stage files, 1 errors, 0 warnings)" in result.stderr
    report = json.loads(run_cli("check", bad, "--json").stdout)
    assert not report["ok"] and report["errors"] == 1 and report["findings"][0]["node"] == "nz (NonZero)"
    assert run_cli("check", bad, "--tile", "64").stdout.count("warning") == 0
    assert run_cli("check", tmp_path / "missing").exit_code == 1


# -- plugin layers, per TensorRT version ----------------------------------------------------
@pytest.fixture(scope="module")
def deblurgan_bundle(tmp_path_factory) -> Path:
    """A tiny DeblurGAN-v2 export: its FPN normalizes with InstanceNormalization (50 nodes)."""
    import torch

    from edgerestore.export import write_bundle
    from edgerestore.models.deblurganv2 import DeblurGANv2

    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("bundles") / "deblurgan_small"
    write_bundle(DeblurGANv2(variant="mobilenet-dsc", width=0.5, filters=16, fpn_filters=32).eval(), "deblurganv2",
                 out)
    return out


def test_plugin_ops_are_noted_per_tensorrt_version(deblurgan_bundle, run_cli):
    bundle = Bundle(deblurgan_bundle)
    norms = sum(n.op_type == "InstanceNormalization" for n in onnx.load(str(deblurgan_bundle / "main.onnx")).graph.node)
    [note] = check_bundle(bundle)  # default: every named release (8.5, 8.6, 10.3, 11)
    assert note.severity == NOTE and note.node == "graph" and norms > 1
    assert note.reason.startswith(f"{norms} InstanceNormalization nodes imported as the TensorRT plugin "
                                  "InstanceNormalization_TRT on TensorRT 8.5.2, 8.6.2: ")
    assert "initLibNvInferPlugins" in note.reason and "DLA" not in note.reason
    assert check_bundle(bundle, versions=((10, 3, 0), (11, 0, 0))) == []  # native from TensorRT 10
    assert "on TensorRT 8.6.2: " in check_bundle(bundle, versions=((8, 6, 2),))[0].reason
    assert "DLA cannot run a plugin layer" in check_bundle(bundle, dla=True, versions=((8, 5, 2),))[0].reason

    result = run_cli("check", deblurgan_bundle)
    assert result.exit_code == 0 and result.stdout.splitlines() == [note.line()]
    assert "passes the TensorRT check (1 stage files, 0 errors, 0 warnings, 1 notes)" in result.stderr
    assert run_cli("check", deblurgan_bundle, "--trt", "10.3").stdout == ""
    assert "on TensorRT 8.5.2: " in run_cli("check", deblurgan_bundle, "--trt", "8.5", "--trt", "10.3.0").stdout
    report = json.loads(run_cli("check", deblurgan_bundle, "--json", "--trt", "8.6").stdout)
    assert report["ok"] and report["notes"] == 1 and report["findings"][0]["severity"] == "note"
    bad = run_cli("check", deblurgan_bundle, "--trt", "9")
    assert bad.exit_code == 1 and bad.stderr.startswith("error: unknown TensorRT version '9'")
    assert bad.stderr.count("\n") == 1


def test_roi_align_is_a_plugin_in_every_release():
    rois = helper.make_tensor_value_info("rois", TensorProto.FLOAT, [4, 4])
    index = helper.make_tensor_value_info("index", TensorProto.INT64, [4])
    graph = model([helper.make_node("RoiAlign", ["x", "rois", "index"], ["y"], name="roi")],
                  [image_input(), rois, index], [output()])
    [note] = check_model(graph, tile=8)
    assert note.reason.startswith("1 RoiAlign node imported as the TensorRT plugin ROIAlign_TRT on TensorRT 8.5.2, "
                                  "8.6.2, 10.3.0, 11.0.0: ")


def test_trtexec_lines_name_every_input_of_a_routed_bundle(pathrestore_bundle, run_cli):
    """JetPack 5 builds with trtexec (tests/test_jetpack5.py): one line per stage, every input."""
    result = run_cli("build", pathrestore_bundle, "--trtexec", "8.5", "--max-batch", "4")
    lines = result.stdout.splitlines()
    assert result.exit_code == 0 and len(lines) == len(Bundle(pathrestore_bundle).stages) == 15
    [router] = [line for line in lines if "/pathfinder.onnx" in line]
    assert "--minShapes=features:1x16x63x63,h:1x32,c:1x32 --optShapes=features:4x16x63x63,h:4x32,c:4x32 " \
           "--maxShapes=features:4x16x63x63,h:4x32,c:4x32 --fp16 " in router
    assert router.endswith("--saveEngine=pathfinder.fp16.engine")
