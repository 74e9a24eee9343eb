"""`--backend tensorrt`: engines for this machine, host arrays in and out.

Without TensorRT the backend runs over tests/fake_tensorrt.py, whose engine is the stage
ONNX under ONNX Runtime on fake device memory: a restore through it must equal the
onnxruntime backend exactly, for TensorRT 10's tensor API and 8.5's bindings alike. The
tests at the end use the real TensorRT and GPU and skip where they are absent.
"""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from edgerestore.runtime.bundle import Bundle
from edgerestore.runtime.errors import EdgeRestoreError
from edgerestore.runtime.session import Session
from edgerestore.runtime.tensorrt import cuda_driver, engines
from edgerestore.runtime.tensorrt.build import build_engines

from fake_tensorrt import FakeCuda, fake_tensorrt

BACKEND = "edgerestore.runtime.backends.tensorrt_backend"
ORIN = ("Orin", (8, 7))
TRT10, TRT85, TRT11 = "10.3.0.30", "8.5.2.2", "11.0.0.9"


@pytest.fixture
def fake_gpu(monkeypatch):
    """install(version) puts a fake tensorrt + pycuda in place; the backend module is imported fresh."""
    monkeypatch.setattr(cuda_driver, "device_identity", lambda ordinal=0: ORIN)

    def install(version, dla_cores=0):
        cuda = FakeCuda()
        trt = fake_tensorrt(version, cuda=cuda, dla_cores=dla_cores)
        for name, module in {"tensorrt": trt, **cuda.modules()}.items():
            monkeypatch.setitem(sys.modules, name, module)
        sys.modules.pop(BACKEND, None)
        return trt, cuda

    yield install
    sys.modules.pop(BACKEND, None)  # later imports see the real (absent) packages again


@pytest.fixture
def bundle(small_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(small_bundle, tmp_path / "dncnn"))


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(5)
    return rng.random((230, 250, 1)).astype(np.float32)  # 2x2 tiles of 192/20


def engine_of(session, stage="main"):
    return session.runners[stage].engine


def restored(bundle, image, **options):
    return Session(bundle, **options).run(image, clip=False).image


@pytest.mark.parametrize("version", [TRT10, TRT85])
def test_restore_through_the_backend_equals_onnxruntime(fake_gpu, bundle, image, version):
    trt, cuda = fake_gpu(version)
    build_engines(Bundle(bundle), "fp32", max_batch=3)
    reference = restored(bundle, image, backend="onnxruntime")
    session = Session(bundle, backend="tensorrt")
    assert session.precision == "fp32"
    np.testing.assert_array_equal(session.run(image, clip=False).image, reference)
    assert engine_of(session).executions == [3, 1]  # 4 tiles in buckets no larger than the profile's max 3
    allocations = cuda.allocations
    np.testing.assert_array_equal(session.run(image, clip=False).image, reference)
    assert cuda.allocations == allocations  # buffers of batch 3 and 1 reused


def test_fixed_batch_engine_pads_small_batches(fake_gpu, bundle, image):
    fake_gpu(TRT10, dla_cores=1)
    build_engines(Bundle(bundle), "fp16", dla_core=0, max_batch=3)
    session = Session(bundle, backend="tensorrt", precision="fp16")
    np.testing.assert_array_equal(session.run(image, clip=False).image, restored(bundle, image, backend="onnxruntime"))
    assert engine_of(session).executions == [3, 3]  # the engine's fixed batch is the only bucket: 4 tiles = 3 + 1 padded


def test_routed_bundle_reproduces_decisions_and_pixels(fake_gpu, tmp_path):
    import torch

    from edgerestore.export import write_bundle
    from edgerestore.models import PathRestore

    from test_pathrestore import mixed_router

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:150, 0:170] / 170.0
    picture = (np.stack([x, y, x * y], axis=2) + rng.normal(0, 0.05, (150, 170, 3))).astype(np.float32)
    torch.manual_seed(0)
    root = tmp_path / "pathrestore"
    write_bundle(mixed_router(PathRestore(features=16), picture), "pathrestore", root)
    fake_gpu(TRT85)
    build_engines(Bundle(root), "fp32", max_batch=4)
    reference = Session(root, backend="onnxruntime").run(picture, clip=False)
    session = Session(root, backend="tensorrt")
    route = session.run(picture, clip=False)
    np.testing.assert_array_equal(route.image, reference.image)
    for name, choice in reference.decisions.items():
        np.testing.assert_array_equal(route.decisions[name], choice)
    executed = engine_of(session, "block0.branch").executions
    assert sum(executed) == (reference.decisions["block0"] == 1).sum() and 0 < sum(executed) < len(
        reference.macs)  # the branch ran on its subset of tiles only


def test_engines_with_plugin_layers_load_in_a_fresh_process(fake_gpu, bundle, image):
    """An 8.x engine with an InstanceNormalization_TRT layer, built in one process, loads in a
    new one (a fresh fake module: nothing registered) because the backend registers TensorRT's
    plugins before deserializing; the fake runtime, like TensorRT's, returns no engine otherwise."""
    from test_tensorrt_build import instance_norm_stage

    instance_norm_stage(bundle)
    fake_gpu(TRT85)
    build_engines(Bundle(bundle), "fp32", max_batch=4)
    trt, _ = fake_gpu(TRT85)
    assert trt.plugin_registrations == []
    assert trt.Runtime(None).deserialize_cuda_engine(next(bundle.glob("engines/*/*/main.fp32.engine")).read_bytes()) \
        is None
    session = Session(bundle, backend="tensorrt")
    assert len(trt.plugin_registrations) == 1
    np.testing.assert_array_equal(session.run(image, clip=False).image, restored(bundle, image, backend="onnxruntime"))


def test_fp16_engine_of_tensorrt_11_runs_the_cast_graph(fake_gpu, bundle, image):
    """The FP16 engine built on TensorRT 11 from the cast graph takes and returns float32. Bound:
    the fake runs the cast graph under ONNX Runtime, whose error against FP32 comes from rounding
    to float16 (relative 2^-11 per rounding): the input (< 1), the output (~1), the subtraction,
    and the small residual of 5 layers (< 0.1 in magnitude, weights scaled by 0.1) -- under
    4 * 2^-11 in all."""
    fake_gpu(TRT11)
    build_engines(Bundle(bundle), "fp16", max_batch=4)
    session = Session(bundle, backend="tensorrt", precision="fp16")
    assert session.precision == "fp16"
    out = session.run(image, clip=False).image
    reference = restored(bundle, image, backend="onnxruntime")
    assert out.dtype == reference.dtype == np.float32
    assert np.abs(out - reference).max() <= 4 * 2.0 ** -11


def test_engines_of_another_tensorrt_are_refused(fake_gpu, bundle):
    fake_gpu(TRT85)
    build_engines(Bundle(bundle), "fp16")
    fake_gpu(TRT10)  # the same bundle on a machine with TensorRT 10
    with pytest.raises(EdgeRestoreError) as err:
        Session(bundle, backend="tensorrt")
    message = str(err.value)
    assert "TensorRT 10.3.0.30 on 'Orin' (sm_87)" in message and "fp16 for TensorRT 8.5.2.2 on 'Orin'" in message
    assert f"edgerestore build {bundle} --tensorrt" in message
    # Engines copied into this machine's folder: their json still says what they were built for.
    shutil.copytree(bundle / "engines" / "8.5.2.2", bundle / "engines" / "10.3.0.30")
    with pytest.raises(EdgeRestoreError, match="cannot run here: it was built with TensorRT 8.5.2.2 on 'Orin' "
                                               r"\(sm_87\), this machine runs TensorRT 10.3.0.30 on 'Orin'"):
        Session(bundle, backend="tensorrt")


def test_tile_other_than_the_engines_is_a_clear_error(fake_gpu, bundle, image):
    fake_gpu(TRT10)
    build_engines(Bundle(bundle), "fp32", tile=96)
    with pytest.raises(EdgeRestoreError, match=r"built for 96x96 tiles: restore with --tile 96"):
        restored(bundle, image, backend="tensorrt")  # the manifest's default tile is 192
    out = restored(bundle, image, backend="tensorrt", tile=96)
    np.testing.assert_array_equal(out, restored(bundle, image, backend="onnxruntime", tile=96))


def test_cuda_graphs_capture_once_per_batch_size_then_replay(fake_gpu, bundle, image, monkeypatch):
    fake_gpu(TRT10)
    build_engines(Bundle(bundle), "fp32", max_batch=4)
    backend = importlib.import_module(BACKEND)
    captured = []

    class RecordingGraph:
        """Stands in for the driver's capture: keeps the enqueue and replays it on launch."""

        @classmethod
        def capture(cls, stream, enqueue):
            captured.append(stream)
            graph = cls()
            graph.enqueue = enqueue
            return graph

        def launch(self, stream):
            self.enqueue()

    monkeypatch.setattr(backend, "CudaGraph", RecordingGraph)
    monkeypatch.setenv(backend.GRAPHS_ENV, "1")
    session = Session(bundle, backend="tensorrt")
    reference = restored(bundle, image, backend="onnxruntime")
    for _ in range(3):
        np.testing.assert_array_equal(session.run(image, clip=False).image, reference)
    assert len(captured) == 1  # one batch size (4 tiles): warm-up, capture, then replays
    assert engine_of(session).executions == [4, 4, 4]


def test_backend_without_tensorrt_or_pycuda(small_bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(EdgeRestoreError, match="backend 'tensorrt' needs the Python package 'tensorrt'"):
        Session(small_bundle, backend="tensorrt")
    fake = fake_tensorrt(TRT10)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setitem(sys.modules, "pycuda", None)
    sys.modules.pop(BACKEND, None)
    try:
        with pytest.raises(EdgeRestoreError, match="backend 'tensorrt' needs pycuda"):
            Session(small_bundle, backend="tensorrt")
    finally:
        sys.modules.pop(BACKEND, None)


# -- the real thing ---------------------------------------------------------------------------------
@pytest.fixture
def real_gpu():
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("TensorRT not installed")
    if importlib.util.find_spec("pycuda") is None:
        pytest.skip("pycuda not installed")
    if cuda_driver.device_count() == 0:
        pytest.skip("no CUDA GPU")


def psnr(a, b):
    return 10 * np.log10(1.0 / np.mean((a - b) ** 2))


def test_real_engines_match_onnxruntime(real_gpu, bundle, image):
    paths = build_engines(Bundle(bundle), "fp32", max_batch=4) + build_engines(Bundle(bundle), "fp16", max_batch=4)
    reference = restored(bundle, image, backend="onnxruntime")
    fp32 = restored(bundle, image, backend="tensorrt", precision="fp32")
    fp16 = restored(bundle, image, backend="tensorrt", precision="fp16")
    assert psnr(fp32, reference) > 60 and psnr(fp16, reference) > 40  # fp32 may run TF32 on Ampere and newer
    graphs = Session(bundle, backend="tensorrt", precision="fp32")
    graphs.runners["main"].cuda_graphs = True
    for _ in range(3):
        np.testing.assert_array_equal(graphs.run(image, clip=False).image, fp32)
    info = json.loads(engines.info_path(paths[0]).read_text())
    info["tensorrt"] = "7.0.0.0"
    engines.info_path(paths[0]).write_text(json.dumps(info))
    with pytest.raises(EdgeRestoreError, match="it was built with TensorRT 7.0.0.0"):
        Session(bundle, backend="tensorrt", precision="fp32")
