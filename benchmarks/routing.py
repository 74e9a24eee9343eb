"""Routed vs full-path Path-Restore on one image, one backend, one run.

Prints, for a sweep of --min-confidence values (1.0 = every block complex, the
full path; 0.5 = the paper's argmax), the wall-clock time of the restore, the
executed MACs and the PSNR, then checks the two claims of the routed runtime:

  * skipped compute is really skipped: time(routed)/time(full) <= 1.1 x MAC ratio
  * routing costs little quality: PSNR(routed) >= PSNR(full) - 0.1 dB

Usage: python benchmarks/routing.py [--bundle B] [--image PATH] [--noise SPEC] [--backend B]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from _common import SHARED, bundle_or_shipped
from edgerestore.runtime import degrade, imageio, metrics
from edgerestore.runtime.session import Result, Session



def default_image() -> np.ndarray:
    path = SHARED / "data" / "McMaster" / "1.tif"
    if path.is_file():
        return imageio.to_float(imageio.read_image(path)).astype(np.float64)
    from skimage import data  # bundled sample image, when ../shared is absent

    return data.astronaut().astype(np.float64) / 255.0


def timed(session: Session, noisy: np.ndarray, repeats: int) -> tuple[float, Result]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = session.run(noisy)
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="Path-Restore bundle (default: export the shipped checkpoint)")
    parser.add_argument("--image", type=Path)
    parser.add_argument("--noise", default="gaussian-peaks:5-50", help="degradation spec (spatially variant)")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--confidences", default="1.0,0.9,0.7,0.5,0.3,0.1")
    args = parser.parse_args()

    bundle = bundle_or_shipped(args.bundle)
    clean = (imageio.to_float(imageio.read_image(args.image)).astype(np.float64) if args.image else default_image())
    noisy = degrade.parse(args.noise).apply(clean).astype(np.float32)
    truth = imageio.from_float(clean, 8)

    rows = []
    for confidence in [float(c) for c in args.confidences.split(",")]:
        session = Session(bundle, backend=args.backend, min_confidence=confidence)
        timed(session, noisy, 1)  # warm-up: first calls allocate
        seconds, route = timed(session, noisy, args.repeats)
        rows.append({"min_confidence": confidence, "seconds": seconds, "mac_ratio": route.mac_ratio,
                     "gmac": route.gmac, "bypass": route.cheap_share(session.bundle.plan),
                     "psnr": metrics.psnr(imageio.from_float(route.image, 8), truth)})

    print(f"Path-Restore, {args.backend}, {clean.shape[1]}x{clean.shape[0]}, noise {args.noise}, "
          f"best of {args.repeats}")
    print(f"{'min-conf':>8} {'time s':>8} {'GMAC':>8} {'MAC ratio':>9} {'time ratio':>10} {'bypass':>7} {'PSNR dB':>8}")
    full = rows[0]
    for r in rows:
        print(f"{r['min_confidence']:>8.2f} {r['seconds']:>8.3f} {r['gmac']:>8.1f} {r['mac_ratio']:>9.3f} "
              f"{r['seconds'] / full['seconds']:>10.3f} {r['bypass']:>7.1%} {r['psnr']:>8.2f}")
    routed = next(r for r in rows if r["min_confidence"] == 0.5)
    time_ratio = routed["seconds"] / full["seconds"]
    speed_ok = time_ratio <= 1.1 * routed["mac_ratio"]
    quality_ok = routed["psnr"] >= full["psnr"] - 0.1
    print(f"routed/full wall-clock {time_ratio:.3f} vs 1.1 x MAC ratio {1.1 * routed['mac_ratio']:.3f}: "
          f"{'PASS' if speed_ok else 'FAIL'}")
    print(f"PSNR routed {routed['psnr']:.2f} vs full {full['psnr']:.2f} (drop {full['psnr'] - routed['psnr']:.3f} dB): "
          f"{'PASS' if quality_ok else 'FAIL'}")
    return 0 if speed_ok and quality_ok else 1


if __name__ == "__main__":
    sys.exit(main())
