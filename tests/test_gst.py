"""The ``edgerestore`` GStreamer element in real pipelines (``gst-launch-1.0`` and the Python
application form, ``tests/gst_harness.py``).

GStreamer's Python plugin loader embeds the *system* Python, so the element runs from a venv
of ``/usr/bin/python3`` made with ``--system-site-packages`` (it sees Debian's python3-gi)
holding this checkout's wheel and the ``onnxruntime`` extra: built once per session, pip's
cache makes it quick. The suite's own interpreter compares the frames with
``Session.restore``. Skips, naming the Debian package, only where GStreamer, its Python
loader, gst-python or a needed plugin is not installed (``.ci/run`` installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SYSTEM_PYTHON = "/usr/bin/python3"
HARNESS = Path(__file__).with_name("gst_harness.py")
ELEMENTS = {"videotestsrc": "gstreamer1.0-plugins-base", "videoconvert": "gstreamer1.0-plugins-base",
            "appsrc": "gstreamer1.0-plugins-base", "pngenc": "gstreamer1.0-plugins-good",
            "jpegenc": "gstreamer1.0-plugins-good", "avimux": "gstreamer1.0-plugins-good",
            "python": "gstreamer1.0-python3-plugin-loader"}
GI_PROBE = ("import gi; [gi.require_version(n, '1.0') for n in ('Gst', 'GstBase', 'GstVideo')]; "
            "from gi.repository import Gst, GstBase, GstVideo")
SIZE = "width=161,height=120"  # an odd width: RGB rows are padded to 4 bytes


def _missing(env: dict[str, str]) -> str | None:
    """The Debian package this machine lacks for the element's tests, or None. A check that
    fails although its package is installed is a failure, not a skip: a broken loader (e.g. a
    venv's python3 first on PATH) must not pass for a missing one."""
    if shutil.which("gst-launch-1.0") is None or shutil.which("gst-inspect-1.0") is None:
        return "gstreamer1.0-tools"
    checks = [("python3-gst-1.0", [SYSTEM_PYTHON, "-c", GI_PROBE])] if Path(SYSTEM_PYTHON).exists() else []
    checks += [(package, ["gst-inspect-1.0", name]) for name, package in ELEMENTS.items()]
    if not checks or checks[0][0] != "python3-gst-1.0":
        return "python3-gst-1.0"
    for package, command in checks:
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode:
            if _installed(package):
                pytest.fail(f"{package} is installed, yet `{' '.join(command[:2])}` fails:\n"
                            + (result.stdout + result.stderr).strip()[-2000:])
            return package
    return None


def _installed(package: str) -> bool:
    """Whether dpkg lists ``package`` as installed (False where there is no dpkg)."""
    if shutil.which("dpkg-query") is None:
        return False
    status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return status.returncode == 0 and "ok installed" in status.stdout


@pytest.fixture(scope="session")
def gst(tmp_path_factory, request) -> dict[str, str]:
    """The environment GStreamer runs the element in: GST_PLUGIN_PATH from the venv's
    ``edgerestore gst-plugin-path``, a registry of its own, the venv first on PATH."""
    root = tmp_path_factory.mktemp("gst")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    env["PATH"] = _without_venvs(env.get("PATH", ""))
    env["GST_REGISTRY"] = str(root / "registry.bin")
    missing = _missing(env)
    if missing is not None:
        pytest.skip(f"GStreamer with gst-python is not installed: apt install {missing} (see .ci/run)")
    runtime_wheel = request.getfixturevalue("runtime_wheel")  # only once GStreamer is known to be here
    venv = root / "venv"
    _check([SYSTEM_PYTHON, "-m", "venv", "--without-pip", "--system-site-packages", venv], "creating the venv")
    python = venv / "bin" / "python"
    # The suite's pip works on the system Python's venv (no ensurepip needed there).
    _check([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-compile",
            f"{runtime_wheel}[onnxruntime]"], "installing the wheel into the system Python's venv", env=env)
    path = _check([venv / "bin" / "edgerestore", "gst-plugin-path"], "edgerestore gst-plugin-path", env=env)
    env["GST_PLUGIN_PATH"] = path.stdout.strip()
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    env["EDGERESTORE_GST_PYTHON"] = str(python)
    return env


def _without_venvs(path: str) -> str:
    """PATH less the bin folders of virtual environments. The Python GStreamer embeds finds its
    home through the first ``python3`` on PATH: the suite's venv (another Python) there makes
    pygobject's initialization fail in the plugin scanner, and the ``python`` loader vanishes."""
    return os.pathsep.join(p for p in path.split(os.pathsep) if p and not (Path(p).parent / "pyvenv.cfg").exists())


def _check(command: list, what: str, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=600, env=env)
    if result.returncode:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        pytest.fail(f"{what} failed (exit {result.returncode}); it needs the package registry. Last lines:\n{tail}")
    return result


def launch(env: dict, description: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["gst-launch-1.0", *description.split()], capture_output=True, text=True, env=env,
                          timeout=timeout)


def harness(env: dict, description: str, *args, timeout: float = 300) -> dict:
    result = subprocess.run([env["EDGERESTORE_GST_PYTHON"], str(HARNESS), description, *map(str, args)],
                            capture_output=True, text=True, env=env, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def first_error(result: subprocess.CompletedProcess) -> str:
    """gst-launch's first ERROR line (it prints the bus's errors in order)."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, output  # 1: an error while running; 255: a state change refused
    assert "Traceback" not in output, output
    return next(line for line in output.splitlines() if line.startswith("ERROR: from element"))


@pytest.fixture(scope="session")
def color_bundle(tmp_path_factory) -> Path:
    """A 5-layer colour DnCNN with random weights (the suite's small_bundle is gray)."""
    import torch

    from edgerestore.export import write_bundle
    from edgerestore.models import DnCNN

    torch.manual_seed(1)
    model = DnCNN(channels=3, depth=5, features=16).eval()
    with torch.no_grad():  # a small residual: outputs stay image-like, yet differ from the input
        model.model[-1].weight.mul_(0.1)
    out = tmp_path_factory.mktemp("bundles") / "dncnn_color"
    write_bundle(model, "dncnn", out)
    return out


@pytest.fixture(scope="module")
def color_session(color_bundle):
    import edgerestore

    with edgerestore.load(color_bundle, backend="onnxruntime") as session:
        yield session


def as_rgb(frame: np.ndarray, caps: str) -> np.ndarray:
    """A saved colour frame (the buffer's channel order) as RGB."""
    return frame[..., ::-1] if "format=(string)BGR" in caps else frame


def assert_timestamps_kept(report: dict, count: int) -> None:
    assert len(report["in"]) == len(report["out"]) == count, (len(report["in"]), len(report["out"]))
    assert report["out"] == report["in"]  # pts and duration of every buffer
    pts = [b["pts"] for b in report["out"]]
    assert pts == sorted(set(pts)) and report["out"][0]["duration"] > 0


def test_gst_plugin_path_names_the_plugin_folder(run_cli):
    result = run_cli("gst-plugin-path")
    assert result.exit_code == 0, result.output
    folder = Path(result.stdout.strip())
    assert (folder / "python" / "edgerestore_gst.py").is_file()


def test_inspect_describes_the_element(gst):
    result = subprocess.run(["gst-inspect-1.0", "edgerestore"], capture_output=True, text=True, env=gst)
    assert result.returncode == 0, result.stderr
    for needle in ("Filter/Effect/Video", "GstBaseTransform", "GRAY8", "RGBx", "bundle", "backend", "precision",
                   "min-confidence", "memory-budget", "stats", "qos", "edgerestore-stats"):
        assert needle in result.stdout, needle


def test_videotestsrc_to_png_equals_session_restore(gst, color_bundle, color_session, tmp_path):
    """The acceptance pipeline (a moving ball, so that frames differ): 30 of 30 frames, each
    PNG equal to Session.restore of the frame the element was given; timestamps kept."""
    source = f"videotestsrc num-buffers=30 pattern=ball ! video/x-raw,{SIZE} ! videoconvert"
    pngs = tmp_path / "launch"
    pngs.mkdir()
    result = launch(gst, f"{source} ! edgerestore bundle={color_bundle} ! videoconvert ! pngenc "
                         f"! multifilesink location={pngs}/%03d.png")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    saved = tmp_path / "frames"
    saved.mkdir()
    report = harness(gst, f"{source} ! edgerestore name=e bundle={color_bundle} ! videoconvert ! pngenc "
                          f"! multifilesink location={tmp_path}/%03d.png", "--save", saved)
    assert report["eos"] and not report["errors"], report["errors"]
    assert_timestamps_kept(report, 30)
    assert report["stats"]["restored"] == 30 and report["stats"]["dropped"] == 0
    assert report["stats_messages"] and report["stats_messages"][-1]["restored"] == 30
    assert report["stats"]["gmac-per-frame"] > 0 and report["stats"]["fps"] > 0
    from PIL import Image

    caps = report["caps"][0]
    files = sorted(pngs.glob("*.png"))
    assert len(files) == 30
    frames = [as_rgb(np.load(saved / f"in_{k:03d}.npy"), caps) for k in range(30)]
    assert frames[0].shape == (120, 161, 3) and not np.array_equal(frames[0], frames[15])
    for k, path in enumerate(files):
        expected = color_session.restore(frames[k])
        assert not np.array_equal(expected, frames[k])  # the element restored, it did not pass through
        assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), expected), path.name
        assert np.array_equal(as_rgb(np.load(saved / f"out_{k:03d}.npy"), caps), expected)


def test_jpeg_avi_file_to_file(gst, color_bundle, color_session, tmp_path):
    """A file pipeline with codecs from base/good: 30 frames of MJPEG in AVI in, restored,
    encoded again; every frame out, at its timestamp, close to Session.restore of the decoded
    input (JPEG quality 95 is the only loss)."""
    original, restored = tmp_path / "in.avi", tmp_path / "out.avi"
    result = launch(gst, f"videotestsrc num-buffers=30 pattern=ball ! video/x-raw,{SIZE},framerate=30/1 ! jpegenc "
                         f"! avimux ! filesink location={original}")
    assert result.returncode == 0, result.stderr
    result = launch(gst, f"filesrc location={original} ! avidemux ! jpegdec ! videoconvert "
                         f"! edgerestore bundle={color_bundle} ! videoconvert ! jpegenc quality=95 ! avimux "
                         f"! filesink location={restored}")
    assert result.returncode == 0, result.stdout + result.stderr
    decoded = {}
    for name, path in (("in", original), ("out", restored)):
        folder = tmp_path / name
        folder.mkdir()
        report = harness(gst, f"filesrc location={path} ! avidemux ! jpegdec ! videoconvert "
                              f"! video/x-raw,format=RGB ! identity name=e ! fakesink", "--save", folder)
        assert report["eos"] and not report["errors"], report["errors"]
        decoded[name] = report
    assert len(decoded["in"]["out"]) == 30
    assert decoded["out"]["out"] == decoded["in"]["out"]  # 30 of 30, same timestamps
    for k in range(30):
        expected = color_session.restore(np.load(tmp_path / "in" / f"out_{k:03d}.npy")).astype(np.float64)
        got = np.load(tmp_path / "out" / f"out_{k:03d}.npy").astype(np.float64)
        psnr = 10 * np.log10(255 ** 2 / np.mean((got - expected) ** 2))
        assert psnr > 35, (k, psnr)


def test_caps_change_mid_stream_replans_tiles(gst, color_bundle, color_session, tmp_path):
    """A size and format change from appsrc: the frames after it come out at the new size,
    each equal to Session.restore of its input; timestamps kept."""
    report = harness(gst, f"appsrc name=src format=time ! edgerestore name=e bundle={color_bundle} "
                          f"! fakesink sync=false", "--push", "RGB:64x48:4,BGRx:97x61:4", "--save", tmp_path)
    assert report["eos"] and not report["errors"], report["errors"]
    assert len(report["caps"]) == 2 and "width=(int)97" in report["caps"][1]
    assert_timestamps_kept(report, 8)
    for k in range(8):
        caps = report["caps"][k // 4]
        source, out = (as_rgb(np.load(tmp_path / f"{kind}_{k:03d}.npy"), caps) for kind in ("in", "out"))
        assert source.shape == ((48, 64, 3) if k < 4 else (61, 97, 3))
        assert np.array_equal(out, color_session.restore(source)), k
    assert report["stats"]["restored"] == 8


def test_gray_bundle_takes_gray8_with_padded_rows(gst, small_bundle, tmp_path):
    """A gray bundle offers GRAY8 only (videoconvert picks it from RGB upstream); 161-pixel
    rows are padded to 164 bytes, and every frame equals Session.restore of its input."""
    import edgerestore

    report = harness(gst, f"videotestsrc num-buffers=4 pattern=ball ! video/x-raw,format=RGB,{SIZE} ! videoconvert "
                          f"! edgerestore name=e bundle={small_bundle} ! fakesink", "--save", tmp_path)
    assert report["eos"] and not report["errors"], report["errors"]
    assert "format=(string)GRAY8" in report["caps"][0]
    assert_timestamps_kept(report, 4)
    with edgerestore.load(small_bundle, backend="onnxruntime") as session:
        for k in range(4):
            source = np.load(tmp_path / f"in_{k:03d}.npy")
            assert source.shape == (120, 161)
            assert np.array_equal(np.load(tmp_path / f"out_{k:03d}.npy"), session.restore(source)), k


def test_missing_bundle_is_one_bus_error(gst, tmp_path):
    error = first_error(launch(gst, "videotestsrc num-buffers=3 ! edgerestore ! fakesink"))
    assert "GstEdgeRestore:edgerestore0: no bundle: set the 'bundle' property" in error, error
    error = first_error(launch(gst, f"videotestsrc num-buffers=3 ! edgerestore bundle={tmp_path / 'nope'} "
                                    "! fakesink"))
    assert "GstEdgeRestore:edgerestore0: edgerestore: bundle" in error and "not found" in error, error


def test_caps_that_do_not_fit_the_bundle_are_one_bus_error(gst, color_bundle):
    """Gray frames for a colour bundle: by a caps query (videotestsrc) and by a caps event
    (appsrc); either way the first error on the bus is the element's, naming the fix."""
    error = first_error(launch(gst, f"videotestsrc num-buffers=3 ! video/x-raw,format=GRAY8,{SIZE} "
                                    f"! edgerestore bundle={color_bundle} ! fakesink"))
    assert "GstEdgeRestore:edgerestore0: edgerestore: caps" in error, error
    assert "do not fit bundle" in error and "takes video/x-raw RGB, BGR, RGBx, BGRx" in error, error
    report = harness(gst, f"appsrc name=src format=time ! edgerestore name=e bundle={color_bundle} ! fakesink",
                     "--push", "GRAY8:64x48:2")
    assert report["errors"][0]["source"] == "e", report["errors"]
    assert "do not fit bundle" in report["errors"][0]["message"]
    assert report["out"] == []


def test_qos_drops_late_frames_of_a_live_source(gst, color_bundle):
    """A live source whose frames are 1 ms apart, each taking the element longer: with the
    sink's QoS events, BaseTransform drops the late ones (counted as dropped) and the rest
    come out; the LATENCY query includes the element's frame time. With ``qos=false`` every
    frame is restored (appsrc itself ignores QoS)."""
    description = ("appsrc name=src format=time is-live=true ! edgerestore name=e bundle={} QOS "
                   "! fakesink sync=true qos=true").format(color_bundle)
    push = ("--push", "RGB:320x240:20", "--fps", "1000")
    late = harness(gst, description.replace("QOS", ""), *push)
    assert late["eos"] and not late["errors"], late["errors"]
    stats = late["stats"]
    assert len(late["in"]) == 20 and stats["dropped"] > 0, stats
    assert stats["restored"] + stats["dropped"] == 20 and len(late["out"]) == stats["restored"]
    assert late["latency"]["live"] and late["latency"]["min"] >= stats["latency-ms"] * 1e6 > 0
    every = harness(gst, description.replace("QOS", "qos=false"), *push)
    assert every["stats"]["dropped"] == 0 and len(every["out"]) == 20


def test_plugin_refuses_an_install_for_another_python(tmp_path):
    """The plugin file adds its own site-packages to the embedded interpreter's path only when
    it was made for that interpreter's version; otherwise one line names the fix."""
    import edgerestore.runtime.gst as gst_package

    plugin = tmp_path / "lib" / "python3.1" / "site-packages" / "edgerestore" / "runtime" / "gst" / "python"
    plugin.mkdir(parents=True)
    shutil.copy(gst_package.plugin_path() / "python" / gst_package.PLUGIN_FILE, plugin)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    result = subprocess.run([sys.executable, str(plugin / gst_package.PLUGIN_FILE)], capture_output=True, text=True,
                            env=env)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: edgerestore's GStreamer element: GStreamer embeds Python 3."), last
    assert "installed for python3.1 in" in last and "--system-site-packages" in last, last
