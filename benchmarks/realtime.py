"""Real time on a CPU: the shipped rtdenoise against OpenCV's non-local means, one run.

On the same 8-bit noisy images (McMaster and Kodak24 at sigma 15/25/50 and
gaussian-peaks:5-50; the noise is the evaluation protocol's, seeded) it runs
OpenCV's ``fastNlMeansDenoisingColored`` (h swept, the best mean PSNR per set and
noise kept) and the rtdenoise bundle's FP32 and INT8 stages on OpenVINO and ONNX
Runtime, and prints PSNR/SSIM and seconds per image for each; then the 1280x720
frame rate of each backend and precision from ``edgerestore profile`` (p50, default
memory budget), and, with --candidates, the frontier of the model sizes tried
(each checkpoint exported the same way: MACs per pixel, McMaster sigma 25 PSNR,
INT8 fps). Checks issue #19's claims on McMaster sigma 25:

  * INT8 on OpenVINO >= 3.0 dB above the best NLM and >= 5x faster per image;
  * 1280x720 INT8 on OpenVINO >= 10 fps (p50);
  * INT8 loses <= 0.1 dB against FP32 (OpenVINO and ONNX Runtime).

Usage: python benchmarks/realtime.py [--bundle B] [--candidates A.pth B.pth ...] [--json F]
Without --bundle it exports the shipped checkpoint with the README's INT8 command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from _common import SHARED, int8_share_line
from edgerestore.runtime import degrade, imageio, metrics

SPECS = "gaussian:15,gaussian:25,gaussian:50,gaussian-peaks:5-50"
CALIB_DEGRADE = "gaussian:10,gaussian:25,gaussian:50,gaussian-peaks:5-50"
RUNS = [("openvino", "fp32"), ("openvino", "int8"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")]
KEY = ("McMaster", "gaussian:25")


def export(out: Path, weights: Path | None = None) -> Path:
    """The README's export: INT8 calibrated on BSDS400 (the training images, not the test sets)."""
    command = [_cli(), "export", "rtdenoise", "-o", str(out), "--int8", "--calib",
               str(SHARED / "data" / "BSDS400_color"), "--calib-degrade", CALIB_DEGRADE]
    if weights is not None:
        command += ["--weights", str(weights)]
    _run(command)
    return out


def _run(command: list[str]) -> None:
    """A CLI command, quiet unless it fails."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(command[:3])} failed:\n{done.stderr}")


def _cli() -> str:
    return str(Path(sys.executable).with_name("edgerestore"))


def sigma_of(spec: str) -> float:
    """The noise level NLM's h is scaled by (the middle of a range)."""
    values = [float(v) for v in spec.split(":")[1].split("-")]
    return sum(values) / len(values)


def frames_of(name: str, spec: str):
    for path in imageio.list_images(SHARED / "data" / name):
        clean = imageio.read_image(path).pixels
        noisy = degrade.parse(spec).apply(clean.astype(np.float64) / 255.0)
        yield path.name, clean, imageio.from_float(noisy, 8)


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def nlm(noisy: np.ndarray, h: float) -> np.ndarray:
    bgr = np.ascontiguousarray(noisy[..., ::-1])
    return cv2.fastNlMeansDenoisingColored(bgr, None, h, h, 7, 21)[..., ::-1]


def score(out: np.ndarray, clean: np.ndarray) -> tuple[float, float]:
    return metrics.psnr(out, clean), metrics.ssim(out, clean)


def quality(sessions: dict, sets: list[str], specs: list[str], h_factors: list[float]) -> dict:
    """Per (set, spec): NLM at each h and every session, mean PSNR/SSIM/seconds per image."""
    table = {}
    for name in sets:
        for spec in specs:
            hs = [round(f * sigma_of(spec), 1) for f in h_factors]
            rows = {f"nlm h={h:g}": [] for h in hs} | {label: [] for label in sessions}
            for _, clean, noisy in frames_of(name, spec):
                for h in hs:
                    out, seconds = timed(nlm, noisy, h)
                    rows[f"nlm h={h:g}"].append((*score(out, clean), seconds))
                for label, session in sessions.items():
                    out, seconds = timed(session.restore, noisy)
                    rows[label].append((*score(out, clean), seconds))
            means = {label: [float(np.mean(col)) for col in zip(*values)] for label, values in rows.items()}
            best = max((label for label in means if label.startswith("nlm")), key=lambda k: means[k][0])
            table[(name, spec)] = {"best_nlm": best, "rows": means}
            _print_block(name, spec, means, best)
    return table


def _print_block(name: str, spec: str, means: dict, best: str) -> None:
    print(f"\n{name} {spec}")
    print("| method | PSNR | SSIM | s/image |")
    print("| --- | --- | --- | --- |")
    for label, (psnr, ssim, seconds) in means.items():
        if label.startswith("nlm") and label != best:
            continue
        print(f"| {label + (' (best h)' if label == best else '')} | {psnr:.2f} | {ssim:.4f} | {seconds:.3f} |",
              flush=True)


def profile_fps(bundle: Path, precision: str, backends: list[str], iterations: int) -> dict[str, float]:
    """1280x720 frames per second (1000 / p50 latency) per backend, from `edgerestore profile`."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "profile.json"
        command = [_cli(), "profile", str(bundle), "--size", "1280x720", "--precision", precision,
                   "--iterations", str(iterations), "--json", str(report)]
        for backend in backends:
            command += ["--backend", backend]
        _run(command)
        runs = json.loads(report.read_text())["runs"]
    return {run["backend"]: 1000.0 / run["latency_ms"]["p50"] for run in runs}


def frontier(candidates: list[Path], iterations: int) -> list[dict]:
    """Each candidate checkpoint exported like the shipped one: size, McMaster sigma 25, fps."""
    import edgerestore

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, weights in enumerate(candidates):
            bundle = export(Path(tmp) / f"candidate{index}", weights)
            manifest = json.loads((bundle / "manifest.json").read_text())
            row = {"checkpoint": weights.name, "config": manifest["model"].get("config", {}),
                   "kmac_per_pixel": manifest["stages"]["main"]["macs_per_pixel"] / 1000,
                   "steps": _training_steps(weights)}
            for precision in ("fp32", "int8"):
                with edgerestore.load(bundle, backend="openvino", precision=precision) as session:
                    scores = [metrics.psnr(session.restore(noisy), clean) for _, clean, noisy in frames_of(*KEY)]
                row[f"psnr_{precision}"] = float(np.mean(scores))
            row["fps_int8"] = profile_fps(bundle, "int8", ["openvino"], iterations)["openvino"]
            rows.append(row)
            print(f"| {row['checkpoint']} | {_config(row['config'])} | {row['steps']} | {row['kmac_per_pixel']:.1f} | "
                  f"{row['psnr_fp32']:.2f} | {row['psnr_int8']:.2f} | {row['fps_int8']:.1f} |", flush=True)
    return rows


def _config(config: dict) -> str:
    return ", ".join(f"{k} {config[k]}" for k in ("features", "depth", "unshuffle", "levels") if k in config)


def _training_steps(weights: Path) -> int | None:
    from edgerestore.models import load_checkpoint

    return load_checkpoint(weights).meta.get("train", {}).get("steps")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="An rtdenoise bundle with INT8 stages (default: export the shipped one).")
    parser.add_argument("--sets", default="McMaster,Kodak24")
    parser.add_argument("--specs", default=SPECS)
    parser.add_argument("--nlm-h", default="0.6,0.8,1.0,1.2",
                        help="NLM strengths swept, as multiples of the noise sigma (the middle of a range).")
    parser.add_argument("--iterations", type=int, default=30, help="Frames per `edgerestore profile` run.")
    parser.add_argument("--candidates", type=Path, nargs="*", default=[],
                        help="rtdenoise checkpoints of other sizes (`edgerestore train rtdenoise --features ...`) "
                             "for the frontier table; the shipped one is models/weights/rtdenoise.pth.")
    parser.add_argument("--json", type=Path, help="Also write every number here.")
    args = parser.parse_args()

    import edgerestore

    print(f"CPU: {_cpu()}; OpenCV {cv2.__version__} threads {cv2.getNumThreads()}")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or export(Path(tmp) / "rtdenoise")
        print(int8_share_line(bundle))
        sessions = {f"rtdenoise {b} {p}": edgerestore.load(bundle, backend=b, precision=p) for b, p in RUNS}
        warm = next(frames_of(*KEY))[2]
        for session in sessions.values():
            session.restore(warm)
        table = quality(sessions, args.sets.split(","), args.specs.split(","),
                        [float(f) for f in args.nlm_h.split(",")])
        for session in sessions.values():
            session.close()
        fps = {p: profile_fps(bundle, p, ["openvino", "onnxruntime"], args.iterations) for p in ("fp32", "int8")}
        print("\n1280x720 frames per second (p50 of `edgerestore profile`, default memory budget):")
        for precision, by_backend in fps.items():
            print("  " + precision + ": " + ", ".join(f"{b} {v:.1f}" for b, v in by_backend.items()))
        rows = []
        if args.candidates:
            print("\nFrontier (McMaster gaussian:25 on OpenVINO; fps: 1280x720 INT8 OpenVINO p50):")
            print("| checkpoint | size | training steps | kMAC/pixel | PSNR FP32 | PSNR INT8 | fps |")
            print("| --- | --- | --- | --- | --- | --- | --- |")
            rows = frontier(list(args.candidates), args.iterations)

    verdict = check(table, fps)
    if args.json:
        args.json.write_text(json.dumps({"cpu": _cpu(), "quality": {f"{k[0]} {k[1]}": v for k, v in table.items()},
                                         "fps": fps, "frontier": rows, "checks": verdict}, indent=1))
    return 0 if all(ok for ok, _ in verdict.values()) else 1


def check(table: dict, fps: dict) -> dict[str, tuple[bool, str]]:
    if KEY not in table:
        print("\n(McMaster gaussian:25 not in this run: no checks)")
        return {}
    rows, best = table[KEY]["rows"], table[KEY]["best_nlm"]
    ours = rows["rtdenoise openvino int8"]
    margin, speedup = ours[0] - rows[best][0], rows[best][2] / ours[2]
    verdict = {
        "margin": (margin >= 3.0, f"INT8 OpenVINO {ours[0]:.2f} dB vs best NLM ({best}) {rows[best][0]:.2f} dB: "
                                  f"{margin:+.2f} dB (need >= 3.0)"),
        "speed": (speedup >= 5.0, f"NLM {rows[best][2]:.3f} s/image vs INT8 OpenVINO {ours[2]:.4f} s: "
                                  f"{speedup:.1f}x faster (need >= 5)"),
        "fps": (fps["int8"]["openvino"] >= 10.0, f"1280x720 INT8 OpenVINO {fps['int8']['openvino']:.1f} fps "
                                                 "(need >= 10)"),
    }
    for backend in ("openvino", "onnxruntime"):
        loss = rows[f"rtdenoise {backend} fp32"][0] - rows[f"rtdenoise {backend} int8"][0]
        verdict[f"int8_loss_{backend}"] = (loss <= 0.1, f"{backend}: INT8 loses {loss:.3f} dB against FP32 "
                                                        "(need <= 0.1)")
    print("\nMcMaster gaussian:25:")
    for ok, text in verdict.values():
        print(f"  {'PASS' if ok else 'FAIL'}  {text}")
    return verdict


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"


if __name__ == "__main__":
    sys.exit(main())
