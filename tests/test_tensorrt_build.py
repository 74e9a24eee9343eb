"""`edgerestore build --tensorrt`: the decisions made without TensorRT, and the calls that reach it.

TensorRT is absent here: the layout, profiles, policy, calibration-cache lookup and engine
metadata are plain Python and tested directly; the builder layer runs against the recording
stand-in of tests/fake_tensorrt.py, which follows TensorRT's documented Python API.
"""

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
from onnx import helper

from edgerestore.calibration import trt_cache
from edgerestore.runtime.bundle import Bundle, file_sha256
from edgerestore.runtime.errors import EdgeRestoreError
from edgerestore.runtime.tensorrt import calibrator, engines, policy
from edgerestore.runtime.tensorrt.build import build_engines
from edgerestore.runtime.tensorrt.engines import EngineInfo, Target
from edgerestore.runtime.tensorrt.profiles import Profile, stage_profile

from fake_tensorrt import fake_tensorrt

ORIN = ("Orin", (8, 7))
TRT10 = "10.3.0.30"
TRT85 = "8.5.2.2"
TRT86 = "8.6.2.3"
TRT11 = "11.0.0.9"


@pytest.fixture
def bundle(small_bundle, tmp_path) -> Path:
    """A private copy of the tiny DnCNN bundle (builds write into it)."""
    return Path(shutil.copytree(small_bundle, tmp_path / "dncnn"))


@pytest.fixture
def device(monkeypatch):
    """The GPU the fake builds and runs on."""
    from edgerestore.runtime.tensorrt import cuda_driver

    monkeypatch.setattr(cuda_driver, "device_identity", lambda ordinal=0: ORIN)
    return ORIN


@pytest.fixture
def install(monkeypatch, device):
    def install(version, dla_cores=0):
        trt = fake_tensorrt(version, dla_cores=dla_cores)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        return trt
    return install


def add_int8(root: Path, trt_version=(10, 3, 0), method="entropy") -> None:
    """Register an INT8 graph and a calibration cache for stage 'main' the way `export --int8` does.
    The graph is the FP32 file under the int8 name: the fake builder does not parse it."""
    shutil.copy(root / "main.onnx", root / "main.int8.onnx")
    (root / "calib").mkdir(exist_ok=True)
    (root / "calib" / "main.cache").write_text(trt_cache.render(trt_cache.header(trt_version, method),
                                                                {"input": 1.0, "/model/model.1/Relu_output_0": 3.0}))
    manifest = json.loads((root / "manifest.json").read_text())
    stage = manifest["stages"]["main"]
    stage["files"]["int8"] = "main.int8.onnx"
    stage["sha256"]["int8"] = file_sha256(root / "main.int8.onnx")
    stage["calibration_cache"] = "calib/main.cache"
    manifest["precisions"] = ["fp32", "int8"]
    (root / "manifest.json").write_text(json.dumps(manifest))


# -- without TensorRT ----------------------------------------------------------------------------
def test_build_without_tensorrt_is_one_clear_line(run_cli, bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    result = run_cli("build", bundle, "--tensorrt", "--precision", "fp16")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: TensorRT is not installed") and result.stderr.count("\n") == 1
    assert not (bundle / "engines").exists()
    assert run_cli("build", bundle).stderr.startswith("error: nothing to build: pass --tensorrt")


def test_engine_layout():
    target = Target(TRT10, "NVIDIA GeForce RTX 4090", (8, 9))
    root = Path("/b")
    assert engines.engine_path(root, target, "block0.shared", "int8") == \
        root / "engines/10.3.0.30/NVIDIA-GeForce-RTX-4090/block0.shared.int8.engine"
    assert engines.engine_path(root, target, "main", "fp16", dla_core=1).name == "main.fp16-dla1.engine"
    assert engines.sanitize("Orin (nvgpu)") == "Orin-nvgpu"
    assert engines.info_path(root / "x.fp16.engine") == root / "x.fp16.json"
    with pytest.raises(EdgeRestoreError):
        engines.sanitize("///")


def test_profiles_pin_tiles_and_range_the_batch():
    image = {"input": [None, 1, None, None]}
    assert stage_profile("main", image, 192, 16) == {"input": Profile((1, 1, 192, 192), (16, 1, 192, 192),
                                                                      (16, 1, 192, 192))}
    assert stage_profile("main", image, 192, 8, fixed_batch=True)["input"].min == (8, 1, 192, 192)  # DLA
    router = {"features": [None, 16, 63, 63], "h": [None, 32], "c": [None, 32]}
    shapes = stage_profile("pathfinder", router, 63, 4)
    assert shapes["h"] == Profile((1, 32), (4, 32), (4, 32)) and shapes["features"].max == (4, 16, 63, 63)
    assert stage_profile("x", {"x": [1, 3, 8, 8]}, None, 16)["x"] == Profile((1, 3, 8, 8), (1, 3, 8, 8), (1, 3, 8, 8))
    with pytest.raises(EdgeRestoreError, match="dynamic H/W and the bundle has no tile size to pin them: pass --tile"):
        stage_profile("main", image, None, 16)
    with pytest.raises(EdgeRestoreError, match="axis 1 is dynamic"):
        stage_profile("main", {"input": [None, None, 8, 8]}, 8, 16)


def fake_bundle(files, root="/b"):
    stage = SimpleNamespace(files=dict.fromkeys(files, "x.onnx"))
    return SimpleNamespace(root=Path(root), stages={"main": stage}, manifest={"stages": {"main": {}}})


@pytest.mark.parametrize("version, precision, dla, files, expected", [
    ((8, 5, 2), "fp32", None, ["fp32"], ("fp32", False, (), None)),
    ((8, 5, 2), "fp16", None, ["fp32"], ("fp32", False, ("FP16",), None)),
    ((8, 5, 2), "int8", None, ["fp32", "int8"], ("int8", False, ("INT8",), "explicit")),
    ((8, 5, 2), "int8", 0, ["fp32", "int8"], ("fp32", False, ("INT8", "FP16", "GPU_FALLBACK"), "implicit")),
    ((10, 3, 0), "fp16", None, ["fp32"], ("fp32", False, ("FP16",), None)),
    ((10, 3, 0), "fp16", 1, ["fp32"], ("fp32", False, ("FP16", "GPU_FALLBACK"), None)),
    ((10, 3, 0), "fp16", None, ["fp32", "fp16"], ("fp16", True, (), None)),
    ((10, 3, 0), "int8", None, ["fp32", "int8"], ("int8", True, (), "explicit")),
    ((10, 3, 0), "int8", 0, ["fp32", "int8"], ("fp32", False, ("INT8", "FP16", "GPU_FALLBACK"), "implicit")),
    ((11, 0, 0), "int8", 0, ["fp32", "int8"], ("int8", True, ("GPU_FALLBACK",), "explicit")),
    ((11, 0, 0), "fp16", None, ["fp32", "fp16"], ("fp16", True, (), None)),
    ((11, 0, 0), "fp16", None, ["fp32"], ("fp32", True, (), None)),  # cast to FP16 at build time
    ((8, 5, 2), "fp16", None, ["fp32", "fp16"], ("fp32", False, ("FP16",), None)),  # 8.x: no typed networks
    ((8, 6, 2), "fp16", 0, ["fp32", "fp16"], ("fp32", False, ("FP16", "GPU_FALLBACK"), None)),
    ((8, 6, 2), "int8", None, ["fp32", "int8"], ("int8", False, ("INT8",), "explicit")),
    ((8, 6, 2), "int8", 0, ["fp32", "int8"], ("fp32", False, ("INT8", "FP16", "GPU_FALLBACK"), "implicit")),
    ((10, 3, 0), "int8", None, ["fp32"], "has no int8 graph of stage 'main'.*export it with --int8"),
    ((10, 3, 0), "fp32", 0, ["fp32"], "DLA runs FP16 and INT8 only"),
])
def test_policy(version, precision, dla, files, expected):
    if isinstance(expected, str):
        with pytest.raises(EdgeRestoreError, match=expected):
            policy.plan_stage(fake_bundle(files), "main", precision, version, dla)
        return
    plan = policy.plan_stage(fake_bundle(files), "main", precision, version, dla)
    assert (plan.source, plan.strongly_typed, plan.flags, plan.quantization) == expected
    assert not (plan.strongly_typed and {"FP16", "INT8"} & set(plan.flags))  # strong typing takes no precision flags
    assert (plan.calibration_cache is not None) == (plan.quantization == "implicit")
    assert plan.cast == ("fp16" if version[0] >= 11 and precision == "fp16" and "fp16" not in files else None)


def test_no_strongly_typed_network_below_tensorrt_10():
    """8.x has no STRONGLY_TYPED flag (the fake, like TensorRT 8.5/8.6, has no such member): whatever
    the bundle holds, a plan for 8.x is weakly typed and its network gets EXPLICIT_BATCH only."""
    from edgerestore.runtime.tensorrt.build import network_flags
    from edgerestore.runtime.tensorrt.releases import TRT_RELEASES

    planned = 0
    for version in TRT_RELEASES.values():
        trt = fake_tensorrt(".".join(map(str, version)))
        for precision in ("fp32", "fp16", "int8"):
            for dla in (None, 0):
                for files in (["fp32"], ["fp32", "fp16"], ["fp32", "int8"], ["fp32", "fp16", "int8"]):
                    try:
                        plan = policy.plan_stage(fake_bundle(files), "main", precision, version, dla)
                    except EdgeRestoreError:
                        continue  # fp32 on DLA, int8 without the Q/DQ graph on >= 10
                    planned += 1
                    flags = network_flags(trt, version, plan)
                    if version[0] < 10:
                        assert not plan.strongly_typed and flags == 1 << 0, (version, precision, dla, files)
                    elif plan.strongly_typed:
                        assert flags & 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert planned > 40
    with pytest.raises(EdgeRestoreError, match="TensorRT 8.6.2 has no strongly typed networks"):
        network_flags(fake_tensorrt(TRT86), (8, 6, 2), policy.plan_stage(fake_bundle(["fp32", "int8"]), "main",
                                                                         "int8", (10, 3, 0)))


def test_parse_version():
    assert policy.parse_version("8.5.2.2") == (8, 5, 2) and policy.parse_version("10.3.0.30") == (10, 3, 0)
    assert policy.parse_version("11.0") == (11, 0, 0)
    with pytest.raises(EdgeRestoreError):
        policy.parse_version("ten")


def test_calibration_cache_lookup(bundle):
    add_int8(bundle, (8, 5, 2))
    loaded = Bundle(bundle)
    cache = calibrator.load_cache(loaded, "main", (8, 5, 2))
    assert cache.calibrator == "EntropyCalibration2" and cache.tensors == 2
    assert cache.data == (bundle / "calib" / "main.cache").read_bytes()
    with pytest.raises(EdgeRestoreError) as err:
        calibrator.load_cache(loaded, "main", (10, 3, 0))
    assert "written for TensorRT version 8502" in str(err.value) and "runs TensorRT 10.3.0 (100300)" in str(err.value)
    assert "--trt-version 10.3.0" in str(err.value)
    (bundle / "calib" / "main.cache").write_text("TRT-8502-Percentile\ninput: 3c010204\n")
    with pytest.raises(EdgeRestoreError, match="unknown header"):
        calibrator.load_cache(loaded, "main", (8, 5, 2))
    (bundle / "calib" / "main.cache").unlink()
    with pytest.raises(EdgeRestoreError, match="no calibration cache for stage 'main'"):
        calibrator.load_cache(loaded, "main", (8, 5, 2))


def test_calibrator_only_returns_the_cache(bundle):
    add_int8(bundle, (8, 5, 2), method="minmax")
    trt = fake_tensorrt(TRT85)
    cache = calibrator.load_cache(Bundle(bundle), "main", (8, 5, 2))
    instance = calibrator.make_calibrator(trt, cache)
    assert isinstance(instance, trt.IInt8MinMaxCalibrator)  # the class the header names
    assert instance.read_calibration_cache() == cache.data
    assert instance.get_batch(["input"]) is None and instance.get_batch_size() == 1
    assert instance.write_calibration_cache(b"other") is None
    assert (bundle / "calib" / "main.cache").read_bytes() == cache.data


# -- engine metadata and matching ---------------------------------------------------------------
def write_fake_engine(root: Path, target: Target, precision="fp16", stage="main", sha=None) -> Path:
    bundle = Bundle(root)
    path = engines.engine_path(root, target, stage, precision)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"engine")
    source = bundle.stages[stage]
    engines.write_info(path, EngineInfo(stage, precision, None, target.tensorrt, target.gpu, target.compute_capability,
                                        None, {"file": source.files["fp32"], "sha256": sha or source.sha256["fp32"]},
                                        {"input": {"min": [1, 1, 192, 192], "opt": [16, 1, 192, 192],
                                                   "max": [16, 1, 192, 192]}}))
    return path


def test_engine_of_another_tensorrt_or_gpu_is_refused(bundle):
    built = Target(TRT85, "Orin", (8, 7))
    path = write_fake_engine(bundle, built)
    loaded = Bundle(bundle)
    assert engines.find_engine(loaded, "main", "fp16", built) == (path, engines.read_info(engines.info_path(path)))
    for running in (Target(TRT10, "Orin", (8, 7)), Target(TRT85, "Xavier", (7, 2))):
        with pytest.raises(EdgeRestoreError) as err:
            engines.find_engine(loaded, "main", "fp16", running)
        message = str(err.value)
        assert "TensorRT 8.5.2.2 on 'Orin' (sm_87)" in message and running.describe() in message
        assert "run `edgerestore build" in message
    # A folder copied to the wrong place: the json, not the folder name, is trusted.
    moved = engines.engine_dir(bundle, Target(TRT10, "Orin", (8, 7)))
    shutil.copytree(path.parent, moved)
    with pytest.raises(EdgeRestoreError, match="it was built with TensorRT 8.5.2.2 on 'Orin' .*this machine runs "
                                               "TensorRT 10.3.0.30 on 'Orin'"):
        engines.find_engine(loaded, "main", "fp16", Target(TRT10, "Orin", (8, 7)))
    # Same name, other compute capability (a different board revision): refused too.
    with pytest.raises(EdgeRestoreError, match="sm_86"):
        engines.find_engine(loaded, "main", "fp16", Target(TRT85, "Orin", (8, 6)))


def test_stale_engine_and_missing_engines(bundle):
    target = Target(TRT10, "Orin", (8, 7))
    write_fake_engine(bundle, target, sha="0" * 64)
    loaded = Bundle(bundle)
    with pytest.raises(EdgeRestoreError, match="built from another export of stage 'main'"):
        engines.find_engine(loaded, "main", "fp16", target)
    with pytest.raises(EdgeRestoreError, match="has no int8 TensorRT engine of stage 'main'"):
        engines.find_engine(loaded, "main", "int8", target)
    assert engines.engine_precisions(loaded, target) == ["fp16"]
    assert engines.engine_precisions(loaded, Target(TRT85, "Orin", (8, 7))) == []
    assert "fp16 for TensorRT 10.3.0.30 on 'Orin'" in engines.describe_available(loaded)
    (engines.engine_path(bundle, target, "main", "fp16")).unlink()  # an interrupted build: json without engine
    assert engines.engine_precisions(loaded, target) == []


# -- the builder layer against the fake ---------------------------------------------------------
def test_build_fp16_on_tensorrt_10(install, bundle):
    trt = install(TRT10)
    lines = []
    paths = build_engines(Bundle(bundle), "fp16", max_batch=8, workspace_mb=512, progress=lines.append)
    target = Target(TRT10, *ORIN)
    assert paths == [bundle / "engines" / "10.3.0.30" / "Orin" / "main.fp16.engine"]
    assert lines == [f"building main (fp16, {target.describe()})"]
    flags, parsed, config = trt.built[0]
    assert flags == 0 and parsed == str(bundle / "main.onnx")
    assert config.flags == ["FP16"] and config.pool == {"WORKSPACE": 512 << 20}
    assert config.profiles[0].shapes == {"input": ((1, 1, 192, 192), (8, 1, 192, 192), (8, 1, 192, 192))}
    assert config.int8_calibrator is None and config.default_device_type == "GPU"
    info = engines.read_info(engines.info_path(paths[0]))
    assert (info.tensorrt, info.gpu, info.compute_capability, info.precision) == (TRT10, "Orin", (8, 7), "fp16")
    assert info.profile == {"input": {"min": [1, 1, 192, 192], "opt": [8, 1, 192, 192], "max": [8, 1, 192, 192]}}
    assert info.source == {"file": "main.onnx", "sha256": Bundle(bundle).stages["main"].sha256["fp32"]}
    assert engines.find_engine(Bundle(bundle), "main", "fp16", target)[0] == paths[0]
    # The timing cache is stored in the bundle and fed back to the next build.
    timing = bundle / "engines" / "10.3.0.30" / "Orin" / "timing.cache"
    assert timing.read_bytes() == b"+"
    build_engines(Bundle(bundle), "fp32")
    assert trt.built[1][2].timing_cache.blob == b"+" and timing.read_bytes() == b"++"


def test_build_int8_explicit_on_tensorrt_10(install, bundle):
    trt = install(TRT10)
    add_int8(bundle)
    [path] = build_engines(Bundle(bundle), "int8")
    flags, parsed, config = trt.built[0]
    assert flags == 1 << 1 and parsed == str(bundle / "main.int8.onnx")  # STRONGLY_TYPED, the Q/DQ graph
    assert config.flags == [] and config.int8_calibrator is None
    info = engines.read_info(engines.info_path(path))
    assert info.quantization == "explicit" and info.source["file"] == "main.int8.onnx"


def test_build_int8_explicit_on_tensorrt_8_5(install, bundle):
    """JetPack 5.1: the validated Q/DQ graph, weakly typed with the INT8 flag; no calibrator."""
    trt = install(TRT85)
    add_int8(bundle, (8, 5, 2))
    [path] = build_engines(Bundle(bundle), "int8", max_batch=4)
    flags, parsed, config = trt.built[0]
    assert flags == 1 << 0 and parsed == str(bundle / "main.int8.onnx")  # EXPLICIT_BATCH, the Q/DQ graph
    assert config.flags == ["INT8"] and config.int8_calibrator is None
    assert path == bundle / "engines" / "8.5.2.2" / "Orin" / "main.int8.engine"
    info = engines.read_info(engines.info_path(path))
    assert info.quantization == "explicit" and info.source["file"] == "main.int8.onnx"


def test_build_int8_implicit_for_dla_on_tensorrt_8_5(install, bundle):
    """DLA below TensorRT 11: the FP32 graph, INT8 + FP16 flags and the cache-only calibrator."""
    trt = install(TRT85, dla_cores=1)
    add_int8(bundle, (8, 5, 2))
    [path] = build_engines(Bundle(bundle), "int8", dla_core=0, max_batch=4)
    flags, parsed, config = trt.built[0]
    assert flags == 1 << 0 and parsed == str(bundle / "main.onnx")  # EXPLICIT_BATCH, the FP32 graph
    assert "INT8" in config.flags
    assert isinstance(config.int8_calibrator, trt.IInt8EntropyCalibrator2)
    assert config.int8_calibrator.read_calibration_cache() == (bundle / "calib" / "main.cache").read_bytes()
    assert config.int8_calibrator.get_batch(["input"]) is None
    assert config.calibration_profile is config.profiles[0]
    assert engines.read_info(engines.info_path(path)).quantization == "implicit"


def test_build_for_dla(install, bundle):
    trt = install(TRT10, dla_cores=2)
    add_int8(bundle, (10, 3, 0))
    [path] = build_engines(Bundle(bundle), "int8", dla_core=1, max_batch=8)
    flags, parsed, config = trt.built[0]
    assert path.name == "main.int8-dla1.engine"
    assert (config.default_device_type, config.DLA_core) == ("DLA", 1)
    assert config.flags == ["INT8", "FP16", "GPU_FALLBACK"] and parsed == str(bundle / "main.onnx")
    assert config.profiles[0].shapes["input"][0] == (8, 1, 192, 192)  # static batch
    assert engines.find_engine(Bundle(bundle), "main", "int8", Target(TRT10, *ORIN))[0] == path
    with pytest.raises(EdgeRestoreError, match="this device has 2 DLA cores"):
        build_engines(Bundle(bundle), "int8", dla_core=2)
    with pytest.raises(EdgeRestoreError, match="exceeds what DLA runs"):
        build_engines(Bundle(bundle), "int8", dla_core=0, max_batch=64)
    with pytest.raises(EdgeRestoreError, match="DLA runs FP16 and INT8 only"):
        build_engines(Bundle(bundle), "fp32", dla_core=0)


def test_build_refuses_a_bundle_that_fails_the_check(install, bundle):
    trt = install(TRT10)
    onnx.save(helper.make_model(helper.make_graph(
        [helper.make_node("NonZero", ["input"], ["output"], name="nz")], "g",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["b", 1, "h", "w"])],
        [helper.make_tensor_value_info("output", onnx.TensorProto.INT64, None)]),
        opset_imports=[helper.make_opsetid("", 17)]), str(bundle / "main.onnx"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["stages"]["main"]["sha256"]["fp32"] = file_sha256(bundle / "main.onnx")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgeRestoreError, match=r"fails the TensorRT check \(1 errors.*nz \(NonZero\)"):
        build_engines(Bundle(bundle), "fp16")
    assert trt.built == [] and not (bundle / "engines").exists()


def test_build_cli_with_the_fake(install, bundle, run_cli):
    install(TRT10)
    result = run_cli("build", bundle, "--tensorrt", "--precision", "fp16", "--max-batch", "4", "--tile", "96")
    assert result.exit_code == 0, result.output
    engine = Path(result.stdout.strip())
    assert engine == bundle / "engines" / "10.3.0.30" / "Orin" / "main.fp16.engine" and engine.is_file()
    assert engines.read_info(engines.info_path(engine)).profile["input"]["max"] == [4, 1, 96, 96]


# -- plugins, TensorRT 8.6 and 11 ---------------------------------------------------------------
def instance_norm_stage(root: Path) -> None:
    """Make stage 'main' input + 0.1 * InstanceNormalization(input) (DeblurGAN-v2's FPN normalizes
    so): an op TensorRT 8.x imports as the plugin InstanceNormalization_TRT."""
    graph = onnx.load(str(root / "main.onnx")).graph
    nodes = [helper.make_node("InstanceNormalization", ["input", "scale", "bias"], ["normalized"], name="norm"),
             helper.make_node("Add", ["input", "normalized"], ["output"], name="residual")]
    weights = [helper.make_tensor("scale", onnx.TensorProto.FLOAT, [1], [0.1]),
               helper.make_tensor("bias", onnx.TensorProto.FLOAT, [1], [0.0])]
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", list(graph.input), list(graph.output), weights),
                                opset_imports=[helper.make_opsetid("", 17)]), str(root / "main.onnx"))
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["stages"]["main"]["sha256"]["fp32"] = file_sha256(root / "main.onnx")
    (root / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("version, plugin", [(TRT85, True), (TRT86, True), (TRT10, False)])
def test_plugins_are_registered_once_before_parsing(install, bundle, version, plugin):
    instance_norm_stage(bundle)
    # The fake parser, like TensorRT's, fails on a plugin op while no plugins are registered.
    probe = fake_tensorrt(version)
    parser = probe.OnnxParser(probe.Builder(None).create_network(1 << 0), None)
    assert parser.parse_from_file(str(bundle / "main.onnx")) is not plugin
    if plugin:
        assert parser.get_error(0).desc() == "getPluginCreator could not find plugin: InstanceNormalization_TRT " \
                                             "version: 1"
    trt = install(version)
    build_engines(Bundle(bundle), "fp32")
    build_engines(Bundle(bundle), "fp16")
    assert len(trt.built) == 2 and all(parsed == str(bundle / "main.onnx") for _, parsed, _ in trt.built)
    [(logger, namespace)] = trt.plugin_registrations  # once per process, TensorRT's default namespace
    assert isinstance(logger, trt.Logger) and namespace == ""


def test_build_int8_implicit_for_dla_on_tensorrt_8_6(install, bundle):
    """JetPack 6.0 DLA: TensorRT 8.6.2, a cache written with `export --int8 --trt-version 8.6`."""
    from edgerestore.calibration.trt_cache import header, parse_trt_version

    assert header(parse_trt_version("8.6"), "entropy") == "TRT-8602-EntropyCalibration2"
    trt = install(TRT86, dla_cores=1)
    add_int8(bundle, parse_trt_version("8.6"))
    [path] = build_engines(Bundle(bundle), "int8", dla_core=0)
    flags, parsed, config = trt.built[0]
    assert flags == 1 << 0 and parsed == str(bundle / "main.onnx") and "INT8" in config.flags
    assert config.int8_calibrator.read_calibration_cache().startswith(b"TRT-8602-EntropyCalibration2\n")
    assert path == bundle / "engines" / "8.6.2.3" / "Orin" / "main.int8-dla0.engine"
    with pytest.raises(EdgeRestoreError, match="written for TensorRT version 8602 .* runs TensorRT 8.5.2"):
        calibrator.load_cache(Bundle(bundle), "main", (8, 5, 2))


def test_tensorrt_11_builds_fp16_from_a_cast_of_the_fp32_graph(install, bundle, run_cli):
    """TensorRT 11 has no FP16 builder flag: the FP32 stage graph is cast to FP16 in memory
    (I/O stay float32), parsed from bytes; the bundle and its manifest are left as exported."""
    trt = install(TRT11)
    assert not hasattr(trt.BuilderFlag, "FP16") and not hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")
    manifest = (bundle / "manifest.json").read_bytes()
    before = {p for p in bundle.rglob("*")}
    result = run_cli("build", bundle, "--tensorrt", "--precision", "fp16")
    assert result.exit_code == 0, result.output
    path = Path(result.stdout.strip())
    assert path == bundle / "engines" / "11.0.0.9" / "Orin" / "main.fp16.engine"
    flags, parsed, config = trt.built[0]
    assert flags == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) and config.flags == []
    assert parsed == str(bundle / "main.onnx")  # the path resolves external weights; the graph came as bytes
    model = onnx.load_from_string(trt.parsed_models[0])
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    assert [v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]] == [
        onnx.TensorProto.FLOAT] * 2
    assert {t.data_type for t in model.graph.initializer if t.data_type in floats} == {onnx.TensorProto.FLOAT16}
    assert [n.op_type for n in model.graph.node][0] == "Cast" and model.graph.node[-1].op_type == "Cast"
    onnx.checker.check_model(model, full_check=True)  # valid ONNX, nodes in topological order
    info = engines.read_info(engines.info_path(path))
    assert info.source == {"file": "main.onnx", "sha256": Bundle(bundle).stages["main"].sha256["fp32"], "cast": "fp16"}
    assert (bundle / "manifest.json").read_bytes() == manifest
    assert {p for p in bundle.rglob("*") if not p.is_relative_to(bundle / "engines")} == before
    assert engines.find_engine(Bundle(bundle), "main", "fp16", Target(TRT11, *ORIN))[0] == path


def test_cast_keeps_per_sample_normalization_in_fp32(bundle):
    from edgerestore.runtime.tensorrt.fp16 import cast_to_fp16

    instance_norm_stage(bundle)
    model = cast_to_fp16(onnx.load(str(bundle / "main.onnx")), "main")
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert types["scale"] == types["bias"] == onnx.TensorProto.FLOAT
    norm = next(n for n in model.graph.node if n.op_type == "InstanceNormalization")
    [before] = [n for n in model.graph.node if norm.input[0] in n.output]
    [after] = [n for n in model.graph.node if norm.output[0] in n.input]
    assert (before.op_type, after.op_type) == ("Cast", "Cast")  # FP16 activations around an FP32 normalization
    assert helper.get_attribute_value(before.attribute[0]) == onnx.TensorProto.FLOAT
    assert helper.get_attribute_value(after.attribute[0]) == onnx.TensorProto.FLOAT16
    assert model.graph.node[0].op_type == "Cast" and helper.get_attribute_value(
        model.graph.node[0].attribute[0]) == onnx.TensorProto.FLOAT16  # the float32 input enters as FP16
