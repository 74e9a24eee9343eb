"""`edgerestore profile`: the report's keys, that its stage times are the calls that run,
routing shares, tegrastats sampling (with a stand-in tegrastats) and bad input."""

import json
import os
import stat
import time

import cv2
import numpy as np
import pytest

from edgerestore.runtime.profiler import profile
from edgerestore.runtime.session import Session
from test_bad_input import assert_clean_failure
from test_tegrastats import JP6_ORIN_NX, JP6_ORIN_NX_LOAD

TOP_KEYS = {"bundle", "model", "frame", "size", "iterations", "warmup", "min_confidence", "route_policy", "host",
            "runs"}
RUN_KEYS = {"backend", "precision", "mode", "memory_budget_mb", "frames", "latency_ms", "fps",
            "megapixels_per_second", "stages", "tiles_per_frame", "backend_calls_per_frame", "buckets",
            "gmac_per_frame", "full_path_gmac_per_frame", "mac_ratio", "executed_gmac_per_second", "branch_share",
            "branch_share_per_switch", "memory_mb", "spill_per_frame", "telemetry"}
LATENCY_KEYS = {"p50", "p90", "p99", "mean", "min", "max"}


@pytest.fixture(scope="module")
def routed_bundle(tmp_path_factory):
    """A tiny Path-Restore (16 features, random weights): 15 stages, 6 switches."""
    import torch

    from edgerestore.export import write_bundle
    from edgerestore.models import PathRestore

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("bundles") / "pathrestore_tiny"
    write_bundle(PathRestore(features=16).eval(), "pathrestore", out)
    return out


def test_profile_json_keys_and_plot_for_two_backends(run_cli, small_bundle, tmp_path):
    out, picture = tmp_path / "profile.json", tmp_path / "latency.png"
    result = run_cli("profile", small_bundle, "--size", "80x60", "--iterations", "4", "--warmup", "1",
                     "--backend", "onnxruntime", "--backend", "openvino", "--json", out, "--plot", picture)
    assert result.exit_code == 0, result.output
    assert "end-to-end" in result.stdout and "onnxruntime fp32" in result.stdout  # the table
    report = json.loads(out.read_text())
    assert set(report) == TOP_KEYS
    assert report["size"] == [80, 60] and report["model"] == "dncnn" and report["iterations"] == 4
    assert set(report["host"]) == {"system", "machine", "cpus", "jetson", "tegrastats"}
    assert [r["backend"] for r in report["runs"]] == ["onnxruntime", "openvino"]
    for run in report["runs"]:
        assert set(run) == RUN_KEYS and run["frames"] == 4 and run["telemetry"] is None
        assert set(run["latency_ms"]) == LATENCY_KEYS
        assert run["latency_ms"]["p50"] <= run["latency_ms"]["p90"] <= run["latency_ms"]["p99"]
        names = [s["name"] for s in run["stages"]]
        assert names == ["tiles.extract", "main", "tiles.merge", "host"]
        main = run["stages"][1]
        assert run["backend_calls_per_frame"] == main["calls_per_frame"] >= 1 and run["memory_budget_mb"] == 1024
        assert 0 < run["buckets"]["occupancy"] <= 1 and set(run["buckets"]["calls_per_frame"]) == {"main"}
        assert run["executed_gmac_per_second"] == pytest.approx(
            run["gmac_per_frame"] / (run["latency_ms"]["mean"] / 1000), rel=1e-2)
        for stage in run["stages"]:
            assert set(stage) == {"name", "calls_per_frame", "latency_ms", "share"}
            assert set(stage["latency_ms"]) == LATENCY_KEYS
        assert sum(s["share"] for s in run["stages"]) == pytest.approx(1.0, abs=1e-3)  # the rows add up to the frame
        assert run["fps"] == pytest.approx(1000 / run["latency_ms"]["mean"], rel=1e-3)
        assert run["megapixels_per_second"] == pytest.approx(run["fps"] * 80 * 60 / 1e6)
        assert run["gmac_per_frame"] == pytest.approx(run["full_path_gmac_per_frame"]) and run["mac_ratio"] == 1.0
        assert run["branch_share"] == {} and run["tiles_per_frame"] == 2.0  # the tile shrinks to 60: 2 across
        assert run["memory_mb"]["peak_rss"] >= run["memory_mb"]["rss_after_warmup"] > 0
        assert run["spill_per_frame"] == {"mb": 0.0, "seconds": 0.0}  # no vote
    image = cv2.imread(str(picture))
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 100


def test_stage_times_are_the_backend_calls_that_run(small_bundle):
    """The profiler reads the session's own hooks: a stage made 20 ms slower per call shows
    20 ms more per call, with exactly the calls the session made, in the bucket sizes it used."""
    session = Session(small_bundle, backend="onnxruntime", tile=32, overlap=8, memory_budget=64)
    real = session.runners["main"]
    calls = []

    def slow(feeds):
        calls.append(len(next(iter(feeds.values()))))
        time.sleep(0.02)
        return real(feeds)

    session.runners["main"] = slow
    frame = (np.random.default_rng(0).random((56, 56, 1)) * 255).astype(np.uint8)  # 4 tiles of 32
    report = profile(session, frame, iterations=3, warmup=0).report
    main = next(s for s in report["stages"] if s["name"] == "main")
    per_frame = len(calls) / 3
    assert main["calls_per_frame"] == per_frame and report["backend_calls_per_frame"] == per_frame
    assert sum(int(size) * n for size, n in report["buckets"]["calls_per_frame"]["main"].items()) == sum(calls) / 3
    assert main["latency_ms"]["min"] >= 20 * per_frame and report["latency_ms"]["min"] >= main["latency_ms"]["min"]
    assert not session.stage_hooks and not session.phase_hooks  # detached afterwards


@pytest.mark.parametrize("confidence, bypass", [("0", 1.0), ("1", 0.0)])
def test_branch_shares_and_compute_of_a_routed_model(run_cli, routed_bundle, confidence, bypass):
    result = run_cli("profile", routed_bundle, "--size", "120x100", "--iterations", "2", "--warmup", "0",
                     "--backend", "onnxruntime", "--min-confidence", confidence, "--json", "-")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # --json -: the report alone on stdout
    (run,) = report["runs"]
    assert report["min_confidence"] == float(confidence)
    assert run["branch_share"] == {"bypass": bypass, "complex": 1.0 - bypass}
    assert set(run["branch_share_per_switch"]) == {f"block{i}" for i in range(6)}
    assert run["tiles_per_frame"] == 6.0  # 63x63 tiles, stride 53: 3 across, 2 down
    assert (run["mac_ratio"] < 0.6) if bypass else (run["mac_ratio"] == 1.0)
    names = {s["name"] for s in run["stages"]}
    assert {"head", "pathfinder", "block0.shared", "tail", "host"} <= names
    assert ("block0.branch" in names) == (not bypass)  # a bypassed branch is never called
    pathfinder = next(s for s in run["stages"] if s["name"] == "pathfinder")
    assert pathfinder["calls_per_frame"] == 6


def test_tegrastats_is_sampled_during_the_run(run_cli, small_bundle, tmp_path, monkeypatch):
    """A stand-in tegrastats on PATH prints JetPack 6 lines, as the real one would on a Jetson."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "tegrastats"
    script.write_text(f"#!/bin/sh\nwhile :; do echo '{JP6_ORIN_NX}'; sleep 0.02; echo '{JP6_ORIN_NX_LOAD}'; "
                      "sleep 0.02; done\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "p.json"
    result = run_cli("profile", small_bundle, "--size", "64x48", "--iterations", "5", "--warmup", "0",
                     "--backend", "onnxruntime", "--json", out, "--tegrastats-interval", "20")
    assert result.exit_code == 0, result.output
    assert "input power mW" in result.stdout
    report = json.loads(out.read_text())
    assert report["host"]["tegrastats"] is True
    telemetry = report["runs"][0]["telemetry"]
    assert telemetry["samples"] >= 1 and telemetry["input_rail"] == "VDD_IN"
    assert 5119 <= telemetry["input_power_mw"]["mean"] <= 15231
    assert telemetry["energy_per_frame_mj"] > 0 and telemetry["emc_mhz"]["max"] == 3199
    assert set(telemetry["power_mw"]) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}
    result = run_cli("profile", small_bundle, "--size", "64x48", "--iterations", "1", "--warmup", "0",
                     "--backend", "onnxruntime", "--no-tegrastats", "--json", "-")
    assert json.loads(result.stdout)["runs"][0]["telemetry"] is None


def test_profile_bad_input(run_cli, small_bundle, tmp_path, monkeypatch):
    assert_clean_failure(run_cli("profile", small_bundle, "--size", "big"), "--size 'big'")
    assert_clean_failure(run_cli("profile", small_bundle, "--plot", tmp_path / "p.jpg"), ".png, .svg or .pdf")
    assert_clean_failure(run_cli("profile", small_bundle, "--json", tmp_path / "no" / "p.json"), "does not exist")
    assert_clean_failure(run_cli("profile", tmp_path / "nothing"), "not found")
    assert_clean_failure(run_cli("profile", small_bundle, "--degrade", "gausian:5"), "gausian")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert_clean_failure(run_cli("profile", small_bundle, "--tegrastats"), "no 'tegrastats' on PATH")


def test_profile_help(run_cli):
    result = run_cli("profile", "--help")
    assert result.exit_code == 0 and "--iterations" in result.stdout and "--tegrastats" in result.stdout
