"""Soak test of the streaming runtime: a long video through the Path-Restore bundle.

Generates its own test video with OpenCV (a moving scene with noise; each frame carries its
index as a 16-bit block code), streams it through the same objects ``edgerestore restore
VIDEO -o OUT.mp4`` uses (CaptureSource -> Pipeline -> VideoSink, concurrent, bounded
queues), and checks the issue's acceptance:

* resident memory after the last frame within 5% of after frame ``--early`` (30);
* every frame present and in order: in the pipeline's output, and in the encoded video
  read back (block codes decoded from the restored pixels).

    python benchmarks/soak.py                                # 300 frames of 1280x720 (the acceptance run)
    python benchmarks/soak.py --size 320x180 --frames 300    # the same on a small frame (a 2-core CPU)

Prints the RSS at each checkpoint, their ratio, FPS, and PASS/FAIL; exit status 1 on FAIL.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bundle_or_shipped  # noqa: E402

BITS = 16


def block(width: int, height: int) -> int:
    return max(8, min(width, height) // 24)


def make_video(path: Path, frames: int, width: int, height: int, seed: int = 0) -> None:
    """A gradient with a moving disc and bar, gaussian noise (sigma 15), and the frame index
    as 2 x 8 black/white blocks in the top-left corner."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (width, height))
    if not writer.isOpened():
        raise SystemExit(f"cannot write {path}")
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.dstack([x / width * 160 + 40, y / height * 120 + 60, (x + y) / (width + height) * 100 + 80])
    b = block(width, height)
    for i in range(frames):
        frame = base.copy()
        cx, cy = int(width * (0.2 + 0.6 * (i % 60) / 60)), int(height * 0.55)
        cv2.circle(frame, (cx, cy), height // 6, (220, 90, 40), -1)
        cv2.rectangle(frame, (0, int(height * 0.8)), (int(width * ((i % 90) / 90)), height - 1), (30, 200, 200), -1)
        for bit in range(BITS):
            r, c = divmod(bit, 8)
            frame[r * b:(r + 1) * b, c * b:(c + 1) * b] = 230 if (i >> bit) & 1 else 25
        frame += rng.normal(0, 15, frame.shape).astype(np.float32)
        writer.write(np.clip(frame, 0, 255).astype(np.uint8))
    writer.release()


def read_index(pixels: np.ndarray) -> int:
    """The block code of a frame (any channel order: the blocks are gray)."""
    b = block(pixels.shape[1], pixels.shape[0])
    q = b // 4
    value = 0
    for bit in range(BITS):
        r, c = divmod(bit, 8)
        if pixels[r * b + q:(r + 1) * b - q, c * b + q:(c + 1) * b - q].mean() > 128:
            value |= 1 << bit
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=None, help="default: export the shipped Path-Restore")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--early", type=int, default=30, help="the checkpoint the last frame is compared with")
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--memory-budget", type=float, default=None, metavar="MB",
                        help="the session's memory budget for frames (default: the runtime's, as the CLI's)")
    parser.add_argument("--queue", type=int, default=4)
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the videos here (default: a temp dir)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))

    from edgerestore.runtime.atomic import atomic_file
    from edgerestore.runtime.budget import DEFAULT_BUDGET_MB
    from edgerestore.runtime.session import Session
    from edgerestore.runtime.stream import Pipeline
    from edgerestore.runtime.video import CaptureSource, VideoSink

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edgerestore-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    source_path, output_path = workdir / "soak_in.avi", workdir / "soak_out.mp4"
    start = time.perf_counter()
    make_video(source_path, args.frames, width, height)
    print(f"test video: {args.frames} frames {width}x{height} -> {source_path} ({time.perf_counter() - start:.1f} s)")

    bundle = bundle_or_shipped(args.bundle)
    budget = DEFAULT_BUDGET_MB if args.memory_budget is None else args.memory_budget
    session = Session(bundle, backend=args.backend, memory_budget=budget)
    process = psutil.Process()
    rss: dict[int, int] = {}
    order: list[int] = []
    notices: list[str] = []
    source = CaptureSource(str(source_path))
    pipeline = Pipeline(session, args.queue, on_notice=lambda kind, line: notices.append(line))
    start = time.perf_counter()
    with atomic_file(output_path) as tmp:
        sink = VideoSink(tmp, output_path, source.fps or 30, lambda kind, line: notices.append(line))
        try:
            for count, frame in enumerate(pipeline.run(source), start=1):
                sink.write(frame)
                order.append(frame.index)
                rss[count] = process.memory_info().rss
                if count in (1, args.early) or count % 10 == 0:
                    elapsed = time.perf_counter() - start
                    print(f"frame {count:4d}/{args.frames}: rss {rss[count] / 2**20:7.1f} MiB, "
                          f"{count / elapsed:.3f} fps", flush=True)
        finally:
            sink.close()
            source.close()
    seconds = time.perf_counter() - start

    decoded = []
    capture = cv2.VideoCapture(str(output_path))
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        decoded.append(read_index(frame))
    expected = list(range(args.frames))
    early, last = rss.get(args.early), rss.get(args.frames)
    ratio = last / early if early and last else float("nan")
    memory_ok = abs(ratio - 1.0) <= args.tolerance
    order_ok = order == expected and decoded == expected
    stats = pipeline.stats
    print(f"backend {session.backend} {session.precision}, memory budget {budget:g} MB, queue {args.queue}: "
          f"{len(order)} frames in {seconds:.1f} s ({len(order) / seconds:.3f} fps), "
          f"{stats.executed_macs / max(stats.full_macs, 1):.0%} of the full path's MACs")
    print(f"rss after frame {args.early}: {early / 2**20:.1f} MiB; after frame {args.frames}: {last / 2**20:.1f} MiB; "
          f"ratio {ratio:.4f} (tolerance {args.tolerance:.0%}): {'PASS' if memory_ok else 'FAIL'}")
    print(f"order: pipeline {len(order)} frames {'in order' if order == expected else 'OUT OF ORDER / MISSING'}; "
          f"encoded video read back {len(decoded)} frames "
          f"{'in order' if decoded == expected else 'OUT OF ORDER / MISSING'}: {'PASS' if order_ok else 'FAIL'}")
    if notices:
        print(f"{len(notices)} notices, first: {notices[0]}")
    return 0 if memory_ok and order_ok else 1


if __name__ == "__main__":
    sys.exit(main())
