"""Streams: video / camera / folder in, video / folder out, concurrent with bounded queues.
Order, loss (none without --realtime, counted with it), corrupt frames, size changes and
sources that cannot be opened."""

import json
import threading
import time

import cv2
import numpy as np
import pytest

from edgerestore.runtime.session import Session
from edgerestore.runtime.stream import Frame, Pipeline, Skipped, StreamStats, restore_frames
from test_bad_input import assert_clean_failure

LEVELS = [10 + 15 * i for i in range(16)]  # frame i is flat gray at LEVELS[i]: its mean tells its index


def flat(level: int, size=(48, 64), channels=3) -> np.ndarray:
    return np.full((*size, channels), level, np.uint8)


def write_video(path, levels, size=(48, 64)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (size[1], size[0]))
    for level in levels:
        writer.write(flat(level, size))
    writer.release()
    return path


def frame_index(pixels: np.ndarray) -> int:
    return int(np.argmin([abs(float(pixels.mean()) - level) for level in LEVELS]))


def read_video(path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


@pytest.fixture(scope="module")
def session(small_bundle):
    return Session(small_bundle, backend="onnxruntime")


def test_video_frames_keep_their_order_and_none_is_lost(run_cli, small_bundle, tmp_path):
    video = write_video(tmp_path / "in.avi", LEVELS[:12])
    result = run_cli("restore", small_bundle, video, "-o", tmp_path / "frames", "--json", "--queue", "2")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["frames"], summary["restored"], summary["dropped"], summary["skipped"]) == (12, 12, 0, [])
    names = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert names == [f"frame_{i:06d}.png" for i in range(12)]
    assert [frame_index(cv2.imread(str(tmp_path / "frames" / n))) for n in names] == list(range(12))

    result = run_cli("restore", small_bundle, video, "-o", tmp_path / "out.mp4")
    assert result.exit_code == 0, result.output
    assert "restored 12 of 12 frames" in result.stdout
    assert [frame_index(f) for f in read_video(tmp_path / "out.mp4")] == list(range(12))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames", "in.avi", "out.mp4"]  # no temporary left


def test_api_yields_numpy_frames_in_order_to_a_slow_consumer(session):
    frames = [flat(level, channels=1)[..., 0] for level in LEVELS]  # HxW uint8 in
    out = []
    for restored in restore_frames(session, frames, queue_size=2):
        time.sleep(0.01)
        out.append(restored)
    assert all(o.shape == (48, 64) and o.dtype == np.uint8 for o in out)
    assert [frame_index(o) for o in out] == list(range(len(LEVELS)))


def test_api_keeps_16_bit_and_alpha(session):
    rgba = np.dstack([flat(100, channels=3).astype(np.uint16) * 257, np.full((48, 64), 4242, np.uint16)])
    (out,) = restore_frames(session, [rgba])
    assert out.dtype == np.uint16 and out.shape == (48, 64, 4)
    assert np.array_equal(out[..., 3], rgba[..., 3]) and abs(float(out[..., :3].mean()) - 100 * 257) < 8 * 257


def test_queues_bound_the_frames_in_flight(session):
    pulled = 0
    lead = []

    def source():
        nonlocal pulled
        for i in range(40):
            pulled += 1
            yield Frame(i, flat(LEVELS[i % 16]))

    queue_size = 2
    pipeline = Pipeline(session, queue_size=queue_size)
    for consumed, _ in enumerate(pipeline.run(source()), start=1):
        time.sleep(0.01)  # the consumer is the bottleneck: the reader must wait, not read ahead
        lead.append(pulled - consumed)
    # Two queues, plus one frame held by each of the reader, the restorer and the consumer.
    assert max(lead) <= 2 * queue_size + 3
    assert pipeline.stats.restored == 40 and pipeline.stats.dropped == 0


def test_realtime_drops_late_frames_for_a_slow_consumer_and_counts_them(session):
    pipeline = Pipeline(session, queue_size=2, realtime_fps=200, paced=True)
    source = (Frame(i, flat(LEVELS[i % 16])) for i in range(60))
    delivered = []
    for frame in pipeline.run(source):
        time.sleep(0.03)  # 6 frame intervals per frame
        delivered.append(frame.index)
    stats = pipeline.stats
    assert stats.dropped and len(delivered) + stats.dropped == 60
    assert delivered == sorted(set(delivered))  # in order, none twice


def test_realtime_on_the_command_line_reports_drops(run_cli, small_bundle, tmp_path):
    folder = tmp_path / "seq"
    folder.mkdir()
    for i in range(30):
        cv2.imwrite(str(folder / f"{i:03d}.png"), flat(LEVELS[i % 16]))
    # 1000 fps leaves 1 ms per frame: restoring one takes longer, so most frames are late.
    result = run_cli("restore", small_bundle, folder, "-o", tmp_path / "out", "--realtime", "1000", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["dropped"] > 0 and summary["restored"] + summary["dropped"] == 30
    assert len(list((tmp_path / "out").iterdir())) == summary["restored"]


def test_corrupt_image_in_a_folder_is_reported_and_skipped(run_cli, small_bundle, tmp_path):
    folder = tmp_path / "seq"
    folder.mkdir()
    for i in range(5):
        cv2.imwrite(str(folder / f"{i}.png"), flat(LEVELS[i]))
    broken = folder / "2.png"
    broken.write_bytes(broken.read_bytes()[:60])
    result = run_cli("restore", small_bundle, folder, "-o", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    assert "warning: frame 2: " in result.stderr and "2.png" in result.stderr
    summary = json.loads(result.stdout)
    assert [s["index"] for s in summary["skipped"]] == [2] and summary["restored"] == 4
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.png", "1.png", "3.png", "4.png"]


def test_corrupt_video_frame_is_reported_and_skipped(run_cli, small_bundle, tmp_path):
    video = write_video(tmp_path / "in.avi", LEVELS[:10])
    data = bytearray(video.read_bytes())
    starts = [i for i in range(len(data) - 2) if data[i:i + 3] == b"\xff\xd8\xff"]  # one JPEG per frame
    assert len(starts) == 10
    data[starts[4]:starts[5] - 8] = bytes(starts[5] - 8 - starts[4])  # frame 4's JPEG zeroed
    video.write_bytes(bytes(data))
    result = run_cli("restore", small_bundle, video, "-o", tmp_path / "frames", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [(s["index"], s["kind"]) for s in summary["skipped"]] == [(4, "corrupt")]
    assert "warning: frame 4: video frame could not be decoded" in result.stderr
    names = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert names == [f"frame_{i:06d}.png" for i in (0, 1, 2, 3, 5, 6, 7, 8, 9)]
    assert [frame_index(cv2.imread(str(tmp_path / "frames" / n))) for n in names] == [0, 1, 2, 3, 5, 6, 7, 8, 9]


def test_frame_size_change_mid_stream(run_cli, small_bundle, tmp_path):
    """Tiles are planned per frame, so a new size just works; a video file has one frame
    size, so there frames of another size are scaled to the first one's (and reported)."""
    folder = tmp_path / "seq"
    folder.mkdir()
    sizes = [(48, 64), (48, 64), (60, 80), (60, 80), (48, 64)]
    for i, size in enumerate(sizes):
        cv2.imwrite(str(folder / f"{i}.png"), flat(LEVELS[i], size))
    result = run_cli("restore", small_bundle, folder, "-o", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [c["index"] for c in summary["size_changes"]] == [2, 4] and summary["restored"] == 5
    assert summary["size_changes"][0] == {"index": 2, "from": [64, 48], "to": [80, 60]}
    assert [cv2.imread(str(tmp_path / "out" / f"{i}.png")).shape[:2] for i in range(5)] == sizes
    assert "size changes from 64x48 to 80x60" in result.stderr

    result = run_cli("restore", small_bundle, folder, "-o", tmp_path / "out.avi")
    assert result.exit_code == 0, result.output
    assert "scaled to the video's 64x48" in result.stderr
    frames = read_video(tmp_path / "out.avi")
    assert len(frames) == 5 and {f.shape[:2] for f in frames} == {(48, 64)}
    assert [frame_index(f) for f in frames] == list(range(5))


def test_unreadable_video_is_one_clear_error(run_cli, small_bundle, tmp_path):
    garbage = tmp_path / "broken.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    result = run_cli("restore", small_bundle, garbage, "-o", tmp_path / "out.mp4")
    assert_clean_failure(result, "cannot open video", "broken.mp4")
    assert_clean_failure(run_cli("restore", small_bundle, tmp_path / "missing.avi", "-o", tmp_path / "o.mp4"),
                         "missing.avi", "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.mp4"]


def test_camera_that_cannot_be_opened(run_cli, small_bundle, tmp_path):
    result = run_cli("restore", small_bundle, "63", "-o", tmp_path / "out.mp4")
    assert_clean_failure(result, "cannot open camera '63'")
    assert list(tmp_path.iterdir()) == []


def test_gstreamer_pipeline_without_gstreamer_support(run_cli, small_bundle, tmp_path):
    if cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
        pytest.skip("this OpenCV has GStreamer: the message for OpenCV builds without it cannot be shown")
    result = run_cli("restore", small_bundle, "videotestsrc num-buffers=5 ! videoconvert", "-o", tmp_path / "o.mp4")
    assert_clean_failure(result, "no GStreamer support")


def test_a_failure_in_the_restore_thread_is_one_line_and_leaves_no_video(run_cli, small_bundle, tmp_path):
    video = write_video(tmp_path / "in.avi", LEVELS[:3])
    result = run_cli("restore", small_bundle, video, "-o", tmp_path / "out.mp4", "--tile", "96", "--overlap", "8")
    assert_clean_failure(result, "smaller than the 96x96 tile")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.avi"]


def test_stream_output_must_be_a_folder_or_a_video(run_cli, small_bundle, tmp_path):
    video = write_video(tmp_path / "in.avi", LEVELS[:2])
    assert_clean_failure(run_cli("restore", small_bundle, video, "-o", tmp_path / "x.png"), "not the image file")
    assert_clean_failure(run_cli("restore", small_bundle, video, tmp_path / "in.avi", "-o", tmp_path / "o"),
                         "must be the only input")


def test_skipped_items_from_a_source_and_stats_of_the_api(session):
    stats = StreamStats()
    source = [Frame(0, flat(LEVELS[0])), Skipped(1, "unreadable"), Frame(2, flat(LEVELS[2]))]
    pipeline = Pipeline(session)
    assert [f.index for f in pipeline.run(source)] == [0, 2]
    assert [s.index for s in pipeline.stats.skipped] == [1] and pipeline.stats.corrupt == 1
    list(restore_frames(session, [flat(LEVELS[0])] * 3, stats=stats))
    assert stats.restored == 3 and stats.fps > 0
    assert not [t for t in threading.enumerate() if t.name.startswith("edgerestore-")]  # threads joined


def test_frames_option_stops_a_stream_early(run_cli, small_bundle, tmp_path):
    video = write_video(tmp_path / "in.avi", LEVELS[:12])
    result = run_cli("restore", small_bundle, video, "-o", tmp_path / "out.avi", "--frames", "5", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["restored"] == 5
    assert [frame_index(f) for f in read_video(tmp_path / "out.avi")] == list(range(5))
