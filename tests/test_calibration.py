"""Calibration pieces: TensorRT cache format, scale algorithms, data sources, and the
route-aware capture (a branch is calibrated only on the tiles routed to it)."""

import struct

import numpy as np
import pytest
import torch

from edgerestore.calibration import trt_cache
from edgerestore.calibration.capture import capture
from edgerestore.calibration.scales import mse_amax
from edgerestore.calibration.sources import FolderSplit, ReaderSource, Sample
from edgerestore.runtime.bundle import Bundle
from edgerestore.runtime.errors import EdgeRestoreError


@pytest.mark.parametrize("text, expected", [("8.5", 8502), ("8.5.1", 8501), ("10.3", 100300), ("11", 110000),
                                             ("10.7.0", 100700)])
def test_trt_version_integers(text, expected):
    """TensorRT's NV_TENSORRT_VERSION: major*1000+minor*100+patch before 10, major*10000+... from 10."""
    assert trt_cache.version_int(*trt_cache.parse_trt_version(text)) == expected


def test_trt_headers_and_unknown_versions():
    assert trt_cache.header((10, 3, 0), "entropy") == "TRT-100300-EntropyCalibration2"
    assert trt_cache.header((8, 5, 2), "minmax") == "TRT-8502-MinMaxCalibration"
    for bad in ("9", "10.x", "latest", "10.3.0.1"):
        with pytest.raises(EdgeRestoreError, match="unknown TensorRT version"):
            trt_cache.parse_trt_version(bad)


def test_cache_round_trip_is_big_endian_amax_over_127(tmp_path):
    text = trt_cache.render("TRT-8502-EntropyCalibration2", {"input": 1.0, "/conv/Relu_output_0": 12.7})
    lines = text.splitlines()
    assert lines[1] == "input: " + struct.pack(">f", 1.0 / 127).hex()
    assert lines[2].endswith(": 3dcccccd")  # 12.7/127 = 0.1 as big-endian float32
    (tmp_path / "c.cache").write_text(text)
    head, scales = trt_cache.read(tmp_path / "c.cache")
    assert head == lines[0] and scales["/conv/Relu_output_0"] == pytest.approx(0.1)
    with pytest.raises(EdgeRestoreError, match="no usable INT8 range"):
        trt_cache.render("TRT-100300-MinMaxCalibration", {"dead": 0.0})


def test_mse_threshold_clips_a_long_tail_but_not_a_uniform_range():
    edges = np.linspace(0, 100, 2049).astype(np.float32)
    uniform = np.ones(2048, np.int64)
    assert mse_amax(uniform, edges) == pytest.approx(100, rel=0.01)
    tail = np.zeros(2048, np.int64)
    tail[:200] = 10_000  # almost everything below ~10
    tail[-1] = 1  # one outlier at 100
    assert mse_amax(tail, edges) < 30


@pytest.fixture
def folder(tmp_path):
    import cv2

    data = tmp_path / "calib"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        cv2.imwrite(str(data / f"{i}.png"), (rng.random((70, 80)) * 255).astype(np.uint8))
    return data


def test_folder_split_is_seeded_disjoint_and_cropped(folder):
    split = FolderSplit(folder, "gaussian:25", count=10, holdout=2, crop=64)
    calibration, held = split.calibration(), split.held_out()
    assert len(calibration) == 4 and len(held) == 2  # count is capped by what the hold-out leaves
    assert not {s.name for s in calibration} & {s.name for s in held}
    assert all(s.degraded.shape == (64, 64, 1) and s.clean.shape == (64, 64, 1) for s in calibration)
    again = FolderSplit(folder, "gaussian:25", count=10, holdout=2, crop=64).calibration()
    assert all(np.array_equal(a.degraded, b.degraded) for a, b in zip(calibration, again))
    assert (calibration[0].degraded - calibration[0].clean).std() == pytest.approx(25 / 255, rel=0.1)


def test_folder_split_refuses_small_images_and_missing_ground_truth(folder):
    with pytest.raises(EdgeRestoreError, match="smaller than the 96x96 calibration tile"):
        FolderSplit(folder, "gaussian:25", crop=96).calibration()
    with pytest.raises(EdgeRestoreError, match="exactly one of --calib-degrade"):
        FolderSplit(folder)


def test_reader_source_adapts_a_users_reader():
    from edgerestore.calibration import CalibrationDataReader

    class Frames(CalibrationDataReader):
        def __init__(self):
            self.left = 3

        def get_next(self):
            self.left -= 1
            return np.zeros((8, 8, 1), np.float32) if self.left >= 0 else None

    samples = list(ReaderSource(Frames()))
    assert [s.name for s in samples] == ["sample0", "sample1", "sample2"] and samples[0].clean is None


def test_non_finite_calibration_input_is_refused(small_bundle, tmp_path):
    bad = np.full((32, 32, 1), 0.5, np.float32)
    bad[3, 4] = np.nan
    with pytest.raises(EdgeRestoreError, match="NaN/Inf"):
        capture(Bundle(small_bundle), [Sample("frame7", bad, None)], "minmax", tmp_path)


# -- route-aware calibration ------------------------------------------------------------------


@pytest.fixture(scope="module")
def routed_bundle(tmp_path_factory):
    from test_pathrestore import mixed_router

    from edgerestore.export import write_bundle
    from edgerestore.models import PathRestore

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:150, 0:170] / 170.0
    image = np.stack([x, y, x * y], axis=2) + rng.normal(0, 0.02, (150, 170, 3))
    image[40:110, 90:160] += rng.normal(0.3, 0.3, (70, 70, 3))
    image = image.astype(np.float32)
    torch.manual_seed(0)
    model = mixed_router(PathRestore(features=16), image)
    out = tmp_path_factory.mktemp("bundles") / "pathrestore_calib"
    write_bundle(model, "pathrestore", out)
    return model, out, image


def branch_inputs(model, tiles):
    """What each block's branch reads, per tile, and the pathfinder's decisions (PyTorch)."""
    import torch.nn.functional as F

    with torch.no_grad():
        x = torch.from_numpy(tiles)
        f = model.head(x)
        h = c = torch.zeros(len(x), model.units)
        inputs, actions = [], []
        for i in range(model.blocks):
            logits, h, c = model.pathfinder(f, h, c)
            a = logits.argmax(1)
            f = model.shared[i](f)
            inputs.append(F.relu(f).numpy())  # the branch's first conv reads relu(features)
            actions.append(a.numpy())
            f = torch.where(a.view(-1, 1, 1, 1) == 1, model.branch[i](f), f)
    return inputs, np.stack(actions, 1)


def first_conv_input(bundle, stage):
    import onnx

    graph = onnx.load(str(bundle.stage_path(stage, "fp32"))).graph
    return next(n.input[0] for n in graph.node if n.op_type == "Conv")


def test_branches_are_calibrated_only_on_the_tiles_routed_to_them(routed_bundle, tmp_path):
    from edgerestore.runtime.tilelib import extract
    from edgerestore.runtime.tiling import TileGrid

    model, path, image = routed_bundle
    bundle = Bundle(path)
    sample = Sample("structured", image, None)
    aware = capture(bundle, [sample], "minmax", tmp_path, route_aware=True)
    agnostic = capture(bundle, [sample], "minmax", tmp_path, route_aware=False)

    tiles = extract(image, TileGrid(150, 170, 63, 10))
    inputs, actions = branch_inputs(model, tiles)
    assert any(0 < actions[:, i].mean() < 1 for i in range(6)), "the test needs mixed routing"
    aware_amax, agnostic_amax = aware.amax(), agnostic.amax()
    restricted = 0
    for i in range(6):
        stage = f"block{i}.branch"
        routed = actions[:, i] == 1
        assert aware.routing[f"block{i}"] == [int((~routed).sum()), int(routed.sum())]
        assert agnostic.ranges[stage].rows == len(tiles)  # every tile through every branch
        if not routed.any():
            assert stage not in aware_amax or aware.ranges[stage].rows == 0
            continue
        assert aware.ranges[stage].rows == routed.sum()
        tensor = first_conv_input(bundle, stage)
        expected = np.abs(inputs[i][routed]).max()
        assert aware_amax[stage][tensor] == pytest.approx(expected, rel=1e-5)
        assert agnostic_amax[stage][tensor] == pytest.approx(np.abs(inputs[i]).max(), rel=1e-5)
        if expected < np.abs(inputs[i]).max() * 0.999:
            restricted += 1
    assert restricted, "on this image some branch's routed tiles have a smaller range than all tiles"
    # shared stages run on every tile either way
    assert aware.ranges["block0.shared"].rows == agnostic.ranges["block0.shared"].rows == len(tiles)


# -- precision policy ---------------------------------------------------------------------------


def test_sensitivity_search_keeps_the_fewest_costly_layers_with_a_margin():
    from edgerestore.calibration.policy import sensitivity_search

    layers = [("main", f"conv{i}") for i in range(6)]
    cost = {"conv1": 0.05, "conv4": 0.03, "conv0": 0.01, "conv2": 0.005, "conv3": 0.002, "conv5": 0.001}
    fp32 = [30.0, 31.0, 29.0, 32.0]
    jitter = np.array([0.004, -0.004, 0.004, -0.004])  # per-image spread: standard error 0.0023 dB

    def psnrs(kept):
        loss = sum(cost[n] for _, n in layers if ("main", n) not in kept)
        return list(np.array(fp32) - loss - jitter * bool(loss))

    result = sensitivity_search(layers, 0.03, fp32, psnrs)
    # all INT8 loses 0.098 dB; conv1 then conv4 in FP32 leave 0.018 + margin
    assert result.fp32_layers == [("main", "conv1"), ("main", "conv4")]
    assert result.drop_db == pytest.approx(0.018) and result.margin_db == pytest.approx(0.004 * (4 / 3) ** 0.5 / 2)
    assert [k for k, *_ in result.steps] == [0, 1, 2]
    # a budget the drop meets only without the margin needs one more layer
    tight = sensitivity_search(layers, 0.0195, fp32, psnrs)
    assert tight.fp32_layers == [("main", "conv1"), ("main", "conv4"), ("main", "conv0")]
    # all-INT8 within budget: no search at all
    assert sensitivity_search(layers, 0.2, fp32, psnrs).fp32_layers == []


def test_sensitivity_search_keeps_cheap_layers_first_per_psnr_and_weight():
    """A layer with 1/64 of the weights and a third of the cost is kept before the costlier
    but 64x heavier one: the search minimises FP32 compute, not the layer count."""
    from edgerestore.calibration.policy import sensitivity_search

    layers = [("main", n) for n in ("first", "middle", "other", "last")]
    cost = {"first": 0.01, "middle": 0.03, "other": 0.02, "last": 0.005}
    weights = {("main", "first"): 576, ("main", "middle"): 36864, ("main", "other"): 36864, ("main", "last"): 576}

    def psnrs(kept):
        loss = sum(cost[n] for _, n in layers if ("main", n) not in kept)
        return [30.0 - loss, 31.0 - loss]

    result = sensitivity_search(layers, 0.021, [30.0, 31.0], psnrs, weights=weights)
    assert result.fp32_layers == [("main", "first"), ("main", "last"), ("main", "middle")]
    assert result.drop_db == pytest.approx(0.02)
    # without weights: the costliest first
    assert sensitivity_search(layers, 0.021, [30.0, 31.0], psnrs).fp32_layers == [("main", "middle"), ("main", "other")]
