"""``restore --ray`` on a real local Ray cluster (2 CPUs): the same files as ``restore`` on one
machine, metadata kept, a results file to resume from, a worker killed mid-job, a corrupt
image reported with exit status 1; a video split into segments and joined with its audio."""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import ray
from PIL import Image as PILImage

from edgerestore import distributed
from edgerestore.runtime import imageio
from edgerestore.runtime.jobs import RESULTS_NAME

from test_metadata import assert_metadata_kept, write_photo

OPTIONS = ("--backend", "onnxruntime", "--threads", "1")


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs for this module; jobs join it (ray.is_initialized)."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 * 2**20, log_to_driver=False)
    yield
    ray.shutdown()


def records(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / RESULTS_NAME).read_text().splitlines()]


def test_images_as_on_one_machine(run_cli, small_bundle, tmp_path, cluster):
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(3):
        write_photo(folder / f"photo{k}.jpg", k, size=(40 + 8 * k, 56))
    write_photo(folder / "photo3.png", 3)
    PILImage.fromarray(np.random.default_rng(4).integers(0, 65536, (32, 40), dtype=np.uint16)).save(
        folder / "gray16.png")
    rgba = np.random.default_rng(5).integers(0, 256, (36, 30, 4), dtype=np.uint8)
    PILImage.fromarray(rgba).save(folder / "alpha.png")
    names = sorted(p.name for p in folder.iterdir())

    single = run_cli("restore", small_bundle, *sorted(folder.iterdir()), "-o", tmp_path / "single", *OPTIONS)
    assert single.exit_code == 0, single.output
    job = run_cli("restore", small_bundle, folder, "-o", tmp_path / "ray", "--ray", "--gt", folder, *OPTIONS,
                  "--json")
    assert job.exit_code == 0, job.output
    report = json.loads(job.stdout)
    assert report["restored"] == len(names) and report["skipped"] == 0 and not report["failed"]
    assert report["actors"] == 2 and report["gmac_per_image"] > 0 and report["psnr"] > 20

    for name in names:
        ours, theirs = imageio.read_image(tmp_path / "ray" / name), imageio.read_image(tmp_path / "single" / name)
        np.testing.assert_array_equal(ours.pixels, theirs.pixels, err_msg=name)
        assert (ours.alpha is None) == (theirs.alpha is None)
        if name.startswith("photo"):
            assert_metadata_kept(tmp_path / "ray" / name)
    lines = records(tmp_path / "ray")
    assert sorted(Path(r["source"]).name for r in lines) == names
    for record in lines:
        output = Path(record["output"])
        assert record["status"] == "ok" and output.parent == (tmp_path / "ray").resolve()
        assert record["sha256"] == hashlib.sha256(output.read_bytes()).hexdigest()
        assert record["gmac"] > 0 and record["seconds"] > 0 and record["psnr"] > 20
        assert record["branches"] == {}  # DnCNN has no switches

    # A second run over the same job restores nothing and says so; a changed setting redoes it.
    before = {n: (tmp_path / "ray" / n).stat().st_mtime_ns for n in names}
    again = run_cli("restore", small_bundle, folder, "-o", tmp_path / "ray", "--ray", *OPTIONS)
    assert again.exit_code == 0, again.output
    assert again.stdout.startswith(f"nothing to restore: all {len(names)} image(s) are done")
    assert {n: (tmp_path / "ray" / n).stat().st_mtime_ns for n in names} == before
    assert len(records(tmp_path / "ray")) == len(names)
    other = run_cli("restore", small_bundle, folder, "-o", tmp_path / "ray", "--ray", *OPTIONS, "--tile", "24",
                    "--json")
    assert other.exit_code == 0 and json.loads(other.stdout)["restored"] == len(names), other.output


def test_worker_killed_and_corrupt_image(run_cli, small_bundle, tmp_path, cluster):
    """A worker process is killed after the first items are back: the job still restores every
    image exactly once, leaves no partial file, and reports the corrupt one."""
    folder, output = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    count = 24
    for k in range(count):
        PILImage.fromarray(np.random.default_rng(k).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(
            folder / f"img{k:02d}.png")
    (folder / "broken.png").write_bytes((folder / "img00.png").read_bytes()[:300])
    killed: dict = {}

    def kill_a_worker():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            done = len(list(output.glob("img*.png"))) if output.is_dir() else 0
            workers = [p for p in psutil.Process().children(recursive=True) if "MapWorker" in _title(p)]
            if done and workers:
                killed.update(pid=workers[0].pid, done_before=done)
                workers[0].send_signal(signal.SIGKILL)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_worker)
    killer.start()
    report = distributed.restore(small_bundle, [folder], output, backend="onnxruntime", threads=1)
    killer.join()
    assert killed and killed["done_before"] < count, killed  # killed mid-job
    assert report.restored == count and list(report.failed) == [str((folder / "broken.png").resolve())]
    assert "truncated or corrupt" in report.failed[str((folder / "broken.png").resolve())]
    entries = sorted(p.name for p in output.iterdir())
    assert entries == sorted([f"img{k:02d}.png" for k in range(count)] + [RESULTS_NAME])  # no .tmp- file left
    ok = [r["source"] for r in records(output) if r["status"] == "ok"]
    assert sorted(ok) == sorted(set(ok)) and len(ok) == count
    for k in range(count):
        imageio.read_image(output / f"img{k:02d}.png")  # every output whole

    # The rerun skips the finished images, retries the corrupt one, and exits 1 again.
    rerun = run_cli("restore", small_bundle, folder, "-o", output, "--ray", *OPTIONS)
    assert rerun.exit_code == 1, rerun.output
    assert "failed: cannot decode" in rerun.stderr and "broken.png" in rerun.stderr
    assert f"{count} done before; 1 failed" in rerun.stdout and "Traceback" not in rerun.output


def _title(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def test_ray_options_need_ray(run_cli, small_bundle, tmp_path):
    result = run_cli("restore", small_bundle, tmp_path, "-o", tmp_path / "out", "--gt", tmp_path)
    assert result.exit_code == 1 and result.stderr == "error: --gt needs --ray\n"


def test_actor_that_fits_nowhere_is_one_line(run_cli, small_bundle, tmp_path, cluster):
    """An actor's reservation (memory budget + stage files) that no node holds is an error
    before the job starts, not a pool waiting for actors that never start."""
    write_photo(tmp_path / "a.png", 0)
    result = run_cli("restore", small_bundle, tmp_path / "a.png", "-o", tmp_path / "out", "--ray",
                     "--memory-budget", str(10**9))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.startswith("error: no node of the Ray cluster has 1 CPU(s), 1000000000 MB of memory")


def test_video_as_on_one_machine_with_audio(run_cli, small_bundle, tmp_path, cluster):
    """A lossless video (keyframe every 8 frames: 5 segments of 8, 8, 8, 8, 4 frames) beside an
    image and an unreadable video: each frame once, in order, the single-machine pixels (FFV1
    in RGB is lossless), the source's timestamps and audio packets; the bad video is reported."""
    from av_video import audio_packets, codec_of, decoded, write_video  # skips without PyAV (the video extra)

    frames = write_video(tmp_path / "clip.mkv", count=36, gop=8)
    write_photo(tmp_path / "photo.png", 0)
    (tmp_path / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    single = run_cli("restore", small_bundle, tmp_path / "clip.mkv", "-o", tmp_path / "single.mkv", "--codec", "ffv1",
                     *OPTIONS)
    assert single.exit_code == 0, single.output
    out = tmp_path / "ray"
    inputs = [tmp_path / "clip.mkv", tmp_path / "photo.png", tmp_path / "broken.mp4"]
    job = run_cli("restore", small_bundle, *inputs, "-o", out, "--ray", "--segment-frames", "8", "--codec", "ffv1",
                  *OPTIONS, "--json")
    assert job.exit_code == 1, job.output
    report = json.loads(job.stdout)
    assert (report["items"], report["videos"], report["restored"], report["segments"]) == (3, 2, 2, 5)
    assert report["frames"] == len(frames) and list(report["failed"]) == [str((tmp_path / "broken.mp4").resolve())]
    assert "failed: cannot open video" in job.stderr and "broken.mp4" in job.stderr and "Traceback" not in job.output

    stamps, pixels = decoded(out / "clip.mkv")
    want_stamps, want = decoded(tmp_path / "single.mkv")
    assert stamps == want_stamps == decoded(tmp_path / "clip.mkv")[0]  # every frame once, in order, same times
    assert codec_of(out / "clip.mkv") == "ffv1" and len(pixels) == len(frames)
    for k, (ours, theirs) in enumerate(zip(pixels, want, strict=True)):
        np.testing.assert_array_equal(ours, theirs, err_msg=f"frame {k}")
    assert audio_packets(out / "clip.mkv") == audio_packets(tmp_path / "clip.mkv")
    assert sorted(p.name for p in out.iterdir()) == sorted(["clip.mkv", "photo.png", RESULTS_NAME])  # parts gone

    lines = [r for r in records(out) if r["status"] == "ok"]
    segments = [r for r in lines if "segment" in r]
    assert sorted(r["segment"] for r in segments) == list(range(5))
    assert sorted(r["frames"] for r in segments) == [4, 8, 8, 8, 8]
    video = next(r for r in lines if r.get("kind") == "video")
    assert video["segments"] == 5 and video["frames"] == len(frames) and video["gmac"] > 0
    assert video["sha256"] == hashlib.sha256((out / "clip.mkv").read_bytes()).hexdigest()

    # A second run over the same job restores nothing and says so.
    before = (out / "clip.mkv").stat().st_mtime_ns
    again = run_cli("restore", small_bundle, *inputs[:2], "-o", out, "--ray", "--segment-frames", "8", "--codec",
                    "ffv1", *OPTIONS)
    assert again.exit_code == 0, again.output
    assert again.stdout.startswith("nothing to restore: all 2 item(s) (1 image(s), 1 video(s)) are done")
    assert (out / "clip.mkv").stat().st_mtime_ns == before


def test_video_job_resumes_from_its_finished_segments(small_bundle, tmp_path, cluster):
    """A job stopped after two segments: the rerun restores only the other three, then joins."""
    from av_video import decoded, write_video

    write_video(tmp_path / "clip.mkv", count=36, gop=8)
    out = tmp_path / "out"
    options = dict(backend="onnxruntime", threads=1, segment_frames=8, codec="ffv1")

    def stop_after_two(record):
        if sum(r["status"] == "ok" for r in records(out)) >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distributed.restore(small_bundle, [tmp_path / "clip.mkv"], out, progress=stop_after_two, **options)
    done = [r["segment"] for r in records(out) if r["status"] == "ok"]
    assert len(done) == 2 and not (out / "clip.mkv").exists()
    report = distributed.restore(small_bundle, [tmp_path / "clip.mkv"], out, **options)
    assert report.restored == 1 and report.skipped == 0 and report.segments == 5 - len(done)
    stamps, pixels = decoded(out / "clip.mkv")
    assert stamps == decoded(tmp_path / "clip.mkv")[0] and len(pixels) == 36
    assert sorted(p.name for p in out.iterdir()) == sorted(["clip.mkv", RESULTS_NAME])
