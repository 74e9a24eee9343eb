"""Throughput of the ``edgerestore`` GStreamer element against the session's own loop.

    edgerestore export dncnn --weights ../shared/weights/dncnn_25_kair_state_dict.pth -o kair.bundle
    python benchmarks/gst.py --bundle kair.bundle            # with the GStreamer venv's python

The same frames (640x360 by default: crops of Kodak24 in gray, with ``gaussian:25`` noise;
random noise where ``../shared`` is absent) go through ``Session.restore`` in a loop, and
through ``appsrc ! edgerestore ! fakesink sync=false``. The element's time runs from its
first buffer arriving at its sink pad to the last one leaving the sink, so its caps-time
warm-up (tile planning on a blank frame) is outside it, as the loop's warm-up frame is.
Rounds alternate loop and pipeline; each side's best round counts (the machine may be shared).
Exits 1 when the element's throughput is below ``--min-ratio`` of the loop's.

Runs under the Python GStreamer embeds (a venv of /usr/bin/python3 made with
--system-site-packages, edgerestore installed into it; see the README's GStreamer section).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from _common import SHARED


def frames(count: int, width: int, height: int) -> list[np.ndarray]:
    from edgerestore.runtime import imageio

    rng = np.random.default_rng(0)
    kodak = SHARED / "data" / "Kodak24"
    paths = imageio.list_images(kodak) if kodak.is_dir() else []
    out = []
    for k in range(count):
        if paths:
            rgb = imageio.read_image(paths[k % len(paths)]).pixels.astype(np.float32)
            gray = (rgb[..., :3] @ np.float32([0.299, 0.587, 0.114]))[:height, :width]
            gray = np.pad(gray, ((0, height - gray.shape[0]), (0, width - gray.shape[1])), mode="reflect")
        else:
            gray = np.full((height, width), 128, np.float32)
        out.append(np.clip(np.rint(gray + rng.normal(0, 25, gray.shape)), 0, 255).astype(np.uint8))
    return out


def session_fps(bundle: Path, backend: str, images: list[np.ndarray]) -> float:
    import edgerestore

    with edgerestore.load(bundle, backend=backend) as session:
        session.restore(images[0])  # warm-up: plans the tiles, as the element does at caps time
        start = time.perf_counter()
        for image in images:
            session.restore(image)
        return len(images) / (time.perf_counter() - start)


def element_fps(bundle: Path, backend: str, images: list[np.ndarray]) -> tuple[float, dict]:
    import gi

    gi.require_version("Gst", "1.0")
    from gi.repository import Gst

    Gst.init(None)
    height, width = images[0].shape
    pipeline = Gst.parse_launch(
        f"appsrc name=src format=time caps=video/x-raw,format=GRAY8,width={width},height={height},framerate=30/1 "
        f"! edgerestore name=e bundle={bundle} backend={backend} ! fakesink name=sink sync=false")
    marks: dict[str, float] = {}

    def first_in(pad, info):
        marks.setdefault("first", time.perf_counter())
        return Gst.PadProbeReturn.OK

    def out(pad, info):
        marks["last"] = time.perf_counter()
        return Gst.PadProbeReturn.OK

    element = pipeline.get_by_name("e")
    element.get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, first_in)
    pipeline.get_by_name("sink").get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, out)
    pipeline.set_state(Gst.State.PLAYING)
    source = pipeline.get_by_name("src")
    for k, image in enumerate(images):  # rows of 640 bytes: GRAY8's default stride, no padding
        buf = Gst.Buffer.new_wrapped(image.tobytes())
        buf.pts, buf.duration = k * Gst.SECOND // 30, Gst.SECOND // 30
        source.emit("push-buffer", buf)
    source.emit("end-of-stream")
    message = pipeline.get_bus().timed_pop_filtered(600 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR)
    stats = element.get_property("stats")
    pipeline.set_state(Gst.State.NULL)
    if message is None or message.type == Gst.MessageType.ERROR:
        raise SystemExit(f"error: the pipeline failed: {message.parse_error()[0].message if message else 'timeout'}")
    report = {stats.nth_field_name(i): stats.get_value(stats.nth_field_name(i)) for i in range(stats.n_fields())}
    return len(images) / (marks["last"] - marks["first"]), report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="a gray bundle (the KAIR DnCNN: see above)")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--size", default="640x360", help="WxH")
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--min-ratio", type=float, default=0.9)
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    images = frames(args.frames, width, height)
    loop, element, stats = [], [], {}
    for _ in range(args.rounds):
        loop.append(session_fps(args.bundle, args.backend, images))
        fps, stats = element_fps(args.bundle, args.backend, images)
        element.append(fps)
        print(f"session loop {loop[-1]:.2f} fps, element {fps:.2f} fps", file=sys.stderr, flush=True)
    ratio = max(element) / max(loop)
    print(json.dumps({"bundle": str(args.bundle), "backend": args.backend, "size": [width, height],
                      "frames": args.frames, "session_fps": loop, "element_fps": element, "ratio": ratio,
                      "element_stats": stats}, indent=2))
    if ratio < args.min_ratio:
        print(f"error: the element ran at {ratio:.2f}x the session loop (below {args.min_ratio})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
