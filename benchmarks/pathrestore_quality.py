"""Quality of the shipped Path-Restore checkpoint, with the seed-0 protocol:
PSNR/SSIM and the share of bypassed blocks on McMaster and Kodak24 at sigma
15/25/50 and on spatially variant noise, plus OpenCV's non-local means
(best h of a sweep) on McMaster sigma 25 as the classical baseline.

Usage: python benchmarks/pathrestore_quality.py [--sets McMaster,Kodak24] [--specs ...] [--backend B]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from _common import SHARED, bundle_or_shipped
from edgerestore.runtime import degrade, imageio, metrics
from edgerestore.runtime.evaluate import evaluate
from edgerestore.runtime.session import Session

SPECS = "gaussian:15,gaussian:25,gaussian:50,gaussian-ramp:5-50,gaussian-peaks:5-50"


def nlm_psnr(folder: Path, spec: str, h: float) -> float:
    """OpenCV fastNlMeansDenoisingColored on the 8-bit noisy image (it takes uint8 only)."""
    scores = []
    for path in imageio.list_images(folder):
        clean = imageio.to_float(imageio.read_image(path)).astype(np.float64)
        noisy = imageio.from_float(degrade.parse(spec).apply(clean), 8)
        denoised = cv2.fastNlMeansDenoisingColored(np.ascontiguousarray(noisy[..., ::-1]), None, h, h, 7, 21)
        scores.append(metrics.psnr(denoised[..., ::-1], imageio.from_float(clean, 8)))
    return float(np.mean(scores))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--sets", default="McMaster,Kodak24")
    parser.add_argument("--specs", default=SPECS)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--nlm-h", default="8,12,16,20", help="NLM filter strengths swept on McMaster sigma 25")
    args = parser.parse_args()
    bundle = bundle_or_shipped(args.bundle)
    session = Session(bundle, backend=args.backend)
    print("| set | noise | input PSNR | PSNR | SSIM | blocks bypassed | GMAC/image (full path) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    results = {}
    for name in args.sets.split(","):
        for spec in args.specs.split(","):
            r = evaluate(session, SHARED / "data" / name, spec)
            results[(name, spec)] = r.psnr
            print(f"| {name} | {spec} | {r.input_psnr:.2f} | {r.psnr:.2f} | {r.ssim:.4f} | {r.bypass_share:.1%} | "
                  f"{r.gmac:.1f} ({r.full_gmac:.1f}) |", flush=True)
    mcmaster = SHARED / "data" / "McMaster"
    sweep = {float(h): nlm_psnr(mcmaster, "gaussian:25", float(h)) for h in args.nlm_h.split(",")}
    best_h = max(sweep, key=sweep.get)
    print("NLM on McMaster gaussian:25: " + ", ".join(f"h={h:g}: {p:.2f} dB" for h, p in sweep.items()))
    ours = results.get(("McMaster", "gaussian:25"))
    if ours is None:
        return 0
    margin = ours - sweep[best_h]
    print(f"Path-Restore {ours:.2f} dB vs best NLM (h={best_h:g}) {sweep[best_h]:.2f} dB: +{margin:.2f} dB "
          f"({'PASS' if margin >= 1.5 else 'FAIL'}, need >= 1.5)")
    return 0 if margin >= 1.5 else 1


if __name__ == "__main__":
    sys.exit(main())
