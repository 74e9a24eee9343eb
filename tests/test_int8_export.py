"""``export --int8`` end to end on a tiny DnCNN: bundle layout, TensorRT caches checked
against calibration.json and the Q/DQ graphs, runtime precision selection."""

import json
import struct

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgerestore.calibration import trt_cache
from edgerestore.runtime.bundle import Bundle


def weight_integers(model):
    """Conv node -> its INT8 weight integers. The Q/DQ file keeps float weights behind a
    QuantizeLinear -> DequantizeLinear pair (the form TensorRT 8.x parses): the integers are
    what the QuantizeLinear computes, round half to even of weight / scale."""
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    found = {}
    for node in model.graph.node:
        dq = producer.get(node.input[1]) if node.op_type == "Conv" else None
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producer[dq.input[0]]
        assert q.op_type == "QuantizeLinear" and q.input[0] in init, "weights must be float behind a Q/DQ pair"
        weight, scale = init[q.input[0]], init[q.input[1]].reshape(-1, 1, 1, 1)
        assert np.array_equal(scale.ravel(), init[dq.input[1]].ravel())  # Q and DQ: the same grid
        found[node.name] = np.clip(np.round(weight / scale), -127, 127).astype(np.int8)
    return found


def write_images(folder, count, shape, seed=0):
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        # smooth content, so a denoiser has something to keep
        img = cv2.GaussianBlur((rng.random(shape) * 255).astype(np.uint8), (9, 9), 3)
        cv2.imwrite(str(folder / f"img{i}.png"), img)
    return folder


def save_tiny_dncnn(path):
    """A 5-layer, 16-channel gray DnCNN checkpoint (seeded), its last layer scaled down."""
    from edgerestore.models import DnCNN, save_checkpoint

    torch.manual_seed(0)
    model = DnCNN(channels=1, depth=5, features=16)
    with torch.no_grad():
        model.model[-1].weight.mul_(0.1)
    save_checkpoint(path, model.state_dict(), "dncnn", model.config())
    return path


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    return save_tiny_dncnn(tmp_path_factory.mktemp("weights") / "tiny_dncnn.pth")


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("data") / "calib", 6, (72, 84))


@pytest.fixture(scope="module")
def int8_export(tiny_weights, calib_dir, tmp_path_factory):
    from click.testing import CliRunner

    from edgerestore.runtime.cli import cli

    out = tmp_path_factory.mktemp("bundles") / "tiny_int8"
    result = CliRunner().invoke(cli, ["export", "dncnn", "--weights", str(tiny_weights), "--int8", "--calib",
                                      str(calib_dir), "--calib-degrade", "gaussian:25", "--calib-crop", "64",
                                      "--calib-images", "4", "--holdout", "2", "--trt-version", "8.5", "--method", "percentile",
                                      "-o", str(out), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def test_bundle_records_both_precisions(int8_export):
    out, report = int8_export
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precisions"] == ["fp32", "int8"]
    stage = manifest["stages"]["main"]
    assert stage["files"] == {"fp32": "main.onnx", "int8": "main.int8.onnx"}
    assert set(stage["sha256"]) == {"fp32", "int8"} and stage["calibration_cache"] == "calib/main.cache"
    assert Bundle(out).precisions == ["int8", "fp32"]
    assert sorted(p.name for p in out.iterdir()) == ["calib", "calibration.json", "main.int8.onnx", "main.onnx",
                                                     "manifest.json"]
    assert not list(out.parent.glob(".*tmp*")), "temporary export directory left behind"
    # the report: FP32 and INT8 scored on the held-out crops, per backend
    rows = {(s["backend"], s["precision"]) for s in report["int8"]["scores"]}
    assert {("onnxruntime", "fp32"), ("onnxruntime", "int8")} <= rows
    assert report["int8"]["held_out_images"] == 2 and report["int8"]["calibration_images"] == 4
    # 16 features, 3x3: the first and last conv (1x16x9 = 144 weights) stay FP32, three 16x16x9 run INT8
    share = 3 * 2304 / (2 * 144 + 3 * 2304)
    assert report["int8"]["int8_mac_share"] == pytest.approx(share, rel=1e-12)
    assert json.loads((out / "calibration.json").read_text())["int8_mac_share"] == pytest.approx(share, rel=1e-12)


def test_every_cache_matches_calibration_json_and_the_qdq_graph(int8_export):
    out, _ = int8_export
    calibration = json.loads((out / "calibration.json").read_text())
    assert calibration["trt_header"] == "TRT-8502-EntropyCalibration2"
    caches = sorted((out / "calib").glob("*.cache"))
    assert [c.name for c in caches] == [f"{s}.cache" for s in sorted(calibration["stages"])]
    for cache in caches:
        stage = calibration["stages"][cache.name[:-len(".cache")]]
        lines = cache.read_text().splitlines()
        assert lines[0] == "TRT-8502-EntropyCalibration2"
        entries = dict(line.rsplit(": ", 1) for line in lines[1:])
        assert len(entries) == len(lines) - 1 == len(stage["quantized"]) > 0
        assert sorted(entries) == sorted(stage["quantized"])
        for tensor, digits in entries.items():
            assert len(digits) == 8
            scale = struct.unpack(">f", bytes.fromhex(digits))[0]
            assert scale == np.float32(stage["amax"][tensor] / 127)
        # and the Q/DQ ONNX quantizes exactly these tensors with exactly these scales
        graph = onnx.load(str(out / "main.int8.onnx")).graph
        constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        q = {n.input[0]: float(constants[n.input[1]]) for n in graph.node
             if n.op_type == "QuantizeLinear" and n.input[0] not in constants}
        assert sorted(q) == sorted(entries)
        # DnCNN with its first conv FP32: every quantized tensor is a ReLU output or read only by a ReLU
        assert stage["unsigned"] == sorted(entries)
        for tensor, scale in q.items():
            zero = next(n.input[2] for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
            # symmetric; the non-negative tensors on UINT8 over the same range (255 steps instead of 127)
            unsigned = tensor in stage["unsigned"]
            assert constants[zero].dtype == (np.uint8 if unsigned else np.int8) and int(constants[zero]) == 0
            levels = 255 if unsigned else 127
            assert scale * levels == pytest.approx(trt_cache.read(cache)[1][tensor] * 127, rel=1e-6)


def test_first_and_last_conv_stay_fp32_with_per_channel_weights(int8_export):
    out, _ = int8_export
    calibration = json.loads((out / "calibration.json").read_text())
    assert calibration["stages"]["main"]["fp32_nodes"] == ["/model/model.0/Conv", "/model/model.8/Conv"]
    graph = onnx.load(str(out / "main.int8.onnx")).graph
    producers = {o: n for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    dequantized = [producers.get(c.input[1]) is not None and producers[c.input[1]].op_type == "DequantizeLinear"
                   for c in convs]
    assert dequantized == [False, True, True, True, False]
    dq = producers[convs[1].input[1]]
    assert numpy_helper.to_array(next(t for t in graph.initializer if t.name == dq.input[1])).shape == (16,)
    # biases stay float (TensorRT quantizes them) and carry the bias correction: every
    # convolution's shift is recorded and is what separates the Q/DQ bias from the FP32 one
    shifts = calibration["stages"]["main"]["bias_correction"]
    assert sorted(shifts) == sorted(c.output[0] for c in convs)
    fp32 = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out / "main.onnx")).graph.initializer}
    int8 = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for conv in convs:
        assert int8[conv.input[2]].dtype == np.float32
        np.testing.assert_allclose(int8[conv.input[2]] - fp32[conv.input[2]], shifts[conv.output[0]], atol=1e-6)
    assert any(np.abs(v).max() > 0 for v in shifts.values())


def test_runtime_defaults_to_int8_and_takes_precision(int8_export, calib_dir, run_cli):
    out, _ = int8_export
    reports = {}
    for precision in (None, "fp32", "int8"):
        args = ["eval", out, "--data", calib_dir, "--degrade", "gaussian:25", "--backend", "onnxruntime", "--json"]
        result = run_cli(*args, *(["--precision", precision] if precision else []))
        assert result.exit_code == 0, result.output
        reports[precision] = json.loads(result.stdout)
    assert reports[None]["precision"] == "int8" and reports["fp32"]["precision"] == "fp32"
    assert reports[None]["psnr"] == reports["int8"]["psnr"]
    assert abs(reports["int8"]["psnr"] - reports["fp32"]["psnr"]) < 1.0
    result = run_cli("restore", out, calib_dir / "img0.png", "-o", calib_dir.parent / "o.png", "--precision", "fp32",
                     "--backend", "openvino", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["precision"] == "fp32"


def test_max_drop_search_meets_its_budget(tiny_weights, calib_dir, tmp_path):
    from edgerestore.calibration import FolderSplit, Int8Options
    from edgerestore.export import export_bundle

    split = FolderSplit(calib_dir, "gaussian:25", count=3, holdout=2, crop=48)
    # A budget of 1e-4 dB: on this tiny model all-INT8 loses 3e-3 dB on the 2 held-out crops
    # and one middle convolution alone in INT8 about -3e-5 dB (measured in the reference
    # arithmetic, identical on every CPU up to float32 rounding, ~1e-6 dB here), so the search
    # ranks all five layers and keeps some, not all, in FP32.
    budget = 1e-4
    report = export_bundle("dncnn", tmp_path / "b", tiny_weights, int8=Int8Options(split, method="minmax",
                                                                                     max_drop=budget)).int8
    search = report.search
    assert search.drop_db + search.margin_db <= budget
    assert [k for k, *_ in search.steps] == list(range(len(search.steps)))
    assert len(search.sensitivity) == 5  # all-INT8 misses the budget: all five convs ranked
    calibration = json.loads((tmp_path / "b" / "calibration.json").read_text())
    assert calibration["stages"]["main"]["fp32_nodes"] == [n for _, n in search.fp32_layers]
    from edgerestore.calibration.policy import all_layers, layer_weights

    bundle = Bundle(tmp_path / "b")
    assert list(layer_weights(bundle, all_layers(bundle)).values()) == [144, 2304, 2304, 2304, 144]
    fp32, int8 = report.scores[0], report.scores[1]
    assert fp32.psnr - int8.psnr == pytest.approx(search.drop_db, abs=1e-9)  # the report scores what the search chose
    assert 0 < len(search.fp32_layers) < 5


@pytest.fixture(scope="module")
def plain_export(tiny_weights, tmp_path_factory):
    from edgerestore.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny_fp32"
    export_bundle("dncnn", out, tiny_weights)
    return out


def initializers(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_fp32_stage_is_equalized_and_computes_what_the_plain_export_does(int8_export, plain_export):
    out, _ = int8_export
    record = json.loads((out / "calibration.json").read_text())["stages"]["main"]["equalization"]
    assert [p[0] for p in record["pairs"]] == [f"/model/model.{i}/Conv" for i in (0, 2, 4, 6)]
    assert 0 < record["max_rel_error"] <= 1e-4
    equalized = Bundle(out).stage_path("main", "fp32")  # checks the manifest's (updated) sha256
    new, old = initializers(equalized), initializers(plain_export / "main.onnx")
    assert sorted(new) == sorted(old) and not np.allclose(new["model.0.weight"], old["model.0.weight"])
    x = np.random.default_rng(3).random((2, 1, 40, 52), dtype=np.float32)
    a, b = (onnxruntime_output(path, x) for path in (equalized, plain_export / "main.onnx"))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def onnxruntime_output(path, x):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_without_bias_correction_or_equalization_the_fp32_graph_and_biases_stay(tiny_weights, calib_dir, tmp_path,
                                                                                 run_cli, plain_export):
    out = tmp_path / "plain"
    result = run_cli("export", "dncnn", "--weights", tiny_weights, "--int8", "--calib", calib_dir, "--calib-degrade",
                     "gaussian:25", "--calib-crop", "64", "--calib-images", "3", "--holdout", "2",
                     "--no-bias-correction", "--no-equalize", "-o", out)
    assert result.exit_code == 0, result.output
    stage = json.loads((out / "calibration.json").read_text())["stages"]["main"]
    assert stage["bias_correction"] == {} and stage["equalization"] is None
    fp32 = initializers(out / "main.onnx")
    assert all(np.array_equal(v, initializers(plain_export / "main.onnx")[k]) for k, v in fp32.items())
    int8 = onnx.load(str(out / "main.int8.onnx")).graph
    biases = [n.input[2] for n in int8.node if n.op_type == "Conv"]
    for t in int8.initializer:
        if t.name in biases:
            assert np.array_equal(numpy_helper.to_array(t), fp32[t.name])


@pytest.mark.parametrize("bits,top", [(7, 64), (8, 127)])
def test_weight_grid_is_the_one_asked_for(tiny_weights, calib_dir, tmp_path, bits, top):
    """7-bit weights (the default) stay within [-64, 64], where AVX2's pairwise 16-bit sums of
    uint8 activations times weights cannot saturate (2 * 255 * 64 < 32767); 8-bit ones use
    [-127, 127]. Each output channel's largest weight lands on the top of the grid."""
    from edgerestore.calibration import FolderSplit, Int8Options
    from edgerestore.export import export_bundle

    split = FolderSplit(calib_dir, "gaussian:25", count=3, holdout=2, crop=48)
    report = export_bundle("dncnn", tmp_path / "b", tiny_weights, int8=Int8Options(split, weight_bits=bits)).int8
    model = onnx.load(str(tmp_path / "b" / "main.int8.onnx"))
    grids = list(weight_integers(model).values())
    assert grids and all(np.abs(g).reshape(len(g), -1).max(1).tolist() == [top] * len(g) for g in grids)
    assert report.weight_bits == bits
    assert json.loads((tmp_path / "b" / "calibration.json").read_text())["weight_bits"] == bits


def test_signed_activations_validate_what_tensorrt_computes(tiny_weights, calib_dir, int8_export, tmp_path):
    """`--signed-activations` (the installed CLI, a fresh process) writes every activation on
    INT8: the graph TensorRT's build makes of the default bundle (runtime/tensorrt/signed.py),
    with the same ranges; the default bundle's report says TensorRT runs it so."""
    from test_installed_cli import edgerestore

    from edgerestore.runtime.tensorrt.signed import to_signed_int8

    out = tmp_path / "signed"
    result = edgerestore("export", "dncnn", "--weights", tiny_weights, "--int8", "--calib", calib_dir,
                         "--calib-degrade", "gaussian:25", "--calib-crop", "64", "--calib-images", "4", "--holdout",
                         "2", "--trt-version", "8.5", "--method", "percentile", "--signed-activations", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "unsigned 8 bits" not in result.stdout
    calibration = json.loads((out / "calibration.json").read_text())
    assert calibration["activations"] == "signed" and calibration["stages"]["main"]["unsigned"] == []
    signed = onnx.load(str(out / "main.int8.onnx"))
    assert to_signed_int8(signed) == (signed, 0)  # nothing left for TensorRT's build to convert
    default = json.loads((int8_export[0] / "calibration.json").read_text())
    assert default["activations"] == "unsigned" and default["int8_mac_share"] == calibration["int8_mac_share"]
    # the same calibration ranges, whichever grid they are written on
    assert default["stages"]["main"]["amax"] == pytest.approx(calibration["stages"]["main"]["amax"], rel=1e-6)
