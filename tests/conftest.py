"""Shared fixtures. Real data and weights live in ../shared beside the repository;
tests that need them skip with a clear message where it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgerestore.runtime.cli import cli

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGERESTORE_SHARED", REPO.parent / "shared"))
KAIR = SHARED / "weights" / "dncnn_25_kair_state_dict.pth"
CSZN = SHARED / "weights" / "dncnn_sigma25_cszn_legacy_module.pth"
SET12 = SHARED / "data" / "Set12"


def need_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found: the shared data folder (../shared, or $EDGERESTORE_SHARED) is absent")
    return path


@pytest.fixture(scope="session")
def runtime_wheel(tmp_path_factory) -> Path:
    """A wheel of this checkout (CUDA off), built once per session: what a user installs
    (tests/test_runtime_install.py, and the GStreamer element's venv in tests/test_gst.py)."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"),
                             str(REPO), "-C", "cmake.define.EDGERESTORE_CUDA=OFF", "-C", f"build-dir={root / 'build'}"],
                            capture_output=True, text=True, timeout=900, env=env)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        pytest.fail(f"building the wheel (pip wheel, CUDA off) failed (exit {result.returncode}); it needs the "
                    f"package registry (scikit-build-core). Last lines:\n{tail}")
    return next((root / "dist").glob("edgerestore-*.whl"))


@pytest.fixture(scope="session")
def kair_bundle(tmp_path_factory) -> Path:
    from edgerestore.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "dncnn_kair"
    export_bundle("dncnn", out, weights=need_shared(KAIR))
    return out


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory) -> Path:
    """A 5-layer DnCNN with random weights: fast, and its halo (5) is easy to reason about."""
    import torch

    from edgerestore.export import write_bundle
    from edgerestore.models import DnCNN

    torch.manual_seed(0)
    model = DnCNN(channels=1, depth=5, features=16).eval()
    with torch.no_grad():  # shrink the residual so outputs stay image-like
        model.model[-1].weight.mul_(0.1)
    out = tmp_path_factory.mktemp("bundles") / "dncnn_small"
    write_bundle(model, "dncnn", out)
    return out


@pytest.fixture(scope="session")
def pathrestore_bundle(tmp_path_factory) -> Path:
    """The shipped Path-Restore checkpoint, exported once per test session."""
    from edgerestore.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "pathrestore"
    export_bundle("pathrestore", out)
    return out


class Cli:
    """Runs the real click app in-process; stdout and stderr kept apart."""

    def __call__(self, *args: str):
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def run_cli() -> Cli:
    return Cli()


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules whose PyTorch reference passes are small: more threads only contend on a
    shared CPU. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def demo_int8_roundtrip(run_cli, model: str, images: Path, spec: str, crop: int, bundle: Path, image: Path,
                        *restore_args: str) -> dict:
    """``export MODEL --int8`` (the shipped demo checkpoint, a tiny minmax calibration on
    ``images``), then ``restore`` of ``image`` and a one-frame ``profile`` with INT8 stages.
    Returns the export report; checks the parts every demo model shares."""
    import json

    result = run_cli("export", model, "-o", bundle, "--int8", "--calib", images, "--calib-degrade", spec,
                     "--calib-crop", str(crop), "--calib-images", "2", "--holdout", "2", "--method", "minmax",
                     "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert max(p["max_abs_error"] for p in report["parity"]) <= 1e-4
    fp32, int8 = report["int8"]["scores"][:2]
    assert int8["precision"] == "int8" and abs(fp32["psnr"] - int8["psnr"]) < 3
    out = bundle.parent / "out.png"
    result = run_cli("restore", bundle, image, "-o", out, "--json", *restore_args)
    assert result.exit_code == 0, result.output
    assert out.is_file() and json.loads(result.stdout)["precision"] == "int8"
    result = run_cli("profile", bundle, "--size", "64x48", "--iterations", "1", "--warmup", "0", "--json", "-")
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)["runs"][0]
    assert run["precision"] == "int8" and run["stages"] and run["latency_ms"]["p50"] > 0
    return report
