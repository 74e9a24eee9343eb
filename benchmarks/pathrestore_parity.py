"""Bundle vs PyTorch for Path-Restore, tile by tile, on McMaster with spatially
variant noise: the share of (tile, block) decisions that agree, and the max abs
error of the tiles whose six decisions all agree.

Usage: python benchmarks/pathrestore_parity.py [--images N] [--backend B] [--noise SPEC]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from edgerestore.models import create_model
from _common import SHARED, bundle_or_shipped
from edgerestore.runtime import degrade, imageio
from edgerestore.runtime.session import Session
from edgerestore.runtime.tilelib import extract
from edgerestore.runtime.tiling import TileGrid



def compare(model, session: Session, image: np.ndarray, chunk: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (agreement per tile and block, bundle tiles, torch tiles)."""
    tiles = extract(image.astype(np.float32), TileGrid(*image.shape[:2], 63, 10))
    agree, ours, theirs = [], [], []
    for start in range(0, len(tiles), chunk):
        batch = tiles[start:start + chunk]
        result = session.run_rows({"image": batch})
        decisions = np.stack([result.decisions[f"block{i}"] for i in range(model.blocks)], 1)
        with torch.no_grad():
            expected, actions, _ = model.route(torch.from_numpy(batch))
        agree.append(decisions == actions.numpy())
        ours.append(result.image)
        theirs.append(expected.numpy())
    return np.concatenate(agree), np.concatenate(ours), np.concatenate(theirs)


def run(bundle: Path, weights: Path | None, images: list[Path], spec: str, backend: str) -> dict:
    model = create_model("pathrestore", weights=weights)
    session = Session(bundle, backend=backend)
    agree, errors = [], []
    for path in images:
        clean = imageio.to_float(imageio.read_image(path)).astype(np.float64)
        a, ours, theirs = compare(model, session, degrade.parse(spec).apply(clean))
        agree.append(a)
        same = a.all(1)
        if same.any():
            errors.append(float(np.abs(ours[same] - theirs[same]).max()))
    agree = np.concatenate(agree)
    return {"pairs": agree.size, "agreement": float(agree.mean()), "tiles": len(agree),
            "tiles_all_agree": int(agree.all(1).sum()), "max_abs_error": max(errors)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--images", type=int, default=18)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--noise", default="gaussian-peaks:5-50")
    args = parser.parse_args()
    bundle = bundle_or_shipped(args.bundle)
    images = imageio.list_images(SHARED / "data" / "McMaster")[: args.images]
    result = run(bundle, None, images, args.noise, args.backend)
    ok = result["agreement"] >= 0.999 and result["max_abs_error"] <= 1e-4
    print(f"McMaster x{len(images)}, {args.noise}, {args.backend}: {result['pairs']} (tile, block) pairs, "
          f"{result['agreement']:.4%} same decision; {result['tiles_all_agree']}/{result['tiles']} tiles with all "
          f"decisions equal, max abs error {result['max_abs_error']:.2e}: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
