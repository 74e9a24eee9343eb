"""JetPack 5 (Jetson Xavier, and Orin on JetPack 5.1): TensorRT 8.5.2, CUDA 11.4, Python 3.8.

The decision (README, "TensorRT (Jetson / GPU)"): edgerestore's Python runtime needs Python
>= 3.10 and is not offered on Python 3.8; JetPack 5 gets bundles whose ONNX graphs and
calibration caches TensorRT 8.5's own ``trtexec`` builds, with the command line of every stage
printed by ``edgerestore build BUNDLE --trtexec 8.5`` on any machine that holds the bundle.
"""

from __future__ import annotations

import glob
import importlib.metadata
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from edgerestore.runtime.bundle import Bundle
from edgerestore.runtime.tensorrt import engines
from edgerestore.runtime.tensorrt.build import build_engines

from fake_tensorrt import fake_tensorrt
from test_tensorrt_build import ORIN, TRT85, add_int8


def test_the_package_requires_python_3_10():
    """The metadata the build backend wrote for this installation says so."""
    assert importlib.metadata.metadata("edgerestore")["Requires-Python"] == ">=3.10"


def python38() -> str | None:
    """JetPack 5's Python: on PATH, or a pyenv installation of it."""
    candidates = [shutil.which("python3.8")]
    root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates += sorted(glob.glob(f"{root}/versions/3.8*/bin/python3.8"))
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                               text=True)
        if probe.returncode == 0 and probe.stdout.strip() == "(3, 8)":
            return candidate
    return None


def test_pip_of_python_3_8_refuses_the_package(tmp_path):
    """A wheel with this installation's metadata, offered to Python 3.8's pip (nothing is
    installed: --dry-run into a scratch target, no index)."""
    interpreter = python38()
    if interpreter is None:
        pytest.skip("no Python 3.8 interpreter (JetPack 5's) here to try the install with")
    dist = importlib.metadata.distribution("edgerestore")
    info = f"edgerestore-{dist.version}.dist-info"
    wheel = tmp_path / f"edgerestore-{dist.version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{info}/METADATA", dist.read_text("METADATA"))
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                          "Tag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    done = subprocess.run([interpreter, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-index",
                           "--target", str(tmp_path / "target"), str(wheel)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode != 0
    assert "ERROR: Package 'edgerestore' requires a different Python: 3.8." in done.stderr
    assert "not in '>=3.10'" in done.stderr


# -- trtexec command lines -------------------------------------------------------------------------
@pytest.fixture
def bundle(small_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(small_bundle, tmp_path / "dncnn"))


def test_trtexec_lines_for_jetpack5_int8(bundle, run_cli):
    add_int8(bundle, (8, 5, 2))
    result = run_cli("build", bundle, "--trtexec", "8.5", "--precision", "int8")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"trtexec --onnx={bundle}/main.int8.onnx --minShapes=input:1x1x192x192 --optShapes=input:16x1x192x192 "
        "--maxShapes=input:16x1x192x192 --int8 --memPoolSize=workspace:1024 "
        "--saveEngine=main.int8.engine"]  # the Q/DQ graph: explicit INT8, as `build` does on 8.x
    dla = run_cli("build", bundle, "--trtexec", "8.5", "--precision", "int8", "--dla", "0", "--max-batch", "8",
                  "--tile", "96").stdout.split()
    assert dla[2:] == ["--shapes=input:8x1x96x96", "--int8", "--fp16", f"--calib={bundle}/calib/main.cache",
                       "--useDLACore=0", "--allowGPUFallback", "--memPoolSize=workspace:1024",
                       "--saveEngine=main.int8-dla0.engine"]
    fp16 = run_cli("build", bundle, "--trtexec", "8.5", "--precision", "fp16").stdout.split()
    assert "--fp16" in fp16 and not any(arg.startswith("--calib") for arg in fp16)


def test_trtexec_refuses_a_cache_for_another_tensorrt(bundle, run_cli):
    """Only DLA reads the cache below TensorRT 11 (implicit INT8)."""
    add_int8(bundle, (10, 3, 0))
    result = run_cli("build", bundle, "--trtexec", "8.5", "--precision", "int8", "--dla", "0")
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "written for TensorRT version 100300" in result.stderr and "--trt-version 8.5.2" in result.stderr
    strongly = run_cli("build", bundle, "--trtexec", "10.3", "--precision", "int8").stdout.split()
    assert strongly[1] == f"--onnx={bundle}/main.int8.onnx" and "--stronglyTyped" in strongly  # explicit Q/DQ on 10


def test_trtexec_shapes_are_the_profiles_build_uses(bundle, run_cli, monkeypatch):
    """Every input of every stage, as `build --tensorrt` profiles it (here: on a fake 8.5)."""
    from edgerestore.runtime.tensorrt import cuda_driver

    monkeypatch.setattr(cuda_driver, "device_identity", lambda ordinal=0: ORIN)
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", fake_tensorrt(TRT85))
    [path] = build_engines(Bundle(bundle), "fp16", max_batch=4, tile=64)
    profile = engines.read_info(engines.info_path(path)).profile
    line = run_cli("build", bundle, "--trtexec", "8.5.2", "--max-batch", "4", "--tile", "64").stdout.split()
    for key in ("min", "opt", "max"):
        flag = next(arg for arg in line if arg.startswith(f"--{key}Shapes="))
        expected = ",".join(f"{name}:{'x'.join(map(str, shapes[key]))}" for name, shapes in profile.items())
        assert flag == f"--{key}Shapes={expected}"
