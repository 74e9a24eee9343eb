import numpy as np
import pytest

from edgerestore.runtime.errors import EdgeRestoreError
from edgerestore.runtime.session import Session
from edgerestore.runtime.tilelib import extract, merge
from edgerestore.runtime.tiling import TileGrid, axis_origins
from tile_reference import ref_axis_weights


def test_origins_follow_path_restore():
    # range(0, H-63, 53) + [H-63]
    assert axis_origins(200, 63, 53) == [0, 53, 106, 137]
    assert axis_origins(63, 63, 53) == [0]
    assert axis_origins(116, 63, 53) == [0, 53]


def test_halo_margin_gets_zero_weight():
    grid = TileGrid(400, 400, 128, 44, halo=17, ramp=5)
    assert grid.margin == 17 and grid.ramp_width == 5
    w = ref_axis_weights(84, 400, grid.tile, grid.overlap, grid.halo, grid.ramp)
    assert np.all(w[:17] == 0) and np.isclose(w[17], 1 / 6) and w[22] == 1


@pytest.mark.parametrize("h,w,c,tile,overlap,halo", [
    (63, 63, 3, 63, 10, 0), (200, 131, 1, 63, 10, 0), (257, 300, 3, 64, 20, 5), (100, 100, 1, 37, 0, 0),
])
def test_extract_merge_is_identity(h, w, c, tile, overlap, halo):
    image = np.random.default_rng(0).random((h, w, c), dtype=np.float32)
    grid = TileGrid(h, w, tile, overlap, halo)
    tiles = extract(image, grid)
    assert tiles.shape == (len(grid), c, tile, tile)
    np.testing.assert_allclose(merge(tiles, grid), image, atol=1e-6)


def test_small_image_and_bad_geometry_are_clear_errors():
    with pytest.raises(EdgeRestoreError, match="smaller than the 63x63 tile"):
        TileGrid(50, 80, 63, 10)
    with pytest.raises(EdgeRestoreError, match="overlap"):
        TileGrid(100, 100, 32, 32)


def test_tiled_equals_whole_for_a_network_within_its_halo(small_bundle):
    image = np.random.default_rng(1).random((150, 170, 1), dtype=np.float32)
    whole = Session(small_bundle, backend="onnxruntime", whole=True).run(image, clip=False).image
    tiled = Session(small_bundle, backend="onnxruntime", tile=48, overlap=20).run(image, clip=False).image
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_gray_model_restores_color_planes_separately(small_bundle):
    rgb = np.random.default_rng(2).random((64, 64, 3), dtype=np.float32)
    session = Session(small_bundle, backend="onnxruntime", whole=True)
    out = session.run(rgb, clip=False).image
    assert out.shape == rgb.shape
    np.testing.assert_allclose(out[..., 1:2], session.run(rgb[..., 1:2], clip=False).image, atol=1e-6)
