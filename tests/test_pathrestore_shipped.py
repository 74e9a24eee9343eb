"""The shipped Path-Restore checkpoint through the whole product: export without
--weights, bundle vs PyTorch on McMaster with spatially variant noise, and quality."""

import json
import sys

import cv2
import numpy as np
import pytest

from conftest import REPO, SHARED, need_shared
from edgerestore.runtime import degrade, imageio, metrics
from edgerestore.runtime.session import Session

sys.path.insert(0, str(REPO / "benchmarks"))


@pytest.fixture(scope="module")
def shipped(pathrestore_bundle):
    return pathrestore_bundle


def test_export_without_weights_uses_the_shipped_checkpoint(shipped):
    manifest = json.loads((shipped / "manifest.json").read_text())
    assert manifest["provenance"]["weights"].endswith("pathrestore_color.pth")
    assert manifest["provenance"]["checkpoint_kind"] == "edgerestore"
    assert len(manifest["stages"]) == 15 and manifest["tiling"]["fixed"]


def test_bundle_matches_pytorch_on_mcmaster_with_variant_noise(shipped):
    from pathrestore_parity import run

    images = imageio.list_images(need_shared(SHARED / "data" / "McMaster"))[:2]
    result = run(shipped, None, images, "gaussian-peaks:5-50", "onnxruntime")
    assert result["agreement"] >= 0.999, result
    assert result["max_abs_error"] <= 1e-4, result


def test_beats_non_local_means_and_routes(shipped):
    path = need_shared(SHARED / "data" / "McMaster") / "18.tif"
    clean = imageio.to_float(imageio.read_image(path)).astype(np.float64)
    noisy = degrade.parse("gaussian:25").apply(clean)
    truth = imageio.from_float(clean, 8)
    session = Session(shipped, backend="onnxruntime")
    route = session.run(noisy.astype(np.float32))
    ours = metrics.psnr(imageio.from_float(route.image, 8), truth)
    noisy8 = np.ascontiguousarray(imageio.from_float(noisy, 8)[..., ::-1])
    nlm = max(metrics.psnr(cv2.fastNlMeansDenoisingColored(noisy8, None, h, h, 7, 21)[..., ::-1], truth)
              for h in (10, 15, 20))
    assert ours >= nlm + 1.5, (ours, nlm)  # the acceptance margin (benchmarks/pathrestore_quality.py: all of McMaster)
    assert 0.0 < route.cheap_share(session.bundle.plan) < 1.0
