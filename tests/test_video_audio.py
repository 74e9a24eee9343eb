"""``restore VIDEO -o VIDEO`` on one machine keeps the audio tracks (stream-copied) and the
source's timestamps through PyAV; without PyAV it says in one line that they are dropped."""

from __future__ import annotations

import numpy as np

from av_video import audio_packets, codec_of, decoded, write_video
from edgerestore.runtime import avio
from edgerestore.runtime.session import Session

OPTIONS = ("--backend", "onnxruntime", "--threads", "1")


def restored_reference(bundle, frames: list[np.ndarray]) -> list[np.ndarray]:
    session = Session(bundle, backend="onnxruntime", threads=1)
    return [session.run(frame, "RGB").image for frame in frames]


def test_video_keeps_audio_timestamps_and_pixels(run_cli, small_bundle, tmp_path):
    source = tmp_path / "in.mkv"
    frames = write_video(source)
    stamps, _ = decoded(source)
    sound = audio_packets(source)
    assert len(sound) > 5 and len(set(stamps)) == len(frames)

    result = run_cli("restore", small_bundle, source, "-o", tmp_path / "out.mkv", "--codec", "ffv1", *OPTIONS)
    assert result.exit_code == 0, result.output
    assert "restored 36 of 36 frames" in result.stdout and "warning" not in result.stderr
    ours_stamps, ours = decoded(tmp_path / "out.mkv")
    assert codec_of(tmp_path / "out.mkv") == "ffv1" and ours_stamps == stamps
    for k, (got, want) in enumerate(zip(ours, restored_reference(small_bundle, frames), strict=True)):
        np.testing.assert_array_equal(got, want, err_msg=f"frame {k}")  # FFV1 in RGB: lossless
    assert audio_packets(tmp_path / "out.mkv") == sound

    # The default codec of .mp4 (MPEG-4 part 2, lossy): timestamps and audio still the source's.
    result = run_cli("restore", small_bundle, source, "-o", tmp_path / "out.mp4", *OPTIONS)
    assert result.exit_code == 0, result.output
    assert codec_of(tmp_path / "out.mp4") == "mpeg4" and decoded(tmp_path / "out.mp4")[0] == stamps
    assert audio_packets(tmp_path / "out.mp4") == sound
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mkv", "out.mkv", "out.mp4"]  # no part left


def test_audio_a_container_cannot_hold_is_reported(run_cli, small_bundle, tmp_path):
    write_video(tmp_path / "in.mkv", count=6)
    result = run_cli("restore", small_bundle, tmp_path / "in.mkv", "-o", tmp_path / "out.mov", *OPTIONS)
    assert result.exit_code == 0, result.output
    assert "warning: audio track 1 (flac) cannot be stored in '.mov' and is left out" in result.stderr
    assert len(decoded(tmp_path / "out.mov")[1]) == 6 and audio_packets(tmp_path / "out.mov") == []


def test_frames_option_cuts_the_audio_with_the_video(run_cli, small_bundle, tmp_path):
    write_video(tmp_path / "in.mkv")
    result = run_cli("restore", small_bundle, tmp_path / "in.mkv", "-o", tmp_path / "out.mkv", "--frames", "10",
                     *OPTIONS)
    assert result.exit_code == 0, result.output
    stamps, frames = decoded(tmp_path / "out.mkv")
    assert len(frames) == 10 and stamps[-1] == 0.36
    sound = audio_packets(tmp_path / "out.mkv")
    assert sound == audio_packets(tmp_path / "in.mkv")[:len(sound)] and 0 < sound[-1][0] < 0.4


def test_without_pyav_the_audio_is_dropped_with_a_warning(run_cli, small_bundle, tmp_path, monkeypatch):
    write_video(tmp_path / "in.mkv", count=6)
    monkeypatch.setattr(avio, "available", lambda: None)
    result = run_cli("restore", small_bundle, tmp_path / "in.mkv", "-o", tmp_path / "out.mp4", *OPTIONS)
    assert result.exit_code == 0, result.output
    assert result.stderr.count("warning: the video's audio and timestamps are not kept") == 1
    assert "pip install 'edgerestore[video]'" in result.stderr
    assert len(decoded(tmp_path / "out.mp4")[1]) == 6 and audio_packets(tmp_path / "out.mp4") == []
    result = run_cli("restore", small_bundle, tmp_path / "in.mkv", "-o", tmp_path / "o.mkv", "--codec", "ffv1")
    assert result.exit_code == 1 and result.stderr.startswith("error: --codec picks the encoder")


def test_unknown_codec_is_one_line(run_cli, small_bundle, tmp_path):
    write_video(tmp_path / "in.mkv", count=2)
    result = run_cli("restore", small_bundle, tmp_path / "in.mkv", "-o", tmp_path / "o.mkv", "--codec", "nope")
    assert result.exit_code == 1 and result.stderr == ("error: unknown video encoder 'nope' (FFmpeg's name, "
                                                       "e.g. mpeg4, mjpeg, ffv1, libx264)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mkv"]
