"""``export --int8`` with bad input: one ``error:`` line, exit 1, and no bundle (whole or
partial) left behind, as in test_bad_input.py."""

import numpy as np
import pytest
import torch

from test_bad_input import assert_clean_failure, files_under
from test_int8_export import write_images


def tiny_checkpoint(path, poison=False, depth=3):
    from edgerestore.models import DnCNN, save_checkpoint

    torch.manual_seed(0)
    model = DnCNN(channels=1, depth=depth, features=8)
    if poison:
        # Finite for pixels in [0, 1] (what the export parity check feeds), but a negative
        # noisy pixel makes the first layer ~1e38 and the second overflow to Inf.
        with torch.no_grad():
            model.model[0].weight.zero_()
            model.model[0].bias.zero_()
            model.model[0].weight[0, 0, 1, 1] = -3e38
            model.model[2].weight.fill_(100.0)
    save_checkpoint(path, model.state_dict(), "dncnn", model.config())
    return path


@pytest.fixture
def weights(tmp_path):
    return tiny_checkpoint(tmp_path / "tiny.pth")


def export(run_cli, weights, calib, out, *extra):
    return run_cli("export", "dncnn", "--weights", weights, "--int8", "--calib", calib, "--calib-degrade",
                   "gaussian:25", "--calib-crop", "48", *extra, "-o", out)


def assert_no_bundle(out):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")], "temporary bundle left"


def test_empty_calibration_folder(run_cli, weights, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    assert_clean_failure(export(run_cli, weights, empty, tmp_path / "b"), "calibration folder", "no images")
    assert_no_bundle(tmp_path / "b")


def test_missing_calibration_folder(run_cli, weights, tmp_path):
    assert_clean_failure(export(run_cli, weights, tmp_path / "nope", tmp_path / "b"), "nope")
    assert_no_bundle(tmp_path / "b")


def test_calibration_images_smaller_than_the_tile(run_cli, weights, tmp_path):
    small = write_images(tmp_path / "small", 4, (40, 40))
    result = export(run_cli, weights, small, tmp_path / "b")
    assert_clean_failure(result, "is 40x40, smaller than the 48x48 calibration tile")
    assert_no_bundle(tmp_path / "b")


def test_calibration_images_smaller_than_a_fixed_model_tile(run_cli, tmp_path):
    """Path-Restore only runs on 63x63 tiles: a crop below that is refused, not shrunk."""
    from edgerestore.models import PathRestore, save_checkpoint

    model = PathRestore(features=8)
    weights = tmp_path / "pr.pth"
    save_checkpoint(weights, model.state_dict(), "pathrestore", model.config())
    data = write_images(tmp_path / "rgb", 4, (60, 60, 3))
    result = run_cli("export", "pathrestore", "--weights", weights, "--int8", "--calib", data, "--calib-degrade",
                     "gaussian:25", "--calib-crop", "60", "-o", tmp_path / "b")
    assert_clean_failure(result, "smaller than the 63x63 tile", "--calib-crop 63")
    assert_no_bundle(tmp_path / "b")


def test_an_int8_bundle_without_an_int8_layer_is_refused(run_cli, tmp_path):
    """Two convolutions, both of which the default policy keeps in FP32 (first and last)."""
    weights = tiny_checkpoint(tmp_path / "two.pth", depth=2)
    data = write_images(tmp_path / "calib", 3, (56, 56))
    result = export(run_cli, weights, data, tmp_path / "b")
    assert_clean_failure(result, "the FP32 policy keeps every compute layer (2) in FP32", "no INT8 layer")
    assert_no_bundle(tmp_path / "b")


def test_non_finite_activations(run_cli, tmp_path):
    import cv2

    weights = tiny_checkpoint(tmp_path / "poison.pth", poison=True)
    data = tmp_path / "dark"
    data.mkdir()
    for i in range(4):  # black frames: half the noisy pixels are negative
        cv2.imwrite(str(data / f"{i}.png"), np.zeros((56, 56), np.uint8))
    result = export(run_cli, weights, data, tmp_path / "b")
    assert_clean_failure(result, "NaN/Inf")
    assert_no_bundle(tmp_path / "b")


@pytest.mark.parametrize("method", ["kl", "MinMax", ""])
def test_unknown_method(run_cli, weights, tmp_path, method):
    data = write_images(tmp_path / "calib", 3, (56, 56))
    result = export(run_cli, weights, data, tmp_path / "b", "--method", method)
    assert_clean_failure(result, f"unknown calibration method '{method}'", "minmax, percentile, entropy, mse")
    assert_no_bundle(tmp_path / "b")


def test_unknown_trt_version_and_options_without_int8(run_cli, weights, tmp_path):
    data = write_images(tmp_path / "calib", 3, (56, 56))
    assert_clean_failure(export(run_cli, weights, data, tmp_path / "b", "--trt-version", "9.9"),
                         "unknown TensorRT version '9.9'")
    assert_clean_failure(run_cli("export", "dncnn", "--weights", weights, "--calib", data, "-o", tmp_path / "b"),
                         "only apply with --int8")
    assert_clean_failure(run_cli("export", "dncnn", "--weights", weights, "--int8", "-o", tmp_path / "b"),
                         "--calib DIR")
    assert_no_bundle(tmp_path / "b")


def test_failed_int8_export_keeps_the_old_bundle(run_cli, weights, tmp_path):
    """Replacing an existing bundle is atomic too: a calibration failure leaves it as it was."""
    out = tmp_path / "b"
    assert run_cli("export", "dncnn", "--weights", weights, "-o", out).exit_code == 0
    before = files_under(out)
    small = write_images(tmp_path / "small", 3, (30, 30))
    assert_clean_failure(export(run_cli, weights, small, out), "calibration tile")
    assert files_under(out) == before
    assert np.all([not p.name.startswith(".b.") for p in tmp_path.iterdir()])
