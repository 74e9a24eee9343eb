import json

import cv2
import numpy as np



def test_models_lists_declared_properties(run_cli):
    result = run_cli("models", "--json")
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert {"dncnn", "dncnn-b", "cdncnn-b"} <= set(rows)
    assert rows["dncnn"]["receptive_field"] == 35 and rows["cdncnn-b"]["channels"] == 3
    assert run_cli("models").exit_code == 0


def test_help_explains_every_command(run_cli):
    for command in ("models", "export", "restore", "eval", "demo"):
        result = run_cli(command, "--help")
        assert result.exit_code == 0 and "Usage:" in result.stdout


def test_restore_keeps_16_bit_and_alpha(run_cli, small_bundle, tmp_path):
    rng = np.random.default_rng(0)
    bgra = (rng.random((70, 90, 4)) * 65535).astype(np.uint16)
    source = tmp_path / "rgba16.png"
    cv2.imwrite(str(source), bgra)
    out = tmp_path / "out.png"
    result = run_cli("restore", small_bundle, source, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    restored = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert restored.dtype == np.uint16 and restored.shape == (70, 90, 4)
    assert np.array_equal(restored[..., 3], bgra[..., 3])
    assert json.loads(result.stdout)["images"] == 1


def test_restore_a_directory_into_a_directory(run_cli, small_bundle, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.png", "b.jpg", "c.bmp", "d.tif"):
        cv2.imwrite(str(inputs / name), (np.random.default_rng(1).random((64, 80)) * 255).astype(np.uint8))
    result = run_cli("restore", small_bundle, inputs, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.jpg", "c.bmp", "d.tif"]


def test_eval_with_ground_truth_pairs(run_cli, small_bundle, tmp_path):
    clean, noisy = tmp_path / "gt", tmp_path / "noisy"
    clean.mkdir(), noisy.mkdir()
    rng = np.random.default_rng(2)
    for name in ("x.png", "y.png"):
        img = (rng.random((60, 70)) * 255).astype(np.uint8)
        cv2.imwrite(str(clean / name), img)
        cv2.imwrite(str(noisy / name), np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8))
    result = run_cli("eval", small_bundle, "--data", noisy, "--gt", clean, "--json", "--whole")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 2 and report["gt"] == str(clean)


def test_demo_writes_a_before_after_picture(run_cli, tmp_path):
    clean = tmp_path / "clean.png"
    rng = np.random.default_rng(0)
    cv2.imwrite(str(clean), cv2.GaussianBlur((rng.random((126, 180, 3)) * 255).astype(np.uint8), (9, 9), 3))
    result = run_cli("demo", "-o", tmp_path / "demo", "--image", clean, "--backend", "onnxruntime")
    assert result.exit_code == 0, result.output
    picture = cv2.imread(str(tmp_path / "demo" / "before_after.png"))
    assert picture.shape[0] == 126 and picture.shape[1] == 4 * 180 + 3 * 8  # noisy | restored | clean | route map
    assert "blocks bypassed" in result.stdout
