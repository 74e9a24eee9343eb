"""Runs one GStreamer pipeline in the Python application form (``Gst.parse_launch``) and
reports what passed through the ``edgerestore`` element, for tests/test_gst.py.

It runs under the interpreter GStreamer's Python loader embeds (a venv of the system
Python with edgerestore installed), which the suite's own interpreter need not be:

    python gst_harness.py PIPELINE --element e [--save DIR] [--push RGB:64x48:5,RGB:80x60:5]

Prints one JSON object: the buffers at the element's sink and src pads (pts, duration), the
caps it was given, every ERROR message (source element, text, debug), every
``edgerestore-stats`` element message, the final ``stats`` property and the answer to a
LATENCY query at the element's src pad. ``--save`` writes each
buffer's pixels at both pads as ``in_NNN.npy`` / ``out_NNN.npy``, read with the caps' strides.
``--push`` feeds an ``appsrc`` named ``src``: seeded random frames, the given counts of each
format and size in turn, timestamped at ``--fps`` (30); each caps change goes with the next frame.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gi
import numpy as np

gi.require_version("Gst", "1.0")
gi.require_version("GstVideo", "1.0")
from gi.repository import Gst, GstVideo  # noqa: E402

from edgerestore.runtime.gst import video  # noqa: E402


def frame_pixels(buf: Gst.Buffer, caps: Gst.Caps) -> np.ndarray:
    info = GstVideo.VideoInfo.new_from_caps(caps)
    fmt = video.FORMATS[info.finfo.name]
    meta = GstVideo.buffer_get_video_meta(buf)
    stride, offset = (meta.stride[0], meta.offset[0]) if meta else (info.stride[0], info.offset[0])
    ok, mapped = buf.map(Gst.MapFlags.READ)
    try:
        return np.array(video.pixels(mapped.data, fmt, info.width, info.height, stride, offset))
    finally:
        buf.unmap(mapped)


def watch(element: Gst.Element, save: Path | None, report: dict) -> None:
    for direction in ("sink", "src"):
        pad = element.get_static_pad(direction)
        key = "in" if direction == "sink" else "out"

        def on_buffer(pad, info, key=key):
            buf = info.get_buffer()
            report[key].append({"pts": buf.pts, "duration": buf.duration})
            if save is not None:
                np.save(save / f"{key}_{len(report[key]) - 1:03d}.npy", frame_pixels(buf, pad.get_current_caps()))
            return Gst.PadProbeReturn.OK

        pad.add_probe(Gst.PadProbeType.BUFFER, on_buffer)

    def on_event(pad, info):
        event = info.get_event()
        if event.type == Gst.EventType.CAPS:
            report["caps"].append(event.parse_caps().to_string())
        return Gst.PadProbeReturn.OK

    element.get_static_pad("sink").add_probe(Gst.PadProbeType.EVENT_DOWNSTREAM, on_event)


def push(source: Gst.Element, spec: str, fps: int) -> None:
    frame = Gst.SECOND // fps
    rng = np.random.default_rng(0)
    index = 0
    for part in spec.split(","):
        name, size, count = part.split(":")
        width, height = map(int, size.split("x"))
        caps = Gst.Caps.from_string(f"video/x-raw,format={name},width={width},height={height},framerate={fps}/1")
        info = GstVideo.VideoInfo.new_from_caps(caps)
        source.set_property("caps", caps)
        for _ in range(int(count)):
            data = (rng.random(info.size) * 255).astype(np.uint8).tobytes()
            buf = Gst.Buffer.new_wrapped(data)
            buf.pts, buf.duration = index * frame, frame
            index += 1
            if source.emit("push-buffer", buf) != Gst.FlowReturn.OK:
                return
    source.emit("end-of-stream")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline")
    parser.add_argument("--element", default="e")
    parser.add_argument("--save", type=Path, default=None)
    parser.add_argument("--push", default=None)
    parser.add_argument("--fps", type=int, default=30, help="frame rate of the pushed frames' timestamps")
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    Gst.init(None)
    pipeline = Gst.parse_launch(args.pipeline)
    report = {"in": [], "out": [], "caps": [], "errors": [], "stats_messages": [], "eos": False}
    element = pipeline.get_by_name(args.element)
    watch(element, args.save, report)
    pipeline.set_state(Gst.State.PLAYING)
    if args.push:
        push(pipeline.get_by_name("src"), args.push, args.fps)
    bus = pipeline.get_bus()
    while True:
        message = bus.timed_pop_filtered(int(args.timeout * Gst.SECOND),
                                         Gst.MessageType.ERROR | Gst.MessageType.EOS | Gst.MessageType.ELEMENT)
        if message is None:
            report["errors"].append({"source": None, "message": "timeout", "debug": None})
            break
        if message.type == Gst.MessageType.ELEMENT:
            structure = message.get_structure()
            if structure.get_name() == "edgerestore-stats":
                report["stats_messages"].append(json.loads(_structure_json(structure)))
            continue
        if message.type == Gst.MessageType.ERROR:
            error, debug = message.parse_error()
            report["errors"].append({"source": message.src.get_name(), "message": error.message, "debug": debug})
        else:
            report["eos"] = True
        break
    if element.find_property("stats") is not None:  # the edgerestore element, not a stand-in (identity)
        report["stats"] = json.loads(_structure_json(element.get_property("stats")))
    query = Gst.Query.new_latency()
    if element.get_static_pad("src").query(query):
        live, low, high = query.parse_latency()
        report["latency"] = {"live": live, "min": low, "max": None if high == Gst.CLOCK_TIME_NONE else high}
    pipeline.set_state(Gst.State.NULL)
    print(json.dumps(report))


def _structure_json(structure: Gst.Structure) -> str:
    return json.dumps({structure.nth_field_name(i): structure.get_value(structure.nth_field_name(i))
                       for i in range(structure.n_fields())})


if __name__ == "__main__":
    main()
