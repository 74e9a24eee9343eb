"""Unsigned activations: ReLU outputs on UINT8 (zero point 0) for ONNX Runtime and OpenVINO,
turned back into signed INT8 over the same range for TensorRT (calibration/quantize.py,
runtime/tensorrt/signed.py)."""

import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgerestore.calibration.adaround import input_grid
from edgerestore.calibration.bias_correction import session_with_outputs
from edgerestore.calibration.quantize import (SIGNED_LEVELS, UNSIGNED_LEVELS, activation_amax, nonnegative_tensors,
                                              quantize_stage, unsigned_activations)
from edgerestore.calibration.scales import cpu_session
from edgerestore.runtime.bundle import Bundle, file_sha256
from edgerestore.runtime.tensorrt import engines
from edgerestore.runtime.tensorrt.build import build_engines
from edgerestore.runtime.tensorrt.signed import to_signed_int8

from fake_tensorrt import fake_tensorrt

ORIN = ("Orin", (8, 7))


@pytest.fixture
def bundle(small_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(small_bundle, tmp_path / "dncnn"))


def tile(seed=0, size=48):
    rng = np.random.default_rng(seed)
    return rng.random((2, 1, size, size), dtype=np.float32)


def calibrated_amax(path: Path) -> dict[str, float]:
    """Max |x| of the input and of every Conv/Relu output on a few random tiles."""
    model = onnx.load(str(path))
    names = [n.output[0] for n in model.graph.node if n.op_type in ("Conv", "Relu")]
    x = tile()
    values = session_with_outputs(model, names).run(names, {"input": x})
    return {"input": float(np.abs(x).max()), **{n: float(np.abs(v).max()) for n, v in zip(names, values)}}


def zero_points(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Activation tensor -> the zero-point initializer of its QuantizeLinear."""
    constants = {t.name: t for t in model.graph.initializer}
    return {n.input[0].removesuffix("_QuantizeLinear_Input"): constants[n.input[2]] for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in constants}


def write_int8(root: Path, unsigned=True) -> Path:
    """The bundle's INT8 stage as `export --int8` writes it (ranges from random tiles)."""
    path = root / "main.int8.onnx"
    quantize_stage(root / "main.onnx", path, calibrated_amax(root / "main.onnx"), [], unsigned=unsigned)
    import json

    manifest = json.loads((root / "manifest.json").read_text())
    manifest["stages"]["main"]["files"]["int8"] = path.name
    manifest["stages"]["main"]["sha256"]["int8"] = file_sha256(path)
    manifest["precisions"] = ["fp32", "int8"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_nonnegative_tensors_are_relu_outputs_and_what_only_relus_read(bundle):
    model = onnx.load(str(bundle / "main.onnx"))
    relus = [n for n in model.graph.node if n.op_type == "Relu"]
    found = nonnegative_tensors(model)
    assert found == {n.output[0] for n in relus} | {n.input[0] for n in relus}
    assert "input" not in found and model.graph.output[0].name not in found  # the image and the residual may be negative


def test_unsigned_grid_is_uint8_zero_point_0_over_the_same_range(bundle):
    amax = calibrated_amax(bundle / "main.onnx")
    unsigned = write_int8(bundle)
    model = onnx.load(str(unsigned))
    expected = nonnegative_tensors(onnx.load(str(bundle / "main.onnx")))
    zeros = zero_points(model)
    assert {name for name, z in zeros.items() if z.data_type == onnx.TensorProto.UINT8} == expected & set(zeros)
    assert set(unsigned_activations(unsigned)) == expected & set(zeros) and expected & set(zeros)
    assert all(not numpy_helper.to_array(z).any() for z in zeros.values())  # zero point 0 everywhere
    # the same amax either way: 255 steps of amax / 255, or 127 of amax / 127
    got = activation_amax(model)
    # ONNX Runtime gives a Conv output that only a ReLU reads the ReLU's range
    relu_of = {n.input[0]: n.output[0] for n in onnx.load(str(bundle / "main.onnx")).graph.node if n.op_type == "Relu"}
    for name, value in got.items():
        assert value == pytest.approx(amax[relu_of.get(name, name)], rel=1e-6), name
    signed = bundle / "signed.onnx"
    quantize_stage(bundle / "main.onnx", signed, amax, [], unsigned=False)
    assert unsigned_activations(signed) == []
    assert activation_amax(onnx.load(str(signed))) == pytest.approx(got, rel=1e-6)


def test_unsigned_activations_halve_the_rounding_step(bundle):
    """In the Q/DQ arithmetic a ReLU output quantized on UINT8 is off by at most amax / 510
    (half a step of amax / 255), on INT8 by at most amax / 254: a quarter of the rounding noise."""
    amax = calibrated_amax(bundle / "main.onnx")
    unsigned, signed = write_int8(bundle), bundle / "signed.onnx"
    quantize_stage(bundle / "main.onnx", signed, amax, [], unsigned=False)
    node = next(n for n in onnx.load(str(bundle / "main.onnx")).graph.node if n.op_type == "Relu")
    conv, relu = node.input[0], node.output[0]
    x = tile(1)
    errors = {}
    for name, path in (("unsigned", unsigned), ("signed", signed)):
        model = onnx.load(str(path))
        # ReLU of the convolution's output (in this graph), and the same as the next layer reads it:
        # after the Q/DQ pairs of the convolution's output and the ReLU's
        dq = next(n.output[0] for n in model.graph.node
                  if n.op_type == "DequantizeLinear" and n.input[0].startswith(relu))
        before, rounded = session_with_outputs(model, [conv, dq]).run([conv, dq], {"input": x})
        exact = np.maximum(before, 0)
        levels = UNSIGNED_LEVELS if name == "unsigned" else SIGNED_LEVELS
        step = amax[relu] / levels
        inside = exact <= amax[relu]
        # half a step, plus float32 rounding of the values (|x| <= amax)
        assert np.abs(rounded - exact)[inside].max() <= step / 2 + 4e-7 * amax[relu], name
        assert np.abs(rounded - exact)[inside].max() > step / 4, name  # the grid really is this coarse
        errors[name] = float(np.mean((rounded - exact)[inside] ** 2))
    # uniform rounding noise: step^2 / 12, a quarter on the UINT8 grid (a third or less allows for the zeros,
    # which round exactly on both grids)
    assert errors["unsigned"] < errors["signed"] / 3, errors


def test_signed_form_is_what_signed_export_writes(bundle):
    """TensorRT's build turns the unsigned pairs back into INT8 over the same range: the graph
    `--signed-activations` writes, up to float32 rounding of the rescaled scales."""
    amax = calibrated_amax(bundle / "main.onnx")
    unsigned = onnx.load(str(write_int8(bundle)))
    converted, count = to_signed_int8(unsigned)
    assert count == len(unsigned_activations(bundle / "main.int8.onnx"))
    quantize_stage(bundle / "main.onnx", bundle / "signed.onnx", amax, [], unsigned=False)
    direct = onnx.load(str(bundle / "signed.onnx"))
    assert [(n.op_type, list(n.input)) for n in converted.graph.node] == \
        [(n.op_type, list(n.input)) for n in direct.graph.node]
    mine = {t.name: numpy_helper.to_array(t) for t in converted.graph.initializer}
    theirs = {t.name: numpy_helper.to_array(t) for t in direct.graph.initializer}
    assert mine.keys() == theirs.keys()
    for name, value in theirs.items():
        assert mine[name].dtype == value.dtype, name
        np.testing.assert_allclose(mine[name], value, rtol=2e-7, err_msg=name)  # scale * 127/255 * 255/127
    assert to_signed_int8(direct) == (direct, 0)  # already signed: nothing to do
    # ONNX Runtime runs both as integer kernels; the unsigned file is what it runs by default
    x = tile(2)
    outputs = [cpu_session(m.SerializeToString(), optimize=True).run(None, {"input": x})[0] for m in (converted, direct)]
    step = max(amax.values()) / SIGNED_LEVELS
    assert np.abs(outputs[0] - outputs[1]).max() <= step  # a rescaled scale may flip a tie: one step at most


def test_adaround_quantizes_unsigned_inputs_on_the_uint8_grid():
    step, low, high = input_grid(2.55, True)
    assert (step, low, high) == (np.float32(0.01), 0, 255)
    step, low, high = input_grid(1.27, False)
    assert (step, low, high) == (np.float32(0.01), -127, 127)


@pytest.fixture
def install(monkeypatch):
    from edgerestore.runtime.tensorrt import cuda_driver

    monkeypatch.setattr(cuda_driver, "device_identity", lambda ordinal=0: ORIN)

    def install(version):
        trt = fake_tensorrt(version)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        return trt
    return install


@pytest.mark.parametrize("version, flags", [("10.3.0.30", 1 << 1), ("8.5.2.2", 1 << 0)], ids=["trt10", "trt8.5"])
def test_tensorrt_builds_the_signed_form(install, bundle, version, flags):
    """The fake parser refuses UINT8 Q/DQ as TensorRT does; the build hands it the signed form."""
    trt = install(version)
    write_int8(bundle)
    [path] = build_engines(Bundle(bundle), "int8")
    built_flags, parsed, _ = trt.built[0]
    assert built_flags == flags and parsed == str(bundle / "main.int8.onnx")  # external data resolves there
    model = onnx.load_from_string(trt.parsed_models[-1])
    assert unsigned_activations_of(model) == [] and zero_points(model)
    expected, _ = to_signed_int8(onnx.load(str(bundle / "main.int8.onnx")))
    assert model.graph.SerializeToString() == expected.graph.SerializeToString()
    info = engines.read_info(engines.info_path(path))
    assert info.quantization == "explicit" and info.source["cast"] == "signed"
    assert info.source["sha256"] == file_sha256(bundle / "main.int8.onnx")  # the bundle's file, as exported


def unsigned_activations_of(model: onnx.ModelProto) -> list[str]:
    return [name for name, zero in zero_points(model).items() if zero.data_type == onnx.TensorProto.UINT8]


def test_trtexec_reads_a_signed_file_beside_the_bundle(bundle, run_cli):
    write_int8(bundle)
    result = run_cli("build", bundle, "--trtexec", "8.5", "--precision", "int8")
    assert result.exit_code == 0, result.output
    signed = bundle / "tensorrt-signed" / "main.int8.onnx"
    assert result.stdout.split()[1] == f"--onnx={signed}"
    expected, _ = to_signed_int8(onnx.load(str(bundle / "main.int8.onnx")))
    assert onnx.load(str(signed)).graph.SerializeToString() == expected.graph.SerializeToString()
    assert Bundle(bundle).stage_path("main", "int8")  # the bundle itself is unchanged (checksums hold)
