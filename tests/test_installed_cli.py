"""The installed ``edgerestore`` executable, run as a user runs it: a fresh interpreter per
command, found on PATH (never ``python -m``, which imports modules a user's process lacks)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def _editable() -> bool:
    from importlib.metadata import distribution

    direct_url = distribution("edgerestore").read_text("direct_url.json")
    return bool(direct_url and json.loads(direct_url).get("dir_info", {}).get("editable"))


def executable() -> str:
    if _editable():
        # An editable install's import hook loads modules (importlib.util among them) into
        # every interpreter of the venv, which hid a `restore` that crashed for every user.
        pytest.fail("these tests run the CLI as users install it: pip install . (not -e) in this environment")
    # The console script beside this interpreter (the venv the suite runs in), else PATH.
    found = shutil.which("edgerestore", path=str(Path(sys.executable).parent)) or shutil.which("edgerestore")
    if found is None:
        pytest.fail("no 'edgerestore' executable: install the project (pip install .) before running the tests")
    return found


def edgerestore(*args, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    """Run the installed CLI in a fresh process; a clean environment of the suite's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run([executable(), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env)


def test_restore_runs_in_a_fresh_interpreter(small_bundle, tmp_path):
    from PIL import Image

    source = tmp_path / "noisy.png"
    Image.fromarray((np.random.default_rng(0).random((40, 52)) * 255).astype(np.uint8)).save(source)
    out = tmp_path / "clean.png"
    result = edgerestore("restore", small_bundle, source, "-o", out, "--json", "--backend", "auto")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads(result.stdout)["images"] == 1
    assert np.asarray(Image.open(out)).shape == (40, 52)


def test_restore_json_reports_bypass_share_over_every_image(pathrestore_bundle, tmp_path):
    """Routing spends by content: a clean flat image bypasses more blocks than a noisy one, and
    restoring both reports their mean share, not the last image's."""
    from PIL import Image

    rng = np.random.default_rng(0)
    flat = np.full((126, 126, 3), 128, np.uint8)
    noisy = np.clip(128 + rng.normal(0, 60, (126, 126, 3)), 0, 255).astype(np.uint8)
    paths = []
    for name, pixels in (("a_flat.png", flat), ("b_noisy.png", noisy)):
        paths.append(tmp_path / name)
        Image.fromarray(pixels).save(paths[-1])
    shares = []
    for path in paths:
        result = edgerestore("restore", pathrestore_bundle, path, "-o", tmp_path / f"one_{path.name}", "--json")
        assert result.returncode == 0, result.stderr
        shares.append(json.loads(result.stdout)["bypass_share"])
    assert shares[0] - shares[1] > 0.1, shares  # else the test could not tell the mean from the last
    result = edgerestore("restore", pathrestore_bundle, *paths, "-o", tmp_path / "both", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["bypass_share"] == pytest.approx(np.mean(shares), abs=1e-12)


def test_models_lists_declared_properties():
    result = edgerestore("models", "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert {"dncnn", "dncnn-b", "cdncnn-b", "pathrestore", "rlrestore", "allinone"} <= set(rows)
    assert rows["dncnn"]["receptive_field"] == 35 and rows["cdncnn-b"]["channels"] == 3
    table = edgerestore("models")
    assert table.returncode == 0 and "pathrestore" in table.stdout


def test_restore_keeps_16_bit_and_alpha(small_bundle, tmp_path):
    import cv2

    rng = np.random.default_rng(0)
    bgra = (rng.random((70, 90, 4)) * 65535).astype(np.uint16)
    source = tmp_path / "rgba16.png"
    cv2.imwrite(str(source), bgra)
    out = tmp_path / "out.png"
    result = edgerestore("restore", small_bundle, source, "-o", out, "--json")
    assert result.returncode == 0, result.stderr
    restored = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert restored.dtype == np.uint16 and restored.shape == (70, 90, 4)
    assert np.array_equal(restored[..., 3], bgra[..., 3])
    assert json.loads(result.stdout)["images"] == 1


def test_restore_a_directory_into_a_directory(small_bundle, tmp_path):
    """Every format, gray and RGBA 8-bit, keep their names, formats, channels and alpha."""
    import cv2

    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(1)
    gray = (rng.random((64, 80)) * 255).astype(np.uint8)
    for name in ("a.png", "b.jpg", "c.bmp", "d.tif"):
        cv2.imwrite(str(inputs / name), gray)
    rgba = (rng.random((64, 80, 4)) * 255).astype(np.uint8)
    cv2.imwrite(str(inputs / "e.png"), rgba)
    result = edgerestore("restore", small_bundle, inputs, "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.jpg", "c.bmp", "d.tif", "e.png"]
    restored = cv2.imread(str(tmp_path / "out" / "e.png"), cv2.IMREAD_UNCHANGED)
    assert restored.shape == (64, 80, 4) and np.array_equal(restored[..., 3], rgba[..., 3])


def test_eval_with_ground_truth_pairs_and_with_a_degradation(small_bundle, tmp_path):
    import cv2

    clean, noisy = tmp_path / "gt", tmp_path / "noisy"
    clean.mkdir(), noisy.mkdir()
    rng = np.random.default_rng(2)
    for name in ("x.png", "y.png"):
        img = (rng.random((60, 70)) * 255).astype(np.uint8)
        cv2.imwrite(str(clean / name), img)
        cv2.imwrite(str(noisy / name), np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8))
    result = edgerestore("eval", small_bundle, "--data", noisy, "--gt", clean, "--json", "--whole")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["images"] == 2 and report["gt"] == str(clean) and len(report["per_image"]) == 2
    result = edgerestore("eval", small_bundle, "--data", clean, "--degrade", "gaussian:25", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["degrade"] == "gaussian:25" and report["input_psnr"] < 25 and report["psnr"] > 0


def test_a_user_error_is_one_line_and_exit_1(small_bundle, tmp_path):
    result = edgerestore("restore", small_bundle, tmp_path / "missing.png", "-o", tmp_path / "out.png")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and "missing.png" in result.stderr
    assert not (tmp_path / "out.png").exists()
