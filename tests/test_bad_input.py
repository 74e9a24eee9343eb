"""Each user error: one clear line on stderr, a non-zero exit, no traceback, and no
output file left behind (complete or partial)."""

import json
import shutil

import cv2
import numpy as np
import pytest


def assert_clean_failure(result, *fragments):
    assert result.exit_code != 0, result.output
    message = result.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in message, message


def files_under(path):
    return sorted(p.name for p in path.rglob("*")) if path.exists() else []


@pytest.fixture
def gray_png(tmp_path):
    path = tmp_path / "in" / "gray.png"
    path.parent.mkdir()
    cv2.imwrite(str(path), (np.random.default_rng(0).random((80, 90)) * 255).astype(np.uint8))
    return path


def test_truncated_image(run_cli, small_bundle, gray_png, tmp_path):
    data = gray_png.read_bytes()
    gray_png.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    out.mkdir()
    assert_clean_failure(run_cli("restore", small_bundle, gray_png, "-o", out / "x.png"), "gray.png")
    assert files_under(out) == []


def test_truncated_jpeg(run_cli, small_bundle, tmp_path):
    path = tmp_path / "photo.jpg"
    cv2.imwrite(str(path), (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    path.write_bytes(path.read_bytes()[:-200])
    assert_clean_failure(run_cli("restore", small_bundle, path, "-o", tmp_path / "o.png"), "photo.jpg")
    assert not (tmp_path / "o.png").exists()


def test_empty_image_file(run_cli, small_bundle, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert_clean_failure(run_cli("restore", small_bundle, empty, "-o", tmp_path / "o.png"), "empty.png")
    assert not (tmp_path / "o.png").exists()


def test_unsupported_image_mode(run_cli, small_bundle, tmp_path):
    path = tmp_path / "float.tif"
    cv2.imwrite(str(path), np.random.default_rng(0).random((40, 40)).astype(np.float32))
    assert_clean_failure(run_cli("restore", small_bundle, path, "-o", tmp_path / "o.png"), "unsupported image mode")
    assert not (tmp_path / "o.png").exists()


def test_image_smaller_than_the_tile(run_cli, small_bundle, gray_png, tmp_path):
    result = run_cli("restore", small_bundle, gray_png, "-o", tmp_path / "o.png", "--tile", "128", "--overlap", "8")
    assert_clean_failure(result, "smaller than the 128x128 tile")
    assert not (tmp_path / "o.png").exists()


def _copy_bundle(bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    return copy


def test_bundle_with_missing_onnx(run_cli, small_bundle, gray_png, tmp_path):
    bundle = _copy_bundle(small_bundle, tmp_path)
    (bundle / "main.onnx").unlink()
    assert_clean_failure(run_cli("restore", bundle, gray_png, "-o", tmp_path / "o.png"), "main.onnx", "missing")
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torch"])
def test_bundle_with_corrupt_onnx(run_cli, small_bundle, gray_png, tmp_path, backend):
    bundle = _copy_bundle(small_bundle, tmp_path)
    onnx_file = bundle / "main.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:200] + b"\x00garbage" * 10)
    result = run_cli("restore", bundle, gray_png, "-o", tmp_path / "o.png", "--backend", backend)
    assert_clean_failure(result, "corrupt")
    # Without the checksum the backend itself must still fail cleanly.
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["stages"]["main"]["sha256"] = {}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    result = run_cli("restore", bundle, gray_png, "-o", tmp_path / "o.png", "--backend", backend)
    assert_clean_failure(result, "main.onnx")
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("path", ["../outside.onnx", "/etc/hostname", "sub/../../outside.onnx"])
def test_manifest_path_escaping_the_bundle(run_cli, small_bundle, gray_png, tmp_path, path):
    bundle = _copy_bundle(small_bundle, tmp_path)
    shutil.copy(bundle / "main.onnx", tmp_path / "outside.onnx")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["stages"]["main"]["files"]["fp32"] = path
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    result = run_cli("restore", bundle, gray_png, "-o", tmp_path / "o.png")
    assert_clean_failure(result, "outside the bundle")


def test_manifest_symlink_escaping_the_bundle(run_cli, small_bundle, gray_png, tmp_path):
    bundle = _copy_bundle(small_bundle, tmp_path)
    shutil.move(bundle / "main.onnx", tmp_path / "elsewhere.onnx")
    (bundle / "main.onnx").symlink_to(tmp_path / "elsewhere.onnx")
    assert_clean_failure(run_cli("restore", bundle, gray_png, "-o", tmp_path / "o.png"), "outside the bundle")


def test_corrupt_manifest(run_cli, small_bundle, gray_png, tmp_path):
    bundle = _copy_bundle(small_bundle, tmp_path)
    (bundle / "manifest.json").write_text("{not json")
    assert_clean_failure(run_cli("restore", bundle, gray_png, "-o", tmp_path / "o.png"), "not valid JSON")


def test_unknown_model_name(run_cli, tmp_path):
    result = run_cli("export", "dncnnn", "--weights", tmp_path / "w.pth", "-o", tmp_path / "b")
    assert_clean_failure(result, "unknown model 'dncnnn'", "dncnn")
    assert not (tmp_path / "b").exists()


def test_unwritable_output_path(run_cli, small_bundle, gray_png, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    result = run_cli("restore", small_bundle, gray_png, "-o", blocker / "o.png")
    assert_clean_failure(result, "cannot write")
    assert blocker.read_text() == "not a directory"
    assert files_under(tmp_path) == ["a_file", "gray.png", "in"]


def test_export_to_unwritable_path_leaves_nothing(run_cli, tmp_path):
    from conftest import KAIR, need_shared

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    result = run_cli("export", "dncnn", "--weights", need_shared(KAIR), "-o", blocker / "bundle")
    assert_clean_failure(result, "cannot write")
    assert files_under(tmp_path) == ["a_file"]


def test_export_never_overwrites_a_folder_that_is_not_a_bundle(run_cli, tmp_path):
    from conftest import KAIR, need_shared

    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "holiday.jpg").write_bytes(b"jpeg")
    result = run_cli("export", "dncnn", "--weights", need_shared(KAIR), "-o", precious)
    assert_clean_failure(result, "refusing to overwrite")
    assert files_under(precious) == ["holiday.jpg"]


def test_bad_degradation_spec(run_cli, small_bundle, tmp_path):
    result = run_cli("eval", small_bundle, "--data", tmp_path, "--degrade", "gausian:25")
    assert_clean_failure(result, "gausian")


def test_missing_weights_file(run_cli, tmp_path):
    result = run_cli("export", "dncnn", "--weights", tmp_path / "nope.pth", "-o", tmp_path / "b")
    assert_clean_failure(result, "nope.pth")
    assert not (tmp_path / "b").exists()


def test_the_console_script_prints_one_line(small_bundle, tmp_path):
    """The installed entry point, not only the click app: exit 1, one line, no traceback."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "edgerestore.runtime.cli", "restore", str(small_bundle),
                             str(tmp_path / "missing.png"), "-o", str(tmp_path / "o.png")],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")
    assert "missing.png" in result.stderr
