"""Which quantizer for ``export --int8``: ONNX Runtime's ``quantize_static`` with each range
method (minmax, percentile, entropy, and our mse on ONNX Runtime's histograms) against
OpenVINO NNCF's post-training quantization (when installed), on KAIR DnCNN-S sigma=25.

Every variant gets the same 32 Train400 calibration crops (gaussian:25) and the same
default policy (first and last conv in FP32), then is scored on Set12 gaussian:25 (with
OpenVINO; ONNX Runtime runs the same Q/DQ graph to within 0.001 dB, --psnr-backend to
check) and timed on one 512x512 image on both backends (whole, best of --repeats), all
in one run.

Usage: python benchmarks/int8_quantizers.py [--methods minmax,percentile,entropy,mse] [--no-nncf]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import SHARED, int8_share_line
from edgerestore.calibration import FolderSplit, Int8Options, add_int8
from edgerestore.calibration.policy import default_fp32_layers
from edgerestore.export import export_bundle
from edgerestore.runtime import degrade, imageio
from edgerestore.runtime.bundle import Bundle
from edgerestore.runtime.evaluate import evaluate
from edgerestore.runtime.schema import file_sha256, write_manifest
from edgerestore.runtime.session import Session

WEIGHTS = SHARED / "weights" / "dncnn_25_kair_state_dict.pth"
SET12 = SHARED / "data" / "Set12"
TRAIN400 = SHARED / "data" / "Train400"
BACKENDS = ("onnxruntime", "openvino")


def latency(bundle: Path, backend: str, precision: str, image: np.ndarray, repeats: int) -> float:
    session = Session(bundle, backend=backend, precision=precision, whole=True)
    session.restore(image)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        session.restore(image)
        best = min(best, time.perf_counter() - start)
    return best


def nncf_variant(base: Path, out: Path, split: FolderSplit) -> None:
    """NNCF PTQ of the same FP32 stage: symmetric (PERFORMANCE preset), same FP32 layers."""
    import nncf
    import onnx

    shutil.copytree(base, out)
    bundle = Bundle(out)
    samples = split.calibration()
    data = nncf.Dataset([{"input": s.degraded.transpose(2, 0, 1)[None]} for s in samples])
    ignored = [node for _, node in default_fp32_layers(bundle)]
    quantized = nncf.quantize(onnx.load(str(out / "main.onnx")), data, preset=nncf.QuantizationPreset.PERFORMANCE,
                              subset_size=len(samples), ignored_scope=nncf.IgnoredScope(names=ignored))
    onnx.save(quantized, str(out / "main.int8.onnx"))
    manifest = bundle.spec
    manifest.stages["main"].files["int8"] = "main.int8.onnx"
    manifest.stages["main"].sha256["int8"] = file_sha256(out / "main.int8.onnx")
    manifest.precisions = ["fp32", "int8"]
    write_manifest(out, manifest)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="minmax,percentile,entropy,mse")
    parser.add_argument("--no-nncf", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--psnr-backend", default="openvino", choices=BACKENDS)
    args = parser.parse_args()
    for path in (WEIGHTS, SET12, TRAIN400):
        if not path.exists():
            print(f"{path} not found: needs the shared data folder")
            return 1

    work = Path(tempfile.mkdtemp(prefix="int8-quantizers-"))
    base = work / "fp32"
    export_bundle("dncnn", base, weights=WEIGHTS)
    # the export's defaults; a small hold-out only because this script scores on Set12 itself
    split = FolderSplit(TRAIN400, "gaussian:25", count=32, holdout=2, crop=128)
    clean = imageio.to_float(imageio.read_image(SET12 / "08.png")).astype(np.float64)  # 512x512
    image = degrade.parse("gaussian:25").apply(clean).astype(np.float32)

    variants: list[tuple[str, Path, float]] = []
    for method in args.methods.split(","):
        out = work / method
        shutil.copytree(base, out)
        start = time.perf_counter()
        add_int8(out, Int8Options(split, method=method))  # writes the manifest itself
        variants.append((f"ORT quantize_static, {method}", out, time.perf_counter() - start))
    if not args.no_nncf:
        try:
            start = time.perf_counter()
            nncf_variant(base, work / "nncf", split)
            variants.append(("NNCF quantize (ONNX), PERFORMANCE preset", work / "nncf", time.perf_counter() - start))
        except ImportError:
            print("nncf not installed: its row is left out")

    scored = args.psnr_backend
    fp32 = evaluate(Session(base, backend=scored, precision="fp32"), SET12, "gaussian:25").psnr
    fp32_time = {b: latency(base, b, "fp32", image, args.repeats) for b in BACKENDS}
    print(f"DnCNN-S sigma=25 (KAIR), Set12 gaussian:25, FP32 {fp32:.4f} dB ({scored}); 512x512 FP32 latency: "
          + ", ".join(f"{b} {fp32_time[b]:.3f} s" for b in BACKENDS))
    print(int8_share_line(variants[0][1]) + "; every row keeps the same layers FP32")
    print(f"{'quantizer':<42} {'calib s':>7} {'INT8 dB':>8} {'drop':>6} "
          + " ".join(f"{b + ' int8/fp32':>22}" for b in BACKENDS))
    for name, bundle, seconds in variants:
        psnr = evaluate(Session(bundle, backend=scored, precision="int8"), SET12, "gaussian:25").psnr
        ratios = [latency(bundle, b, "int8", image, args.repeats) / fp32_time[b] for b in BACKENDS]
        print(f"{name:<42} {seconds:>7.1f} {psnr:>8.4f} {fp32 - psnr:>6.3f} "
              + " ".join(f"{r:>22.2f}" for r in ratios), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
