"""Acceptance: official DnCNN-S sigma=25 weights reproduce the published Set12 PSNR
through export -> bundle -> CPU backends, with the seed-0 evaluation protocol."""

import json

import pytest

from conftest import CSZN, SET12, need_shared

EVAL_KEYS = {"psnr", "ssim", "images", "backend", "precision", "seconds"}


def eval_json(run_cli, bundle, *extra):
    result = run_cli("eval", bundle, "--data", need_shared(SET12), "--degrade", "gaussian:25", "--json", *extra)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert EVAL_KEYS <= set(report) and report["images"] == 12
    return report


@pytest.fixture(scope="module")
def tiled_ort(kair_bundle):
    from conftest import Cli

    return eval_json(Cli(), kair_bundle, "--backend", "onnxruntime")


def test_kair_onnxruntime(tiled_ort):
    assert tiled_ort["backend"] == "onnxruntime" and tiled_ort["precision"] == "fp32"
    assert tiled_ort["psnr"] >= 30.42, tiled_ort["psnr"]
    assert 0.80 < tiled_ort["ssim"] < 1 and tiled_ort["seconds"] > 0


def test_kair_openvino(run_cli, kair_bundle):
    report = eval_json(run_cli, kair_bundle, "--backend", "openvino")
    assert report["backend"] == "openvino"
    assert report["psnr"] >= 30.42, report["psnr"]


def test_tiled_matches_whole_image(run_cli, kair_bundle, tiled_ort):
    whole = eval_json(run_cli, kair_bundle, "--backend", "onnxruntime", "--whole")
    assert whole["mode"] == "whole" and tiled_ort["mode"].startswith("tiled")
    assert abs(whole["psnr"] - tiled_ort["psnr"]) <= 0.01, (whole["psnr"], tiled_ort["psnr"])


def test_cszn_legacy_module(run_cli, tmp_path):
    bundle = tmp_path / "cszn"
    result = run_cli("export", "dncnn", "--weights", need_shared(CSZN), "-o", bundle)
    assert result.exit_code == 0, result.output
    assert "max abs error" in result.stdout and "PSNR" in result.stdout
    report = eval_json(run_cli, bundle, "--backend", "onnxruntime", "--whole")
    assert report["psnr"] >= 30.44, report["psnr"]
