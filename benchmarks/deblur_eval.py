"""SRN-DeblurNet, DeblurGAN-v2 and MemNet demo checkpoints end to end, one run.

1. GoPro (``../shared/data/GoPro_pairs``, 2 real blurred/sharp pairs at 1280x720): PSNR and
   SSIM of the blurred input and of each deblurring bundle's output (whole images, FP32,
   ONNX Runtime), and the same with its INT8 stages.
2. INT8: each model exported with ``--int8`` (percentile calibration; SRN and DeblurGAN-v2 on
   BSDS400_color crops with ``motion:15``, MemNet on Train400 with ``gaussian:25``); the PSNR
   drop on the held-out crops as the export reports it, and MemNet's drop on Set12 at sigma 25.

Checks: both deblurring models restore every GoPro pair above its blurred input (FP32).

Usage: python benchmarks/deblur_eval.py [--calib-images N] [--holdout N] [--backend B] [--memory-budget MB]
The models are the shipped demo checkpoints (``edgerestore export NAME`` without --weights).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import SHARED
from edgerestore.runtime import imageio, metrics
from edgerestore.runtime.session import Session

DATA = SHARED / "data"
CALIBRATION = {"srn": (DATA / "BSDS400_color", "motion:15"), "deblurganv2": (DATA / "BSDS400_color", "motion:15"),
               "memnet": (DATA / "Train400", "gaussian:25")}
# SRN's whole 1280x720 frame takes ~1.9 GB by the runtime's estimate: above the default
# budget (1024 MB), where the session would restore it in tiles.
WHOLE_BUDGET_MB = 2048


def export(name: str, root: Path, images: int, holdout: int):
    from edgerestore.calibration import FolderSplit, Int8Options
    from edgerestore.export import export_bundle

    folder, spec = CALIBRATION[name]
    split = FolderSplit(folder, spec, count=images, holdout=holdout, crop=128)
    start = time.perf_counter()
    report = export_bundle(name, root / name, int8=Int8Options(split))
    return report, time.perf_counter() - start


def gopro(bundle: Path, precision: str, backend: str,
          memory_budget: float) -> list[tuple[str, float, float, float, float, float]]:
    session = Session(bundle, backend=backend, precision=precision, memory_budget=memory_budget)
    rows = []
    for path in sorted((DATA / "GoPro_pairs" / "blur").iterdir()):
        blurred = imageio.read_image(path).pixels
        sharp = imageio.read_image(DATA / "GoPro_pairs" / "sharp" / path.name).pixels
        start = time.perf_counter()
        result = session.run(imageio.to_float(imageio.read_image(path)))
        restored = imageio.from_float(result.image, 8)
        seconds = time.perf_counter() - start
        if result.grid is not None:  # the session falls back to tiles when the whole frame is over budget
            print(f"{bundle.name} {precision} {path.name}: restored in tiles, the whole frame does not fit "
                  f"--memory-budget {memory_budget:g} MB", file=sys.stderr)
        rows.append((path.name, metrics.psnr(blurred, sharp), metrics.ssim(blurred, sharp),
                     metrics.psnr(restored, sharp), metrics.ssim(restored, sharp), seconds))
    return rows


def set12_drop(bundle: Path, backend: str) -> tuple[float, float]:
    from edgerestore.runtime.evaluate import evaluate

    scores = [evaluate(Session(bundle, backend=backend, precision=p), DATA / "Set12", "gaussian:25", None, 0, False)
              for p in ("fp32", "int8")]
    return scores[0].psnr, scores[1].psnr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calib-images", type=int, default=16)
    parser.add_argument("--holdout", type=int, default=8)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--memory-budget", type=float, default=WHOLE_BUDGET_MB, metavar="MB",
                        help="the sessions' memory budget (the default holds SRN's whole 1280x720 frame)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="deblur-eval-"))
    failures = []
    reports = {}
    for name in ("srn", "deblurganv2", "memnet"):
        reports[name] = export(name, root, args.calib_images, args.holdout)
        report, seconds = reports[name]
        print(f"exported {name} with --int8 in {seconds:.0f} s; parity max abs error "
              f"{max(p.max_abs_error for p in report.parity):.1e}")

    print(f"\nGoPro pairs (1280x720, whole images, {args.backend}):")
    print(f"{'model':<12} {'precision':<9} {'image':<15} {'input PSNR':>10} {'SSIM':>6} {'restored':>9} {'SSIM':>6} "
          f"{'gain':>6} {'seconds':>7}")
    for name in ("srn", "deblurganv2"):
        for precision in ("fp32", "int8"):
            rows = gopro(root / name, precision, args.backend, args.memory_budget)
            for image, p_in, s_in, p_out, s_out, seconds in rows:
                print(f"{name:<12} {precision:<9} {image:<15} {p_in:>10.2f} {s_in:>6.4f} {p_out:>9.2f} {s_out:>6.4f} "
                      f"{p_out - p_in:>+6.2f} {seconds:>7.2f}")
                if precision == "fp32" and p_out <= p_in:
                    failures.append(f"{name} does not beat the blurred input on {image}")
            mean_in, mean_out = np.mean([r[1] for r in rows]), np.mean([r[3] for r in rows])
            print(f"{name:<12} {precision:<9} {'mean':<15} {mean_in:>10.2f} {'':>6} {mean_out:>9.2f} {'':>6} "
                  f"{mean_out - mean_in:>+6.2f}")

    print("\nINT8 (percentile calibration), held-out crops as `export --int8` reports them:")
    print(f"{'model':<12} {'calibration':<28} {'FP32 PSNR':>9} {'INT8 PSNR':>9} {'drop':>6} {'INT8 MACs':>9}")
    for name, (report, _) in reports.items():
        folder, spec = CALIBRATION[name]
        fp32, int8 = report.int8.scores[:2]
        print(f"{name:<12} {folder.name + ' ' + spec:<28} {fp32.psnr:>9.2f} {int8.psnr:>9.2f} "
              f"{fp32.psnr - int8.psnr:>6.2f} {report.int8.int8_mac_share:>9.1%}")
    fp32, int8 = set12_drop(root / "memnet", args.backend)
    print(f"memnet on Set12, gaussian:25: FP32 {fp32:.2f} dB, INT8 {int8:.2f} dB, drop {fp32 - int8:.2f} dB")

    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
