"""INT8 vs FP32 latency of DnCNN at 512x512 on ONNX Runtime and OpenVINO, one run.

Restores one noisy 512x512 image whole (best of --repeats after a warm-up, FP32 and INT8
taking turns) with the FP32 and the INT8 stages of the same bundle on each backend, prints
the times and their ratio, and checks the claim of ``export --int8`` on the CPU:

  * OpenVINO runs the Q/DQ ONNX at least twice as fast: time(int8)/time(fp32) <= 0.5

Usage: python benchmarks/int8.py [--bundle B] [--repeats N]
Without --bundle it exports KAIR DnCNN-S sigma=25 with --int8, calibrated on 8 Train400
images (latency does not depend on how good the calibration is).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import SHARED, int8_share_line
from edgerestore.runtime import backends, degrade, imageio
from edgerestore.runtime.session import Session

LIMIT = 0.5


def default_bundle() -> Path:
    from edgerestore.calibration import FolderSplit, Int8Options
    from edgerestore.export import export_bundle

    out = Path(tempfile.mkdtemp()) / "dncnn_int8"
    split = FolderSplit(SHARED / "data" / "Train400", "gaussian:25", count=8, holdout=2, crop=128)
    export_bundle("dncnn", out, weights=SHARED / "weights" / "dncnn_25_kair_state_dict.pth",
                  int8=Int8Options(split))
    return out


def test_image() -> np.ndarray:
    path = SHARED / "data" / "Set12" / "08.png"  # 512x512
    if path.is_file():
        clean = imageio.to_float(imageio.read_image(path)).astype(np.float64)
    else:
        from skimage import data  # bundled sample, when ../shared is absent

        clean = data.camera()[:512, :512, None].astype(np.float64) / 255.0
    return degrade.parse("gaussian:25").apply(clean).astype(np.float32)


def best_times(sessions: dict[str, Session], image: np.ndarray, repeats: int) -> dict[str, float]:
    """Best time of each session over ``repeats`` rounds; every round runs each session once, so
    FP32 and INT8 see the same machine (a background job or a clock change slows both)."""
    for session in sessions.values():
        session.restore(image)  # warm-up: first calls allocate and compile
    best = dict.fromkeys(sessions, float("inf"))
    for _ in range(repeats):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.restore(image)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="DnCNN bundle with int8 stages (default: export one)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    bundle = args.bundle or default_bundle()
    image = test_image()
    rows = {}
    for backend in ("onnxruntime", "openvino"):
        if backend not in backends.available():
            print(f"{backend}: not installed")
            continue
        sessions = {precision: Session(bundle, backend=backend, precision=precision, whole=True)
                    for precision in ("fp32", "int8")}
        for precision, seconds in best_times(sessions, image, args.repeats).items():
            rows[backend, precision] = seconds
        for session in sessions.values():
            session.close()

    print(f"DnCNN {image.shape[1]}x{image.shape[0]} whole image, best of {args.repeats}, bundle {bundle}")
    print(int8_share_line(bundle))
    print(f"{'backend':<12} {'FP32 s':>8} {'INT8 s':>8} {'INT8/FP32':>9}")
    for backend in ("onnxruntime", "openvino"):
        if (backend, "fp32") in rows:
            fp32, int8 = rows[backend, "fp32"], rows[backend, "int8"]
            print(f"{backend:<12} {fp32:>8.3f} {int8:>8.3f} {int8 / fp32:>9.3f}")
    if ("openvino", "fp32") not in rows:
        print("OpenVINO is not installed: the claim is not checked")
        return 1
    ratio = rows["openvino", "int8"] / rows["openvino", "fp32"]
    ok = ratio <= LIMIT
    print(f"OpenVINO INT8/FP32 {ratio:.3f} vs limit {LIMIT}: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
