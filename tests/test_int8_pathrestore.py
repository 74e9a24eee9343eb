"""``export --int8`` of a routed model (a small random Path-Restore): every stage gets
INT8 artifacts, branches are calibrated route-aware, and the report sets route-aware
against route-agnostic calibration, overall and per branch."""

import json

import numpy as np
import pytest
import torch

from edgerestore.runtime.bundle import Bundle


def structured(seed, h=150, w=170):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / w
    img = np.stack([x, y, x * y], axis=2) * 0.6 + 0.2
    img[40:110, 90:160] += rng.normal(0, 0.15, (70, 70, 3))
    return np.clip(img, 0, 1)


@pytest.fixture(scope="module")
def routed_int8(tmp_path_factory):
    import cv2
    from test_pathrestore import mixed_router

    from edgerestore.calibration import FolderSplit, Int8Options
    from edgerestore.export import write_bundle
    from edgerestore.models import PathRestore

    data = tmp_path_factory.mktemp("data") / "color"
    data.mkdir()
    for i in range(6):
        cv2.imwrite(str(data / f"{i}.png"), (structured(i)[..., ::-1] * 255).round().astype(np.uint8))
    torch.manual_seed(0)
    probe = structured(0).astype(np.float32) + np.random.default_rng(9).normal(0, 0.1, (150, 170, 3)).astype(np.float32)
    model = mixed_router(PathRestore(features=8), probe)
    out = tmp_path_factory.mktemp("bundles") / "pathrestore_int8"
    options = Int8Options(FolderSplit(data, "gaussian-peaks:5-50", count=4, holdout=2, crop=128), method="minmax")
    report = write_bundle(model, "pathrestore", out, int8=options).int8
    return out, report


def test_every_stage_has_int8_artifacts(routed_int8):
    out, _ = routed_int8
    bundle = Bundle(out)
    assert bundle.precisions == ["int8", "fp32"]
    calibration = json.loads((out / "calibration.json").read_text())
    assert set(calibration["stages"]) == set(bundle.stages) and len(bundle.stages) == 15
    for stage in bundle.stages:
        assert (out / "calib" / f"{stage}.cache").is_file()
        bundle.stage_path(stage, "int8")  # exists, checksum matches
    # default policy: the head's conv and the tail's conv stay FP32
    assert calibration["stages"]["head"]["fp32_nodes"] and calibration["stages"]["tail"]["fp32_nodes"]
    assert not calibration["stages"]["block0.shared"]["fp32_nodes"]


def test_branch_samples_are_the_routed_tiles(routed_int8):
    out, report = routed_int8
    calibration = json.loads((out / "calibration.json").read_text())
    tiles = report.calibration_tiles
    assert tiles == 4 * 9  # four 128x128 crops, 3x3 tiles of 63 each
    for i in range(6):
        bypass, complex_ = calibration["routing"][f"block{i}"]
        assert bypass + complex_ == tiles
        stage = calibration["stages"][f"block{i}.branch"]
        assert stage["samples_route_agnostic"] == tiles
        if complex_:
            assert stage["samples"] == complex_ and stage["calibration"] == "route-aware"
        else:  # no tile went there: the stage falls back to route-agnostic ranges, and says so
            assert stage["calibration"] == "route-agnostic" and f"block{i}.branch" in calibration["route_aware_fallback"]
        assert calibration["stages"][f"block{i}.shared"]["samples"] == tiles
        # bias-corrected on the tiles its ranges came from, a fallback stage on the agnostic ones
        assert stage["bias_correction"] and calibration["stages"][f"block{i}.shared"]["bias_correction"]


def test_report_compares_route_aware_with_route_agnostic(routed_int8):
    from edgerestore.calibration.report import render

    _, report = routed_int8
    assert report.route_aware and report.alternative is not None
    fp32, int8 = report.scores[0], report.scores[1]
    assert (fp32.precision, int8.precision) == ("fp32", "int8")
    assert set(fp32.per_branch) == set(int8.per_branch) == set(report.alternative.per_branch)
    assert {k.split("/")[1] for k in fp32.per_branch} <= {"bypass", "complex"}
    assert 0.0 <= report.routing_agreement <= 1.0
    text = render(report)
    assert "route-aware" in text and "route-agnostic" in text and "block0/" in text


def test_branches_no_tile_reaches_are_corrected_on_their_fallback_tiles(tmp_path):
    """A router that bypasses every tile: each branch stage falls back to route-agnostic
    ranges, and its bias correction runs on the route-agnostic tiles those ranges came from."""
    import cv2

    from edgerestore.calibration import FolderSplit, Int8Options
    from edgerestore.export import write_bundle
    from edgerestore.models import PathRestore

    data = tmp_path / "color"
    data.mkdir()
    for i in range(4):
        cv2.imwrite(str(data / f"{i}.png"), (structured(i)[..., ::-1] * 255).round().astype(np.uint8))
    torch.manual_seed(0)
    model = PathRestore(features=8).eval()
    with torch.no_grad():
        model.pathfinder.logits.weight.zero_()
        model.pathfinder.logits.bias.copy_(torch.tensor([10.0, -10.0]))  # bypass, always
    options = Int8Options(FolderSplit(data, "gaussian:25", count=2, holdout=2, crop=128), method="minmax")
    write_bundle(model, "pathrestore", tmp_path / "b", int8=options)
    calibration = json.loads((tmp_path / "b" / "calibration.json").read_text())
    branches = [f"block{i}.branch" for i in range(6)]
    assert all(calibration["routing"][f"block{i}"][1] == 0 for i in range(6))
    assert sorted(calibration["route_aware_fallback"]) == sorted(branches)
    for stage in branches:
        assert calibration["stages"][stage]["bias_correction"], stage
