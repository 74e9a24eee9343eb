"""Tests for edgerestore.models.checkpoint: safe loading of every supported checkpoint kind."""

from __future__ import annotations

import builtins
import collections
import os
import pickle
import subprocess
from pathlib import Path

import pytest
import torch

from edgerestore.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint, strip_prefix
from edgerestore.runtime.errors import EdgeRestoreError

WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "weights"
KAIR = WEIGHTS / "dncnn_25_kair_state_dict.pth"
CSZN = WEIGHTS / "dncnn_sigma25_cszn_legacy_module.pth"


def _need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"../shared/weights not found: {path}")
    return path


def _small_sd(prefix: str = "") -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        f"{prefix}head.weight": torch.randn(8, 3, 3, 3),
        f"{prefix}head.bias": torch.randn(8),
        f"{prefix}bn.running_mean": torch.zeros(8),
        f"{prefix}bn.num_batches_tracked": torch.tensor(3),
    }


# ---------------------------------------------------------------------------------- real files


def test_kair_state_dict():
    ck = load_checkpoint(_need(KAIR))
    assert isinstance(ck, Checkpoint)
    assert ck.kind == "state_dict"
    assert ck.arch is None and ck.config is None
    expected = [f"model.{i}.{p}" for i in range(0, 33, 2) for p in ("weight", "bias")]
    assert list(ck.state_dict) == expected  # 17 convs with bias: model.0 .. model.32
    assert ck.state_dict["model.0.weight"].shape == (64, 1, 3, 3)
    assert ck.state_dict["model.32.weight"].shape == (1, 64, 3, 3)
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in ck.state_dict.values())
    assert len(ck.sha256) == 64


def test_cszn_legacy_module():
    path = _need(CSZN)
    # Why the restricted path exists: torch's safe loader refuses pickled modules.
    with pytest.raises(Exception):
        torch.load(path, map_location="cpu", weights_only=True)

    ck = load_checkpoint(path)
    assert ck.kind == "legacy-module"
    sd = ck.state_dict
    assert sd["dncnn.0.weight"].shape == (64, 1, 3, 3)
    assert sd["dncnn.0.bias"].shape == (64,)
    assert "dncnn.2.bias" not in sd  # bias=False convs: None parameters are skipped
    for key in ("weight", "bias", "running_mean", "running_var"):
        assert sd[f"dncnn.3.{key}"].shape == (64,)
    assert not any(k.endswith("num_batches_tracked") for k in sd)
    assert sd["dncnn.47.weight"].shape == (1, 64, 3, 3)
    assert max(int(k.split(".")[1]) for k in sd) == 47
    assert len(sd) == 2 + 15 * 5 + 1
    assert all(type(t) is torch.Tensor and t.dtype == torch.float32 for t in sd.values())
    assert (sd["dncnn.3.running_var"] > 0).all()
    bn_eps = ck.meta["bn_eps"]
    assert len(bn_eps) == 15 and bn_eps["dncnn.3"] == pytest.approx(1e-4)
    assert ck.meta["module_class"] == "__main__.DnCNN"


# ------------------------------------------------------------------------------ malicious files


class _OsSystem:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _SubprocessCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (subprocess.call, (["touch", str(self.marker)],))


class _Exec:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


class _Eval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",))


class _Popen:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (subprocess.Popen, (["touch", str(self.marker)],))


class FakeNet(torch.nn.Module):
    """A real module class (pickled by reference -> becomes an inert stub) hiding a payload."""

    def __init__(self, payload):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)
        self.payload = payload


def _assert_refused(path: Path, marker: Path, global_name: str):
    with pytest.raises(EdgeRestoreError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert global_name in msg, msg
    assert "refusing to load" in msg and path.name in msg
    assert "\n" not in msg
    assert not marker.exists(), "pickled code was executed"


def test_refuses_torch_saved_os_system(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "x": _OsSystem(marker)}, path)
    _assert_refused(path, marker, f"{os.system.__module__}.system")  # posix.system on Linux


@pytest.mark.parametrize(
    "payload, global_name",
    [(_SubprocessCall, "subprocess.call"), (_Exec, "builtins.exec"), (_Eval, "builtins.eval"),
     (_OsSystem, f"{os.system.__module__}.system")],
)
def test_refuses_raw_pickle(tmp_path, payload, global_name):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(payload(marker), protocol=2))
    _assert_refused(path, marker, global_name)


def test_refuses_payload_nested_in_module_state(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_module.pth"
    torch.save(FakeNet(_OsSystem(marker)), path)
    _assert_refused(path, marker, f"{os.system.__module__}.system")


def test_refuses_dangerous_class_names(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "popen.pkl"
    # subprocess.Popen is class-like, but comes from a refused module: no stub for it
    path.write_bytes(pickle.dumps(_Popen(marker), protocol=2))
    _assert_refused(path, marker, "subprocess.Popen")


def test_clean_pickled_module_loads(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4, eps=1e-3), torch.nn.ReLU())
    path = tmp_path / "whole_module.pth"
    torch.save(net, path)
    ck = load_checkpoint(path)
    assert ck.kind == "legacy-module"
    ref = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert list(ck.state_dict) == list(ref)
    for k, v in ref.items():
        assert torch.equal(ck.state_dict[k], v)
    assert ck.meta["bn_eps"] == {"1": pytest.approx(1e-3)}


# ------------------------------------------------------------------------------- own format


def test_save_load_roundtrip(tmp_path):
    sd = _small_sd()
    path = tmp_path / "ck.pth"
    config = {"depth": 17, "channels": 64, "bias": True, "kernels": [3, 3]}
    meta = {"epoch": 12, "psnr": 31.5, "dataset": "BSD400", "note": None}
    save_checkpoint(path, sd, arch="dncnn", config=config, meta=meta)
    assert sorted(os.listdir(tmp_path)) == ["ck.pth"]  # atomic write: no temp file left behind
    ck = load_checkpoint(path)
    assert ck.kind == "edgerestore"
    assert ck.arch == "dncnn" and ck.config == config and ck.meta == meta
    assert set(ck.state_dict) == {"head.weight", "head.bias", "bn.running_mean"}
    for k in ck.state_dict:
        assert torch.equal(ck.state_dict[k], sd[k])
    # the file is loadable by torch's safe loader as-is
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["edgerestore_checkpoint"] == 1
    # overwrite in place, meta defaults to {}
    save_checkpoint(path, sd, arch="dncnn", config=config)
    assert load_checkpoint(path).meta == {}
    assert sorted(os.listdir(tmp_path)) == ["ck.pth"]


def test_save_rejects_bad_input_and_leaves_no_temp(tmp_path):
    path = tmp_path / "ck.pth"
    with pytest.raises(EdgeRestoreError, match="ck.pth"):
        save_checkpoint(path, {}, arch="dncnn", config={})
    with pytest.raises(EdgeRestoreError, match="config"):
        save_checkpoint(path, _small_sd(), arch="dncnn", config={"f": object()})
    assert os.listdir(tmp_path) == []


# -------------------------------------------------------------------------------- wrappers


def test_wrapper_model_with_module_prefix(tmp_path):
    sd = _small_sd("module.")
    path = tmp_path / "wrapped.pth"
    torch.save({"model": sd, "epoch": 3, "optimizer": {"lr": 1e-3}}, path)
    ck = load_checkpoint(path)
    assert ck.kind == "state_dict"
    assert set(ck.state_dict) == {"head.weight", "head.bias", "bn.running_mean"}
    assert torch.equal(ck.state_dict["head.weight"], sd["module.head.weight"])


def test_wrapper_params(tmp_path):
    path = tmp_path / "basicsr.pth"
    torch.save({"params": _small_sd()}, path)
    ck = load_checkpoint(path)
    assert ck.kind == "state_dict"
    assert set(ck.state_dict) == {"head.weight", "head.bias", "bn.running_mean"}


def test_wrapper_with_extras_and_unknown_key(tmp_path):
    import argparse

    path = tmp_path / "train.pth"
    # argparse.Namespace makes torch's safe loader refuse; it becomes an inert stub here
    torch.save({"args": argparse.Namespace(lr=0.1), "step": torch.tensor(5), "net_g": _small_sd()}, path)
    ck = load_checkpoint(path)
    assert ck.kind == "state_dict" and ck.meta["wrapper_key"] == "net_g"
    assert set(ck.state_dict) == {"head.weight", "head.bias", "bn.running_mean"}


def test_wrapper_prefers_params_ema(tmp_path):
    path = tmp_path / "basicsr_ema.pth"
    ema = {"w": torch.ones(2)}
    torch.save({"params": {"w": torch.zeros(2)}, "params_ema": ema}, path)
    assert torch.equal(load_checkpoint(path).state_dict["w"], ema["w"])


def test_half_precision_becomes_float32(tmp_path):
    path = tmp_path / "half.pth"
    torch.save({"w": torch.ones(2, dtype=torch.float16)}, path)
    assert load_checkpoint(path).state_dict["w"].dtype == torch.float32


def test_strip_prefix():
    sd = {"module.a": 1, "module.module.b": 2, "c": 3}
    assert strip_prefix(sd) == {"a": 1, "b": 2, "c": 3}
    assert strip_prefix({"net.x": 1}, prefixes=("net.",)) == {"x": 1}
    with pytest.raises(EdgeRestoreError):
        strip_prefix({"module.a": 1, "a": 2})


# ------------------------------------------------------------------------------ bad files


def _assert_user_error(path, *words):
    with pytest.raises(EdgeRestoreError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert Path(path).name in msg
    for w in words:
        assert w in msg, msg
    return msg


def test_missing_file(tmp_path):
    _assert_user_error(tmp_path / "nope.pth", "not found")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    _assert_user_error(path, "empty")


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(bytes(range(256)) * 8)
    _assert_user_error(path, "not a readable PyTorch checkpoint")


def test_directory(tmp_path):
    _assert_user_error(tmp_path, "directory")


def test_no_tensors(tmp_path):
    path = tmp_path / "notensors.pth"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    _assert_user_error(path, "no weights found")
    path2 = tmp_path / "emptydict.pth"
    torch.save(collections.OrderedDict(), path2)
    _assert_user_error(path2, "no weights found")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_refused(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Conv2d(1, 1, 1)), str(path))
    _assert_user_error(path, "TorchScript")
