"""What threads share: a session (internally locked), stream counters, OpenVINO infer
requests, and the process umask (never changed to read it)."""

from __future__ import annotations

import os
import sys
import threading

import numpy as np
import pytest

from edgerestore.runtime.session import Session


def test_one_session_serves_several_threads_one_frame_at_a_time(small_bundle):
    """The thread contract: a session is internally locked. Frames from several threads all
    come back right (each its own result, as restored alone) and never run interleaved."""
    session = Session(small_bundle, backend="onnxruntime", tile=32, overlap=8)
    rng = np.random.default_rng(0)
    frames = [(rng.random((48 + 8 * k, 56, 1)) * 255).astype(np.uint8) for k in range(4)]
    alone = [session.restore(frame) for frame in frames]
    inside, overlap = [0], []

    def stage(*_):  # runs inside a frame; two frames at once would see each other here
        inside[0] += 1
        overlap.append(inside[0])
        inside[0] -= 1

    session.stage_hooks.append(stage)
    results, failures = {}, []

    def work(k):
        try:
            for _ in range(3):
                results.setdefault(k, []).append(session.restore(frames[k]))
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            failures.append(err)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures
    assert max(overlap) == 1
    for k, outs in results.items():
        assert len(outs) == 3 and all(np.array_equal(out, alone[k]) for out in outs)


def test_stream_counters_add_up_across_threads():
    from edgerestore.runtime.stream import StreamStats

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as CPython allows: races show
    try:
        stats = StreamStats()
        threads = [threading.Thread(target=lambda: [stats.add(dropped=1, read=1) for _ in range(20000)])
                   for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(previous)
    assert stats.dropped == stats.read == 80000


def test_an_openvino_stage_called_from_two_threads_gives_each_its_own_result(small_bundle):
    pytest.importorskip("openvino", reason="OpenVINO not installed")
    from edgerestore.runtime.backends import load_stage
    from edgerestore.runtime.bundle import Bundle

    stage = load_stage("openvino", Bundle(small_bundle).stage_path("main", "fp32"))
    rng = np.random.default_rng(1)
    inputs = [rng.random((2, 1, 48, 48), dtype=np.float32) for _ in range(8)]
    name = stage.input_names[0]
    expected = [stage({name: x}) for x in inputs]
    failures, results = [], {}

    def work(offset):
        try:
            for _ in range(5):
                for i in range(offset, len(inputs), 2):
                    results.setdefault(i, []).append(stage({name: inputs[i]}))
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            failures.append(err)

    threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    for i, outs in results.items():
        for out in outs:
            for key in out:
                np.testing.assert_array_equal(out[key], expected[i][key])


def test_atomic_writes_never_set_the_umask(tmp_path, monkeypatch):
    from edgerestore.runtime import atomic

    previous = os.umask(0o027)
    try:
        atomic.process_umask()  # where /proc cannot tell, the one read happens here

        def forbidden(mask):
            raise AssertionError("os.umask called: another thread's files would get the wrong permissions")

        monkeypatch.setattr(os, "umask", forbidden)
        with atomic.atomic_file(tmp_path / "a.txt") as tmp:
            tmp.write_text("x")
        with atomic.atomic_directory(tmp_path / "d") as tmp:
            (tmp / "f").write_text("y")
    finally:
        monkeypatch.undo()
        os.umask(previous)
    if sys.platform.startswith("linux"):
        assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
        assert (tmp_path / "d").stat().st_mode & 0o777 == 0o750


def test_opencv_stays_silent_until_the_last_overlapping_block_ends():
    """Two threads' silenced blocks that overlap without nesting: the first to end must not
    restore the level while the other still decodes, nor the last leave OpenCV silent."""
    cv2 = pytest.importorskip("cv2", reason="OpenCV not installed")
    from edgerestore.runtime.imageio import opencv_silenced

    logging = cv2.utils.logging
    previous = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_WARNING)
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        with opencv_silenced():
            first_in.set()
            assert second_in.wait(10)
        first_out.set()

    def second():
        assert first_in.wait(10)
        with opencv_silenced():
            second_in.set()
            assert first_out.wait(10)
            seen["inside after the first ended"] = logging.getLogLevel()

    try:
        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert seen == {"inside after the first ended": logging.LOG_LEVEL_SILENT}
        assert logging.getLogLevel() == logging.LOG_LEVEL_WARNING
    finally:
        logging.setLogLevel(previous)
