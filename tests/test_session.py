"""The session (runtime v2): frame layouts, bands, buckets, the memory budget, votes that
spill, and what `import edgerestore` costs."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import edgerestore
from edgerestore.runtime.buckets import bucket_plan
from edgerestore.runtime.errors import EdgeRestoreError
from edgerestore.runtime.session import Session
from edgerestore.runtime.tilelib import extract, merge_u8


def frame(h=120, w=150, c=3, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    values = rng.random((h, w, c), dtype=np.float32)
    if dtype == np.float32:
        return values
    top = np.iinfo(dtype).max
    return np.rint(values * top).astype(dtype)


@pytest.fixture(scope="module")
def gray(small_bundle):
    return Session(small_bundle, backend="onnxruntime", tile=32, overlap=8)


def test_import_loads_neither_torch_nor_opencv():
    code = "import sys, edgerestore; print(sorted(m for m in ('torch', 'cv2') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert edgerestore.load is edgerestore.runtime.session.load and edgerestore.__version__


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("layout", ["HxW", "HxWx1", "HxWx3", "HxWx4"])
def test_frames_come_back_in_their_dtype_and_layout(gray, dtype, layout):
    channels = {"HxW": 1, "HxWx1": 1, "HxWx3": 3, "HxWx4": 4}[layout]
    image = frame(70, 90, channels, dtype)
    if layout == "HxW":
        image = image[..., 0]
    out = gray.restore(image)
    assert out.dtype == image.dtype and out.shape == image.shape
    if layout == "HxWx4":  # alpha passed through untouched
        np.testing.assert_array_equal(out[..., 3], image[..., 3])
    if dtype == np.float32:
        assert out.min() >= 0 and out.max() <= 1  # clipped, as documented


def test_bgr_frames_are_restored_as_their_rgb(pathrestore_bundle):
    session = Session(pathrestore_bundle, backend="onnxruntime")
    rgb = frame(126, 126, 3)
    np.testing.assert_array_equal(session.restore(np.ascontiguousarray(rgb[..., ::-1]), order="BGR")[..., ::-1],
                                  session.restore(rgb))


def test_uint8_frames_go_through_the_tile_library_end_to_end(gray):
    """The uint8 path (extract from bytes, fused uint8 merge) equals the float path rounded."""
    image = frame(100, 130, 1)
    as_float = gray.run(image.astype(np.float32) / 255, clip=False).image
    expected = np.rint(np.clip(as_float, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(gray.restore(image), expected)


@pytest.mark.parametrize("h, w", [(280, 140), (250, 200)])
def test_bands_merge_exactly_as_the_whole_frame(pathrestore_bundle, h, w):
    """A budget of a few dozen tiles cuts the frame into bands of tile rows; the bands merge to
    the same bytes as one merge of all tiles. (280 = 4 * 53 + 63 + 5: the flush tile row sits
    5 pixels below its neighbour, so three tile rows cover some pixels.)"""
    image = frame(h, w, 3, seed=3)
    small = Session(pathrestore_bundle, backend="onnxruntime", memory_budget=64)
    route = small.run(image)
    grid = route.grid
    assert small.memory_plan(63).bucket_sizes["block0.shared"][0] < len(grid)  # several bands
    tiles = extract(image, grid)
    outputs = small.run_rows({"image": tiles})
    np.testing.assert_array_equal(route.image, merge_u8(outputs.image, grid))
    for name, choice in outputs.decisions.items():
        np.testing.assert_array_equal(route.decisions[name], choice)


def test_bucket_plan_covers_the_rows_with_few_shapes():
    sizes = (64, 16, 4, 1)
    for rows in range(1, 300):
        plan = bucket_plan(rows, sizes)
        assert sum(real for _, real in plan) == rows and all(size == real for size, real in plan)
        padded = bucket_plan(rows, sizes, pad_rows=8)
        assert sum(real for _, real in padded) == rows and sum(s - r for s, r in padded) <= 8
        assert {size for size, _ in padded} <= set(sizes)
    assert bucket_plan(60, sizes, pad_rows=8) == [(64, 60)] and bucket_plan(60, sizes) == [(16, 16)] * 3 + [(4, 4)] * 3


def test_routed_batches_use_only_the_bucket_sizes(pathrestore_bundle):
    """Whatever the routing gives each branch, a stage runs at its few bucket sizes only."""
    session = Session(pathrestore_bundle, backend="onnxruntime", memory_budget=256)
    seen: dict[str, set[int]] = {}
    session.stage_hooks.append(lambda stage, rows, feeds, outs, s: seen.setdefault(stage, set()).add(
        len(next(iter(feeds.values())))))
    route = session.run(frame(250, 330, 3, seed=4))
    plan = session.memory_plan(63)
    for stage, sizes in route.calls.items():
        assert set(sizes) <= set(plan.bucket_sizes[stage]), (stage, sizes)
    assert any(len(v) > 1 for v in route.calls.values())


def test_a_vote_over_more_tiles_than_the_budget_spills_and_decides_the_same(pathrestore_bundle):
    image = frame(300, 420, 3, seed=5)
    large = Session(pathrestore_bundle, backend="onnxruntime", route_policy="vote").run(image)
    small_session = Session(pathrestore_bundle, backend="onnxruntime", route_policy="vote", memory_budget=64)
    small = small_session.run(image)
    assert small_session.memory_plan(63).max_rows < len(small.grid) and small.spilled_bytes > 0
    assert small.spill_seconds > 0 and large.spilled_bytes == 0 and large.spill_seconds == 0
    np.testing.assert_array_equal(small.image, large.image)
    for name, choice in large.decisions.items():
        assert len(set(choice.tolist())) == 1  # one branch per image and switch
        np.testing.assert_array_equal(small.decisions[name], choice)


def test_a_vote_that_spills_holds_no_more_than_the_budget(pathrestore_bundle):
    """numpy's allocations (plan variables, bucket buffers, answers, tiles, the frame) stay in
    the budget however many tiles the vote needs: chunks that finish or wait on disk leave
    memory (a list of voters kept across the scheduler's iterations once held them all)."""
    import tracemalloc

    session = Session(pathrestore_bundle, backend="onnxruntime", route_policy="vote", memory_budget=64)
    image = frame(600, 420, 3, seed=7)
    plan = session.memory_plan(63)
    tracemalloc.start()
    try:
        result = session.run(image)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.spilled_bytes > 0 and len(result.grid) * plan.row_bytes > 2 * plan.budget
    assert peak <= plan.budget, (peak >> 20, plan.describe())


def test_whole_image_models_run_tiled_when_a_whole_image_does_not_fit(small_bundle, tmp_path):
    import json
    import shutil

    bundle = shutil.copytree(small_bundle, tmp_path / "whole")  # a model that declares whole images
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["tiling"]["whole"] = True
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    image = frame(1000, 1200, 1, seed=6)
    session = Session(bundle, backend="onnxruntime", memory_budget=64)
    assert session.whole and not session._whole_fits(1000, 1200) and session._whole_fits(60, 60)
    route = session.run(image)
    assert route.grid is not None and route.image.shape == image.shape  # tiled: it has a tile grid
    assert session.run(image[:60, :60]).grid is None
    asked = Session(small_bundle, backend="onnxruntime", whole=True, memory_budget=64)  # --whole: an error
    with pytest.raises(EdgeRestoreError, match="does not fit in the memory budget of 64 MB"):
        asked.run(image)


def test_a_closed_session_refuses_frames(small_bundle):
    with Session(small_bundle, backend="onnxruntime") as session:
        session.restore(frame(40, 40, 1))
    with pytest.raises(EdgeRestoreError, match="closed"):
        session.restore(frame(40, 40, 1))


def test_bad_frames_are_one_clear_error(gray):
    for bad, match in [(np.zeros((10, 10, 2), np.uint8), "C = 1, 3 or 4"), (np.zeros((10, 10), np.int32), "uint8"),
                       ([[1, 2]], "numpy array")]:
        with pytest.raises(EdgeRestoreError, match=match):
            gray.restore(bad)
    with pytest.raises(EdgeRestoreError, match="channel order"):
        gray.restore(frame(40, 40, 3), order="BRG")


def test_memory_plan_grows_with_the_budget(pathrestore_bundle):
    small = Session(pathrestore_bundle, backend="onnxruntime", memory_budget=128).memory_plan(63)
    large = Session(pathrestore_bundle, backend="onnxruntime", memory_budget=4096).memory_plan(63)
    assert small.max_rows < large.max_rows
    assert small.bucket_sizes["block0.shared"][0] < large.bucket_sizes["block0.shared"][0]
    # OpenVINO keeps every stage's buffers: its stages share the room, so its batches are smaller
    separate = Session(pathrestore_bundle, backend="openvino", memory_budget=4096).memory_plan(63)
    assert separate.bucket_sizes["block0.shared"][0] < large.bucket_sizes["block0.shared"][0]
    with pytest.raises(EdgeRestoreError, match="at least"):
        Session(pathrestore_bundle, backend="onnxruntime", memory_budget=10)


def test_openvino_keeps_compiled_stages_in_a_model_cache(small_bundle, tmp_path):
    pytest.importorskip("openvino", reason="OpenVINO not installed")
    code = (f"from edgerestore.runtime.session import Session; Session({str(small_bundle)!r}, backend='openvino')")
    env = {**os.environ, "EDGERESTORE_CACHE_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    assert list((tmp_path / "openvino").glob("*.blob"))
