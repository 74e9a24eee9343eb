"""The runtime alone, installed as a user installs it: a wheel built once from this checkout
(CUDA off), in a fresh virtual environment with only the ``onnxruntime`` extra. Neither
torch, matplotlib, OpenVINO, OpenCV nor scikit-image may come with it (on a Jetson, a pip
OpenCV would shadow JetPack's GStreamer-enabled one); it must still restore an image from a
bundle the suite exported, exactly as the suite's own runtime does, and every feature that
needs a missing extra must say which, in one line.

This needs the package registry (pip downloads onnxruntime, numpy, ...; its cache makes
reruns quick): without it the test fails and says so, it does not skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

# Import names and distributions the runtime-only install must not bring.
ABSENT_MODULES = ("torch", "matplotlib", "openvino", "cv2", "skimage", "onnxslim", "ray")
ABSENT_DISTRIBUTIONS = ("torch", "matplotlib", "openvino", "opencv-python", "opencv-python-headless",
                        "opencv-contrib-python", "scikit-image", "onnxslim", "ray")


def _run(command: list, what: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=timeout,
                            env=_clean_env(), **kwargs)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        pytest.fail(f"{what} failed (exit {result.returncode}); this test needs the package registry "
                    f"(pip downloads the runtime's dependencies). Last lines:\n{tail}")
    return result


def _clean_env() -> dict[str, str]:
    """The suite's environment less what would leak its own packages into the new venv."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory, runtime_wheel) -> Path:
    """The bin/ folder of a fresh venv holding the wheel with only the onnxruntime extra."""
    root = tmp_path_factory.mktemp("runtime-install")
    wheel = runtime_wheel
    # Without its own pip (ensurepip takes seconds): the suite's pip installs into it (--python).
    _run([sys.executable, "-m", "venv", "--without-pip", root / "venv"], "creating a venv")
    bin_dir = root / "venv" / ("Scripts" if os.name == "nt" else "bin")
    _pip(bin_dir, "install", "-q", "--no-compile", f"{wheel}[onnxruntime]",
         what="installing the wheel with the onnxruntime extra")
    return bin_dir


def _pip(bin_dir: Path, *args, what: str) -> subprocess.CompletedProcess:
    """The suite's pip (>= 22.3, for --python) working on the venv of ``bin_dir``."""
    return _run([sys.executable, "-m", "pip", "--python", bin_dir / "python", *args], what)


def _edgerestore(bin_dir: Path, *args, cwd=None) -> subprocess.CompletedProcess:
    """The venv's console script in a fresh process, as a user runs it."""
    return subprocess.run([str(bin_dir / "edgerestore"), *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=_clean_env(), cwd=cwd)


def _one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ")
    for needle in needles:
        assert needle in result.stderr, result.stderr
    return result.stderr


def test_runtime_only_install_has_no_heavy_packages(runtime_venv):
    listed = _pip(runtime_venv, "list", "--format=json", what="pip list").stdout
    installed = {p["name"].lower() for p in json.loads(listed)}
    assert {"edgerestore", "onnxruntime", "onnx", "numpy", "pillow"} <= installed
    assert not installed & set(ABSENT_DISTRIBUTIONS), sorted(installed & set(ABSENT_DISTRIBUTIONS))
    probe = "import importlib.util, json, sys; print(json.dumps([m for m in sys.argv[1:] if importlib.util.find_spec(m)]))"
    found = json.loads(_run([runtime_venv / "python", "-c", probe, *ABSENT_MODULES], "probing modules").stdout)
    assert found == []


# Imports the CLI's runtime commands, then every module of the runtime package: only the
# backends of absent packages may fail, and the commands must not load any heavy package.
_IMPORTS = """
import importlib, importlib.util, json, pkgutil, sys
import edgerestore.runtime as runtime
for name in ("cli", "commands", "stream_command", "profile_command", "demo", "tensorrt.commands",
             "tensorrt.build"):
    importlib.import_module(f"edgerestore.runtime.{name}")
heavy = sorted(m for m in ("onnxruntime", "torch", "cv2", "matplotlib", "skimage", "openvino", "ray")
               if m in sys.modules)
failed = {}
for module in pkgutil.walk_packages(runtime.__path__, "edgerestore.runtime."):
    if not module.ispkg and not importlib.util.find_spec(module.name).origin.endswith(".py"):
        continue  # the tile library's shared object
    try:
        importlib.import_module(module.name)
    except ModuleNotFoundError as exc:
        failed[module.name] = exc.name
print(json.dumps({"heavy": heavy, "failed": failed}))
"""


def test_runtime_modules_import_without_extras(runtime_venv):
    report = json.loads(_run([runtime_venv / "python", "-c", _IMPORTS], "importing the runtime").stdout)
    assert report["heavy"] == []  # `edgerestore build` on a Jetson loads neither ONNX Runtime nor torch
    assert report["failed"] == {"edgerestore.runtime.backends.openvino_backend": "openvino",
                                "edgerestore.runtime.backends.torch_backend": "torch",
                                "edgerestore.runtime.backends.tensorrt_backend": "tensorrt",
                                # GStreamer's PyGObject is the system Python's (python3-gi), not pip's
                                "edgerestore.runtime.gst.element": "gi"}


# Library features that need an absent extra: each raises EdgeRestoreError with the pip line.
_FEATURES = """
import json
from pathlib import Path
import numpy as np
from edgerestore.runtime import degrade, imageio, metrics, profile_plot, video
from edgerestore.runtime.errors import EdgeRestoreError
features = {
    "degrade": lambda: degrade.parse("gaussian:5+blur:1.5"),
    "ssim": lambda: metrics.ssim(np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)),
    "video": lambda: video.CaptureSource("clip.mp4"),
    "plot": lambda: profile_plot.plot_latency(Path("p.png"), "t", [("a", {"stage": np.ones(3)})]),
    "png16": lambda: imageio.write_image("x.png", np.zeros((4, 4, 3), np.uint16)),
}
report = {}
for name, feature in features.items():
    try:
        feature()
        report[name] = None
    except EdgeRestoreError as err:
        report[name] = str(err)
print(json.dumps(report))
"""


def test_features_name_their_extra(runtime_venv, tmp_path):
    report = json.loads(_run([runtime_venv / "python", "-c", _FEATURES], "trying optional features",
                             cwd=tmp_path).stdout)
    opencv = "needs OpenCV: pip install 'edgerestore[opencv]' (on a Jetson: JetPack's python3-opencv"
    assert report["degrade"].startswith("the 'blur' degradation " + opencv)
    assert report["ssim"] == "SSIM needs scikit-image: pip install 'edgerestore[eval]'"
    assert report["video"].startswith("reading videos, cameras and GStreamer pipelines " + opencv)
    assert report["plot"] == "profile --plot needs matplotlib: pip install 'edgerestore[plot]'"
    assert opencv in report["png16"] and report["png16"].endswith("; or write a .tif")
    assert all("\n" not in message for message in report.values())
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def noisy_png(tmp_path_factory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("images") / "noisy.png"
    Image.fromarray((np.random.default_rng(0).random((40, 52)) * 255).astype(np.uint8)).save(path)
    return path


def test_restore_matches_the_suites_runtime(runtime_venv, small_bundle, noisy_png, tmp_path):
    from edgerestore.runtime import imageio
    from edgerestore.runtime.session import Session

    out = tmp_path / "clean.png"
    result = _edgerestore(runtime_venv, "restore", small_bundle, noisy_png, "-o", out, "--backend", "onnxruntime",
                          "--json")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert json.loads(result.stdout)["backend"] == "onnxruntime"
    image = imageio.read_image(noisy_png)
    expected = Session(small_bundle, backend="onnxruntime").restore(image.pixels)
    restored = imageio.read_image(out)
    assert restored.pixels.shape == expected.shape == (40, 52, 1) and restored.pixels.dtype == np.uint8
    probe = "from importlib.metadata import version; print(version('onnxruntime'))"
    theirs = _run([runtime_venv / "python", "-c", probe], "reading the venv's onnxruntime version").stdout.strip()
    if theirs == version("onnxruntime"):
        # The same ONNX Runtime on the same CPU, the same tile library code (CPU part of
        # either build): the same floats, so the same pixels.
        np.testing.assert_array_equal(restored.pixels, expected)
    else:
        # Another release may sum a convolution in another order: a float error far below
        # half an 8-bit step, so a pixel can only round to the neighbouring level.
        assert np.abs(restored.pixels.astype(int) - expected).max() <= 1, (theirs, version("onnxruntime"))


def test_cli_without_extras(runtime_venv, small_bundle, noisy_png, tmp_path):
    for args in (["--help"], ["restore", "--help"]):
        result = _edgerestore(runtime_venv, *args)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "restore" in _edgerestore(runtime_venv, "--help").stdout
    _one_line_error(_edgerestore(runtime_venv, "export", "dncnn", "-o", tmp_path / "b"),
                    "edgerestore export needs PyTorch: pip install 'edgerestore[export]'")
    _one_line_error(_edgerestore(runtime_venv, "restore", small_bundle, noisy_png, "-o", tmp_path / "o.png",
                                 "--backend", "openvino"),
                    "backend 'openvino' needs OpenVINO: pip install 'edgerestore[openvino]'")
    _one_line_error(_edgerestore(runtime_venv, "restore", small_bundle, noisy_png, "-o", tmp_path / "o.png",
                                 "--route-map", tmp_path / "map.png"),
                    "--route-map) needs OpenCV: pip install 'edgerestore[opencv]'", "JetPack's python3-opencv")
    _one_line_error(_edgerestore(runtime_venv, "eval", small_bundle, "--data", noisy_png.parent, "--degrade",
                                 "gaussian:25"), "eval (SSIM) needs scikit-image: pip install 'edgerestore[eval]'")
    _one_line_error(_edgerestore(runtime_venv, "build", small_bundle, "--tensorrt"), "TensorRT is not installed")
    _one_line_error(_edgerestore(runtime_venv, "restore", small_bundle, noisy_png, "-o", tmp_path / "job", "--ray"),
                    "--ray needs Ray Data: pip install 'edgerestore[ray]'")
    check = _edgerestore(runtime_venv, "check", small_bundle)  # onnx alone: the Jetson's pre-build check runs
    assert check.returncode == 0 and "passes the TensorRT check" in check.stderr, check.stderr
    assert list(tmp_path.iterdir()) == []  # no output from any refused command


def test_auto_backend_names_the_extras(monkeypatch):
    """With no CPU backend installed, ``auto`` says which extras provide one."""
    import importlib.util

    from edgerestore.runtime import backends
    from edgerestore.runtime.errors import EdgeRestoreError

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(EdgeRestoreError, match=r"pip install 'edgerestore\[onnxruntime\]' or "
                                                r"'edgerestore\[openvino\]'"):
        backends.resolve("auto")
