"""Calibration measures INT8 in the Q/DQ graph's exact float arithmetic, never in ONNX
Runtime's fused integer kernels (runtime/backends/qdq_reference_backend.py).

Every ONNX Runtime session the export creates is profiled: the kernels it ran are in the
profile, by operator name. The control shows the detector works: the deployment backend
``onnxruntime`` does run an integer kernel on the same INT8 file.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from edgerestore.runtime.backends.onnxruntime_backend import INTEGER_KERNELS
from test_int8_export import save_tiny_dncnn, write_images


class ProfiledSessions:
    """Replaces ``onnxruntime.InferenceSession``: every session created profiles its kernels."""

    def __init__(self, monkeypatch, folder):
        self.sessions, self.folder = [], folder
        original, sessions = ort.InferenceSession, self.sessions

        class Profiled(original):
            def __init__(self, model, sess_options=None, *args, **kwargs):
                options = sess_options or ort.SessionOptions()
                options.enable_profiling = True
                options.profile_file_prefix = str(folder / f"session{len(sessions)}")
                super().__init__(model, options, *args, **kwargs)
                sessions.append(self)

        monkeypatch.setattr(ort, "InferenceSession", Profiled)

    def kernels(self) -> set[str]:
        """Operator names of every kernel any of the sessions ran."""
        ran = set()
        for session in self.sessions:
            for event in json.loads(open(session.end_profiling()).read()):
                if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
                    ran.add(event["args"]["op_name"])
        return ran


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_tiny_dncnn(tmp_path_factory.mktemp("weights") / "dncnn.pth")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("data") / "calib", 5, (64, 64))


def test_every_calibration_measurement_uses_the_float_qdq_arithmetic(weights, images, tmp_path, monkeypatch):
    """Ranges, bias correction, the sensitivity search and the reference accuracy rows: no
    session of the export runs an integer kernel, and INT8 was measured (QuantizeLinear ran)."""
    from edgerestore.calibration import FolderSplit, Int8Options
    from edgerestore.export import export_bundle

    profiled = ProfiledSessions(monkeypatch, tmp_path)
    split = FolderSplit(images, "gaussian:25", count=3, holdout=2, crop=48)
    options = Int8Options(split, max_drop=0.5, report_backends=())
    report = export_bundle("dncnn", tmp_path / "b", weights, int8=options).int8
    ran = profiled.kernels()
    assert len(profiled.sessions) > 5  # calibrator, bias correction, scoring
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ran
    assert not ran & INTEGER_KERNELS, sorted(ran & INTEGER_KERNELS)
    assert report.search is not None and report.search.steps
    assert {s.backend for s in report.scores} == {"qdq-reference"}


def test_the_deployment_backend_runs_integer_kernels_the_reference_does_not(weights, images, tmp_path, monkeypatch):
    """The control: the same INT8 file on ``onnxruntime`` runs fused integer kernels (so the
    profile would show them above), on ``qdq-reference`` float convolutions between Q/DQ."""
    from edgerestore.calibration import FolderSplit, Int8Options
    from edgerestore.export import export_bundle
    from edgerestore.runtime.bundle import Bundle
    from edgerestore.runtime.session import Session

    split = FolderSplit(images, "gaussian:25", count=3, holdout=2, crop=48)
    export_bundle("dncnn", tmp_path / "b", weights, int8=Int8Options(split, report_backends=()))
    frame = np.random.default_rng(0).random((40, 56), dtype=np.float32)
    for backend, integer in (("onnxruntime", True), ("qdq-reference", False)):
        profiled = ProfiledSessions(monkeypatch, tmp_path / backend)
        (tmp_path / backend).mkdir()
        session = Session(Bundle(tmp_path / "b"), backend=backend, precision="int8")
        session.run(frame)
        ran = profiled.kernels()
        session.close()
        monkeypatch.undo()
        assert "QuantizeLinear" in ran
        assert bool(ran & INTEGER_KERNELS) == integer, (backend, sorted(ran))


def test_report_adds_each_deployment_backend_beside_the_reference(weights, images, tmp_path):
    from edgerestore.calibration import FolderSplit, Int8Options
    from edgerestore.calibration.report import render
    from edgerestore.export import export_bundle
    from edgerestore.runtime import backends

    split = FolderSplit(images, "gaussian:25", count=3, holdout=2, crop=48)
    report = export_bundle("dncnn", tmp_path / "b", weights, int8=Int8Options(split)).int8
    rows = [(s.backend, s.precision) for s in report.scores]
    expected = [("qdq-reference", "fp32"), ("qdq-reference", "int8")]
    for backend in backends.available(deployment=True):
        expected += [(backend, "fp32"), (backend, "int8")]
    assert rows == expected
    text = render(report)
    for backend in dict.fromkeys(b for b, _ in expected):
        assert f"{backend}: INT8 - FP32 = " in text
    # FP32 is FP32 whatever fuses Q/DQ: the reference's FP32 row is ONNX Runtime's, bit for bit
    by = {(s.backend, s.precision): s for s in report.scores}
    if ("onnxruntime", "fp32") in by:
        assert by[("qdq-reference", "fp32")].per_image == by[("onnxruntime", "fp32")].per_image
