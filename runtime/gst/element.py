"""The ``edgerestore`` GStreamer element: a ``GstBase.BaseTransform`` around a runtime session.

    gst-launch-1.0 filesrc location=in.avi ! avidemux ! jpegdec ! videoconvert \\
        ! edgerestore bundle=B ! videoconvert ! jpegenc ! avimux ! filesink location=out.avi

Each buffer is one frame: its rows are read and written through GStreamer's strides (the
buffer's ``GstVideoMeta`` if it has one, else the caps' ``VideoInfo``) and restored by
``Session.run`` in between; BaseTransform copies timestamps and flags to the output buffer.
The session loads when the element starts (READY -> PAUSED), so a bad bundle fails there;
properties are read then. What can go wrong on the user's side (bundle, backend, caps) is
posted on the bus as one GStreamer error, never left as a traceback in the log.

Lateness is BaseTransform's QoS (enabled here; the ``qos`` property turns it off): a buffer
that the sink's QoS events say will be late is dropped before it reaches ``do_transform``.
Frames that arrive at the sink pad and are not restored are the ``dropped`` count.
"""

from __future__ import annotations

import threading
import time
import traceback

import gi
import numpy as np

gi.require_version("Gst", "1.0")
gi.require_version("GstBase", "1.0")
gi.require_version("GstVideo", "1.0")
from gi.repository import GObject, Gst, GstBase, GstVideo  # noqa: E402

from ..backends import NAMES as BACKENDS  # noqa: E402
from ..budget import DEFAULT_BUDGET_MB, MIN_BUDGET_MB  # noqa: E402
from ..errors import EdgeRestoreError  # noqa: E402
from ..stream import StreamStats  # noqa: E402
from . import video  # noqa: E402

if not Gst.is_initialized():  # imported by an application before its own Gst.init
    Gst.init(None)

FACTORY_NAME = "edgerestore"
STATS_MESSAGE = "edgerestore-stats"
STATS_INTERVAL = 1.0  # seconds between stats messages on the bus (and one at EOS)
_TEMPLATE = Gst.Caps.from_string(video.caps_string(video.formats_for(None)))
_READY_ONLY = GObject.ParamFlags.READWRITE | Gst.PARAM_MUTABLE_READY


class EdgeRestoreElement(GstBase.BaseTransform):
    __gtype_name__ = "GstEdgeRestore"
    __gstmetadata__ = (
        "edgerestore image restoration", "Filter/Effect/Video",
        "Restores each frame with an edgerestore bundle (denoise, deblur, de-JPEG) on the CPU: ONNX Runtime or "
        "OpenVINO, tiled with a seamless merge. Colour bundles take RGB, BGR, RGBx, BGRx; gray ones GRAY8 "
        "(put videoconvert before it). Posts '" + STATS_MESSAGE + "' element messages (fps, restored, dropped, "
        "gmac-per-frame) every second and at EOS.",
        "edgerestore")
    __gsttemplates__ = (Gst.PadTemplate.new("sink", Gst.PadDirection.SINK, Gst.PadPresence.ALWAYS, _TEMPLATE),
                        Gst.PadTemplate.new("src", Gst.PadDirection.SRC, Gst.PadPresence.ALWAYS, _TEMPLATE))
    __gproperties__ = {
        "bundle": (str, "Bundle", "Folder of an edgerestore bundle (manifest.json + stage ONNX), from "
                   "`edgerestore export`", None, _READY_ONLY),
        "backend": (str, "Backend", f"One of {', '.join(BACKENDS)} (auto: OpenVINO if installed, else ONNX "
                    "Runtime)", "auto", _READY_ONLY),
        "precision": (str, "Precision", "fp32, fp16 or int8; empty: the best the bundle has", "", _READY_ONLY),
        "min-confidence": (float, "Minimum confidence", "Routed models: take a cheap branch only where the router "
                           "gives it at least this probability (1.0: full network everywhere)", 0.0, 1.0, 0.5,
                           _READY_ONLY),
        "memory-budget": (float, "Memory budget", "MB that frames may take beyond the loaded model (tiles in "
                          "flight, backend batches)", float(MIN_BUDGET_MB), 1e9, float(DEFAULT_BUDGET_MB),
                          _READY_ONLY),
        "threads": (int, "Threads", "Threads of the backend (0: the backend's choice, one per core)", 0, 4096, 0,
                    _READY_ONLY),
        "stats": (Gst.Structure, "Statistics", "'" + STATS_MESSAGE + "': fps (restored frames per second since the "
                  "first frame arrived), restored, dropped (arrived, not restored: QoS), gmac-per-frame (executed), "
                  "full-path-gmac-per-frame, restore-ms (mean per frame), latency-ms (reported in LATENCY queries)",
                  GObject.ParamFlags.READABLE),
    }

    def __init__(self):
        super().__init__()
        self.set_qos_enabled(True)
        self._settings = {"bundle": None, "backend": "auto", "precision": "", "min-confidence": 0.5,
                          "memory-budget": float(DEFAULT_BUDGET_MB), "threads": 0}
        self._session = None
        self._lock = threading.Lock()  # stats: the streaming thread writes, `stats` readers read
        self._reset()
        sink, src = self.get_static_pad("sink"), self.get_static_pad("src")
        sink.add_probe(Gst.PadProbeType.BUFFER, self._arrived)
        sink.add_probe(Gst.PadProbeType.QUERY_DOWNSTREAM | Gst.PadProbeType.PULL, self._caps_answered)
        sink.add_probe(Gst.PadProbeType.EVENT_DOWNSTREAM, self._caps_sent)
        src.add_probe(Gst.PadProbeType.QUERY_UPSTREAM | Gst.PadProbeType.PULL, self._latency_answered)

    def _reset(self) -> None:
        self._stats = StreamStats()
        self._first = self._posted = 0.0
        self._latency = 0  # ns: a frame's restore time, what this element adds to a live pipeline
        self._format = self._info = None
        self._caps_error = False

    # -- properties ---------------------------------------------------------------------------
    def do_get_property(self, prop):
        if prop.name == "stats":
            return self._stats_structure()
        return self._settings[prop.name]

    def do_set_property(self, prop, value):
        self._settings[prop.name] = value

    # -- start / stop: the session ------------------------------------------------------------
    def do_start(self):
        from ..session import Session  # here, not at import: the plugin scanner loads this module

        self._reset()
        s = self._settings
        if not s["bundle"]:
            return self._fail(Gst.ResourceError, Gst.ResourceError.SETTINGS,
                              "no bundle: set the 'bundle' property to a folder made by `edgerestore export`")
        try:
            self._session = Session(s["bundle"], backend=s["backend"], precision=s["precision"] or None,
                                    memory_budget=s["memory-budget"], threads=s["threads"] or None,
                                    min_confidence=s["min-confidence"])
        except EdgeRestoreError as err:
            return self._fail(Gst.ResourceError, Gst.ResourceError.SETTINGS, f"edgerestore: {err}")
        except Exception as err:  # a bug, not the user's: the message still says what failed
            return self._fail(Gst.ResourceError, Gst.ResourceError.FAILED,
                              f"edgerestore: loading '{s['bundle']}' failed: {err}", traceback.format_exc())
        return True

    def do_stop(self):
        if self._session is not None:
            self._session.close()
            self._session = None
        return True

    # -- caps -----------------------------------------------------------------------------------
    def _accepted(self) -> Gst.Caps:
        channels = None if self._session is None else self._session.bundle.channels
        return Gst.Caps.from_string(video.caps_string(video.formats_for(channels)))

    def do_transform_caps(self, direction, caps, filter_):
        # A frame leaves as it came (format, size, rate): the caps of the other pad are these
        # caps, narrowed to the formats that fit the bundle's channels.
        result = caps.intersect(self._accepted())
        if filter_ is not None:
            result = filter_.intersect_full(result, Gst.CapsIntersectMode.FIRST)
        return result

    def _misfit(self, caps: Gst.Caps) -> str | None:
        """Why upstream's ``caps`` cannot reach this element, or None if some of them fit."""
        if caps.is_empty() or caps.is_any() or caps.can_intersect(self._accepted()):
            return None
        if self._session is None:
            return None
        bundle = self._session.bundle
        kind = "gray" if bundle.channels == 1 else "colour"
        taken = ", ".join(video.formats_for(bundle.channels))
        memory = [caps.get_features(i).to_string() for i in range(caps.get_size())]
        if all("memory:SystemMemory" not in m for m in memory):
            return (f"edgerestore takes frames in system memory, not {memory[0]}: put a converter to system "
                    "memory before it (on a Jetson: nvvidconv ! video/x-raw)")
        return (f"edgerestore: caps '{caps.to_string()}' do not fit bundle '{bundle.root}': a {kind} "
                f"({bundle.channels}-channel) model takes video/x-raw {taken}; put videoconvert before edgerestore")

    def _caps_failed(self, caps: Gst.Caps) -> bool:
        """Posts the error of caps that do not fit (once); True if it did."""
        reason = self._misfit(caps)
        if reason is not None and not self._caps_error:
            self._caps_error = True
            self._fail(Gst.CoreError, Gst.CoreError.NEGOTIATION, reason)
        return reason is not None

    # BaseTransform's do_query cannot be overridden from Python (PyGObject finds it ambiguous
    # with Gst.Element's), so both queries are seen by probes after BaseTransform answered them.
    def _caps_answered(self, pad, info):
        query = info.get_query()
        if query.type == Gst.QueryType.CAPS:
            offered = query.parse_caps()  # upstream's caps (the query's filter)
            if offered is not None and query.parse_caps_result().is_empty():
                self._caps_failed(offered)  # upstream can only send what this bundle does not take
        return Gst.PadProbeReturn.OK

    def _caps_sent(self, pad, info):
        # A probe, not do_sink_event: the pad refuses caps it does not accept before the
        # element's event handler would see them.
        event = info.get_event()
        if event.type == Gst.EventType.CAPS:
            self._caps_failed(event.parse_caps())
        return Gst.PadProbeReturn.OK

    def _latency_answered(self, pad, info):
        query = info.get_query()
        if query.type == Gst.QueryType.LATENCY:
            live, low, high = query.parse_latency()
            query.set_latency(live, low + self._latency, high if high == Gst.CLOCK_TIME_NONE else high + self._latency)
        return Gst.PadProbeReturn.OK

    def do_sink_event(self, event):
        if event.type == Gst.EventType.EOS:
            with self._lock:
                self._stats.dropped = self._stats.read - self._stats.restored
            self._post_stats()
        return GstBase.BaseTransform.do_sink_event(self, event)

    def do_get_unit_size(self, caps):
        info = GstVideo.VideoInfo.new_from_caps(caps)
        return info is not None, info.size if info is not None else 0

    def do_set_caps(self, incaps, outcaps):
        info = GstVideo.VideoInfo.new_from_caps(incaps)
        name = info.finfo.name if info is not None else None
        if name not in video.FORMATS or self._session is None:
            self._fail(Gst.CoreError, Gst.CoreError.NEGOTIATION, f"edgerestore: cannot restore caps '{incaps}'")
            return False
        self._info, self._format = info, video.FORMATS[name]
        # A new size re-plans the tiles now, on a blank frame, not on the first real one; its
        # time is the latency this element reports (posted, so a live pipeline re-reads it).
        shape = (info.height, info.width) if self._format.channels == 1 else (info.height, info.width, 3)
        blank = np.full(shape, 128, np.uint8)
        try:
            seconds = self._session.run(blank, self._format.order).seconds
        except EdgeRestoreError as err:
            return self._fail(Gst.StreamError, Gst.StreamError.FAILED, f"edgerestore: {err}")
        self._set_latency(seconds)
        return True

    # -- frames ---------------------------------------------------------------------------------
    def _arrived(self, pad, info):
        # Before the chain function: the previous buffer has been restored or dropped by now.
        with self._lock:
            self._stats.dropped = self._stats.read - self._stats.restored
            self._stats.read += 1
            if not self._first:
                self._first = time.perf_counter()
        return Gst.PadProbeReturn.OK

    def do_transform(self, inbuf, outbuf):
        try:
            result = self._restore(inbuf, outbuf)
        except EdgeRestoreError as err:
            self._fail(Gst.StreamError, Gst.StreamError.FAILED, f"edgerestore: {err}")
            return Gst.FlowReturn.ERROR
        except Exception as err:  # a bug: one line on the bus, the traceback in its debug text
            self._fail(Gst.StreamError, Gst.StreamError.FAILED, f"edgerestore: restoring a frame failed: {err}",
                       traceback.format_exc())
            return Gst.FlowReturn.ERROR
        now = time.perf_counter()
        with self._lock:
            self._stats.add(restored=1, restore_seconds=result.seconds, executed_macs=float(result.macs.sum()),
                            full_macs=result.full_macs * len(result.macs))
            self._stats.seconds = now - self._first
        if result.seconds > 1.25 * self._latency / Gst.SECOND:
            self._set_latency(result.seconds)
        if now - self._posted >= STATS_INTERVAL:
            self._post_stats()
        return Gst.FlowReturn.OK

    def _restore(self, inbuf: Gst.Buffer, outbuf: Gst.Buffer):
        fmt = self._format
        ok_in, src_map = inbuf.map(Gst.MapFlags.READ)
        ok_out, dst_map = outbuf.map(Gst.MapFlags.WRITE)
        try:
            if not (ok_in and ok_out):
                raise EdgeRestoreError("a buffer could not be mapped")
            src_layout, dst_layout = self._layout(inbuf), self._layout(outbuf)
            result = self._session.run(video.pixels(src_map.data, fmt, *src_layout), fmt.order)
            video.pixels(dst_map.data, fmt, *dst_layout)[...] = result.image
            pad = video.padding(dst_map.data, fmt, *dst_layout)
            if pad is not None:
                pad[...] = video.padding(src_map.data, fmt, *src_layout)
            return result
        finally:
            if ok_out:
                outbuf.unmap(dst_map)
            if ok_in:
                inbuf.unmap(src_map)

    def _layout(self, buf: Gst.Buffer) -> tuple[int, int, int, int]:
        """(width, height, stride, offset) of the buffer's pixels: its video meta's rows if it
        has one (an upstream pool's padded rows), else the caps' default strides."""
        meta = GstVideo.buffer_get_video_meta(buf)
        if meta is not None:
            return meta.width, meta.height, meta.stride[0], meta.offset[0]
        return self._info.width, self._info.height, self._info.stride[0], self._info.offset[0]

    def do_propose_allocation(self, decide_query, query):
        # Upstream may hand over buffers with padded rows: _layout reads them through the meta.
        query.add_allocation_meta(GstVideo.video_meta_api_get_type(), None)
        return GstBase.BaseTransform.do_propose_allocation(self, decide_query, query)

    # -- latency, stats, errors -------------------------------------------------------------------
    def _set_latency(self, seconds: float) -> None:
        self._latency = int(seconds * Gst.SECOND)
        self.post_message(Gst.Message.new_latency(self))

    def _stats_structure(self) -> Gst.Structure:
        with self._lock:
            s = self._stats
            frames = max(s.restored, 1)
            structure = Gst.Structure.new_empty(STATS_MESSAGE)
            structure.set_value("fps", float(s.fps))
            structure.set_value("restored", int(s.restored))
            structure.set_value("dropped", int(s.dropped))
            structure.set_value("gmac-per-frame", s.executed_macs / frames / 1e9)
            structure.set_value("full-path-gmac-per-frame", s.full_macs / frames / 1e9)
            structure.set_value("restore-ms", 1e3 * s.restore_seconds / frames)
            structure.set_value("latency-ms", self._latency / Gst.MSECOND)
        return structure

    def _post_stats(self) -> None:
        self._posted = time.perf_counter()
        self.post_message(Gst.Message.new_element(self, self._stats_structure()))

    def _fail(self, domain, code, text: str, debug: str | None = None) -> bool:
        """Post ``text`` as the element's one ERROR message; False (for do_start, set_caps)."""
        self.message_full(Gst.MessageType.ERROR, domain.quark(), int(code), text, debug, __file__, "edgerestore", 0)
        return False

