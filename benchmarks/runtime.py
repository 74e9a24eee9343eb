"""How well the routed runtime uses the CPU, per backend and precision, in one run.

    python benchmarks/runtime.py --bundle pr8.bundle            # the shipped Path-Restore, exported --int8

For each backend and precision the bundle has, in a fresh process each (so that peak memory is
that configuration's own):

* **reference rate**: one 64-channel residual block stage (``block0.shared``) alone, on a batch
  of 128 random 63x63 tiles, GMAC/s: what the backend does with the model's main operator
  when nothing else is in the way;
* **routed rate**: executed GMAC/s of routed 1280x720 frames through the session, pathfinder
  and every other stage included, over the frame latency (tile extract and merge, routing,
  gathering and scattering included);
* their ratio, the frame latency p50, the backend calls per frame and the peak resident memory
  (``ru_maxrss``) of the process while it restored the frames (measured before the reference);

then INT8/FP32 of the frame latency per backend. The frame is the profile's: scikit-image's
astronaut, resized, with ``gaussian-peaks:5-50`` (routing spends by content), as uint8.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import time
from pathlib import Path

import numpy as np

from _common import int8_share_line

REFERENCE_STAGE = "block0.shared"
REFERENCE_BATCH = 128


def reference_rate(bundle, backend: str, precision: str, repeats: int) -> float:
    from edgerestore.runtime import backends

    runner = backends.open_stage(backend, bundle, REFERENCE_STAGE, precision)
    spec = bundle.stages[REFERENCE_STAGE]
    shape = spec.inputs[0].shape
    x = np.random.default_rng(0).random((REFERENCE_BATCH, *shape), dtype=np.float32)
    feeds = {spec.inputs[0].name: x}
    runner(feeds)  # warm-up: first-call allocations and kernel selection
    start = time.perf_counter()
    for _ in range(repeats):
        runner(feeds)
    seconds = (time.perf_counter() - start) / repeats
    return REFERENCE_BATCH * spec.macs_per_call / seconds / 1e9


def measure(path: str, backend: str, precision: str, size: tuple[int, int], frames: int, budget: float) -> dict:
    """One configuration, in the calling (fresh) process."""
    from edgerestore.runtime.bundle import Bundle
    from edgerestore.runtime.profile_command import profile_frame
    from edgerestore.runtime.session import Session

    bundle = Bundle(path)
    frame, _ = profile_frame(bundle.channels, size, None, "gaussian-peaks:5-50")
    with Session(bundle, backend=backend, precision=precision, memory_budget=budget) as session:
        session.run(frame)  # warm-up
        results = []
        for _ in range(frames):
            start = time.perf_counter()
            result = session.run(frame)
            results.append((time.perf_counter() - start, result))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the session's, before the reference batch
    reference = reference_rate(bundle, backend, precision, repeats=3)
    latency = np.array([t for t, _ in results])
    gmac = float(np.mean([r.gmac for _, r in results]))
    calls = float(np.mean([sum(sum(sizes.values()) for sizes in r.calls.values()) for _, r in results]))
    routed = gmac / float(latency.mean())
    return {"backend": backend, "precision": precision, "reference_gmac_s": reference, "routed_gmac_s": routed,
            "ratio": routed / reference, "latency_p50_s": float(np.percentile(latency, 50)),
            "gmac_per_frame": gmac, "mac_ratio": float(np.mean([r.mac_ratio for _, r in results])),
            "calls_per_frame": calls, "peak_rss_mb": peak}


def _child(queue, *args) -> None:
    try:
        queue.put(measure(*args))
    except BaseException as exc:  # handed to the parent, which reports it
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="a routed bundle with a 64-channel block stage "
                        f"'{REFERENCE_STAGE}' (the shipped Path-Restore, exported with --int8 for both precisions)")
    parser.add_argument("--backends", default="openvino,onnxruntime")
    parser.add_argument("--precisions", default=None, help="default: every precision the bundle has")
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--frames", type=int, default=3, help="timed frames per configuration (after one warm-up)")
    parser.add_argument("--memory-budget", type=float, default=1024, help="MB")
    args = parser.parse_args()
    from edgerestore.runtime.bundle import Bundle
    from edgerestore.runtime.profile_command import parse_size

    bundle = Bundle(args.bundle)
    if REFERENCE_STAGE not in bundle.stages:
        parser.error(f"bundle has no stage '{REFERENCE_STAGE}'")
    precisions = args.precisions.split(",") if args.precisions else list(reversed(bundle.precisions))
    if "int8" in precisions:
        print(int8_share_line(Path(args.bundle)))
    size = parse_size(args.size)
    context = multiprocessing.get_context("spawn")
    rows = []
    for backend in args.backends.split(","):
        for precision in precisions:
            queue = context.Queue()
            process = context.Process(target=_child, args=(queue, args.bundle, backend, precision, size, args.frames,
                                                           args.memory_budget))
            process.start()
            row = queue.get()
            process.join()
            if "error" in row:
                print(f"{backend} {precision}: {row['error']}", file=sys.stderr)
                return 1
            rows.append(row)
            print(f"{backend} {precision}: done", file=sys.stderr, flush=True)
    print(f"{args.size}, {args.frames} frames, memory budget {args.memory_budget:g} MB\n")
    print("| backend | precision | reference GMAC/s (block, batch 128) | routed GMAC/s | routed / reference | "
          "frame p50 | GMAC per frame (share of full path) | backend calls per frame | peak RSS |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['backend']} | {r['precision']} | {r['reference_gmac_s']:.1f} | {r['routed_gmac_s']:.1f} | "
              f"{r['ratio']:.2f} | {r['latency_p50_s']:.2f} s | {r['gmac_per_frame']:.0f} ({r['mac_ratio']:.0%}) | "
              f"{r['calls_per_frame']:.0f} | {r['peak_rss_mb']:.0f} MB |")
    print()
    for backend in args.backends.split(","):
        latency = {r["precision"]: r["latency_p50_s"] for r in rows if r["backend"] == backend}
        if "fp32" in latency and "int8" in latency:
            print(f"{backend}: INT8 / FP32 frame latency {latency['int8'] / latency['fp32']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
