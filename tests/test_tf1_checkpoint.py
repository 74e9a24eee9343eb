"""Tests for edgerestore.models.tf1_checkpoint: the TensorFlow-free TF1 checkpoint reader.

The real RL-Restore checkpoints live in ../shared (skipped when absent); a minimal SSTable +
bundle writer below builds synthetic checkpoints so the reader is exercised without them.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from edgerestore.models.tf1_checkpoint import (
    MAGIC, _crc32c_py, _load_index, crc32c, list_tf1_variables, mask_crc, read_tf1_checkpoint, require,
    tf_conv_to_torch, tf_dense_to_torch,
)
from edgerestore.runtime.errors import EdgeRestoreError

RL = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "rl_restore"
SMALL = ["01", "02", "05", "06", "09", "10"]
LARGE = ["03", "04", "07", "08", "11", "12"]
LARGE_NAMES = {"conv1", "conv1_2", "conv2", "conv2a", "conv2c", "conv2d", "conv2_2", "conv3"}
# The agent (RL-Restore models/model): 4 convs, FC 384->32, BasicLSTMCell 50 units whose kernel
# is [32 (fc) + 12 (previous action one-hot) + 50 (h), 4*50], the Q head 50->13, and the int32
# global step.
AGENT = {
    "prediction/l1/w": (9, 9, 3, 32), "prediction/l1/biases": (32,),
    "prediction/l2/w": (5, 5, 32, 24), "prediction/l2/biases": (24,),
    "prediction/l3/w": (5, 5, 24, 24), "prediction/l3/biases": (24,),
    "prediction/l4/w": (5, 5, 24, 24), "prediction/l4/biases": (24,),
    "prediction/l7/Matrix": (384, 32), "prediction/l7/bias": (32,),
    "prediction/prediction_rnn/basic_lstm_cell/kernel": (32 + 12 + 50, 200),
    "prediction/prediction_rnn/basic_lstm_cell/bias": (200,),
    "prediction/q/Matrix": (50, 13), "prediction/q/bias": (13,),
    "step/step": (),
}


def _need_rl() -> Path:
    if not (RL / "toolbox" / "tool01.index").is_file():
        pytest.skip(f"{RL} not found: the shared weights folder (../shared) is absent")
    return RL


# ---------------------------------------------------------------------------- minimal writer
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, value) -> bytes:
    if isinstance(value, bytes):
        return _varint(num << 3 | 2) + _varint(len(value)) + value
    return _varint(num << 3) + _varint(value)


def _block(items: list[tuple[bytes, bytes]], ctype: int = 0) -> tuple[bytes, bytes]:
    """One SSTable block (prefix-compressed keys, one restart point) and its 5-byte trailer."""
    body, prev = bytearray(), b""
    for key, value in items:
        shared = 0
        while shared < min(len(key), len(prev)) and key[shared] == prev[shared]:
            shared += 1
        body += _varint(shared) + _varint(len(key) - shared) + _varint(len(value)) + key[shared:] + value
        prev = key
    body += struct.pack("<II", 0, 1)
    trailer = bytes([ctype]) + struct.pack("<I", mask_crc(crc32c(bytes(body) + bytes([ctype]))))
    return bytes(body), trailer


def _write_sstable(path: Path, items: list[tuple[bytes, bytes]], ctype: int = 0) -> None:
    """Data block (its trailer claiming compression ``ctype``), empty metaindex, index, footer."""
    out = bytearray()

    def put(block_items, ctype=0):
        body, trailer = _block(block_items, ctype)
        handle = _varint(len(out)) + _varint(len(body))
        out.extend(body + trailer)
        return handle

    data_handle = put(sorted(items), ctype)
    meta_handle = put([])
    index_handle = put([(max(k for k, _ in items), data_handle)])
    footer = meta_handle + index_handle
    out += footer + bytes(40 - len(footer)) + struct.pack("<Q", MAGIC)
    path.write_bytes(bytes(out))


def _write_checkpoint(prefix: Path, tensors: dict[str, np.ndarray], num_shards: int = 1,
                      extra: dict[str, bytes] | None = None) -> None:
    """Write ``tensors`` as a TF V2 bundle; tensor ``i`` goes to shard ``i % num_shards``."""
    codes = {np.dtype(k): v for k, v in [("float32", 1), ("float64", 2), ("int32", 3), ("uint8", 4),
                                          ("int8", 6), ("int64", 9), ("bool", 10), ("float16", 19)]}
    blobs = [bytearray() for _ in range(num_shards)]
    items = [(b"", _field(1, num_shards) + _field(3, _field(1, 1)))]
    for i, (name, arr) in enumerate(sorted(tensors.items())):
        shard, raw = i % num_shards, np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
        shape = b"".join(_field(2, _field(1, d)) for d in arr.shape)
        entry = (_field(1, codes[arr.dtype]) + _field(2, shape) + _field(3, shard) + _field(4, len(blobs[shard]))
                 + _field(5, len(raw)) + _varint(6 << 3 | 5) + struct.pack("<I", mask_crc(crc32c(raw))))
        blobs[shard] += raw
        items.append((name.encode(), entry))
    items += [(k.encode(), v) for k, v in (extra or {}).items()]
    _write_sstable(prefix.with_name(prefix.name + ".index"), items)
    for s, blob in enumerate(blobs):
        prefix.with_name(f"{prefix.name}.data-{s:05d}-of-{num_shards:05d}").write_bytes(bytes(blob))


def _sample() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"conv/weights": rng.standard_normal((3, 3, 2, 4)).astype(np.float32),
            "conv/biases": rng.standard_normal(4).astype(np.float32),
            "fc/kernel": rng.standard_normal((5, 3)).astype(np.float64),
            "global_step": np.array(7, dtype=np.int64),
            "half": np.arange(6, dtype=np.float16).reshape(2, 3),
            "mask": np.array([True, False, True]),
            "bytes": np.arange(10, dtype=np.uint8)}


# ---------------------------------------------------------------------------- synthetic
def test_crc32c_implementations_agree():
    assert crc32c(b"123456789") == _crc32c_py(b"123456789") == 0xE3069283
    data = bytes(range(256)) * 3
    assert crc32c(data) == _crc32c_py(data)


@pytest.mark.parametrize("num_shards", [1, 2])
def test_synthetic_round_trip(tmp_path, num_shards):
    tensors = _sample()
    _write_checkpoint(tmp_path / "ckpt", tensors, num_shards)
    listed = list_tf1_variables(tmp_path / "ckpt")
    assert listed == {k: (v.dtype.name, v.shape) for k, v in tensors.items()}
    for arg in (tmp_path / "ckpt", str(tmp_path / "ckpt.index"), tmp_path / f"ckpt.data-00000-of-{num_shards:05d}"):
        got = read_tf1_checkpoint(arg)
        assert got.keys() == tensors.keys()
        for k, v in tensors.items():
            assert got[k].dtype == v.dtype and got[k].shape == v.shape and np.array_equal(got[k], v), k
            assert got[k].flags.writeable


def test_directory_with_checkpoint_file(tmp_path):
    _write_checkpoint(tmp_path / "model-100", _sample())
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "model-100"\n'
                                         'all_model_checkpoint_paths: "model-100"\n')
    assert read_tf1_checkpoint(tmp_path).keys() == _sample().keys()
    (tmp_path / "checkpoint").unlink()
    with pytest.raises(EdgeRestoreError, match="no 'checkpoint' file"):
        read_tf1_checkpoint(tmp_path)


def test_string_skipped_and_unsupported_dtype(tmp_path):
    entry = _field(1, 7) + _field(2, b"") + _field(5, 0)
    _write_checkpoint(tmp_path / "a", _sample(), extra={"name": entry})
    assert list_tf1_variables(tmp_path / "a")["name"] == ("string", ())
    assert "name" not in read_tf1_checkpoint(tmp_path / "a")
    bf16 = _field(1, 14) + _field(2, _field(2, _field(1, 2))) + _field(5, 4)
    _write_checkpoint(tmp_path / "b", _sample(), extra={"zz_bf16": bf16})
    with pytest.raises(EdgeRestoreError, match=r"'zz_bf16'.*unsupported TF dtype 14"):
        read_tf1_checkpoint(tmp_path / "b")


def test_synthetic_corruptions(tmp_path):
    _write_checkpoint(tmp_path / "c", {"w": np.ones(8, np.float32)})
    data = tmp_path / "c.data-00000-of-00001"
    blob = bytearray(data.read_bytes())
    blob[3] ^= 0x40
    data.write_bytes(bytes(blob))
    with pytest.raises(EdgeRestoreError, match=r"CRC mismatch in tensor 'w'"):
        read_tf1_checkpoint(tmp_path / "c")
    data.unlink()
    with pytest.raises(EdgeRestoreError, match=r"c\.data-00000-of-00001: .*not found"):
        read_tf1_checkpoint(tmp_path / "c")
    with pytest.raises(EdgeRestoreError, match=r"nope\.index: .*not found"):
        list_tf1_variables(tmp_path / "nope")


def test_compressed_index_blocks(tmp_path):
    _write_sstable(tmp_path / "x.index", [(b"", _field(1, 1))], ctype=7)
    with pytest.raises(EdgeRestoreError, match="unknown compression type 7"):
        list_tf1_variables(tmp_path / "x")
    _write_sstable(tmp_path / "x.index", [(b"", _field(1, 1))], ctype=1)  # not really snappy data
    with pytest.raises(EdgeRestoreError, match="snappy"):
        list_tf1_variables(tmp_path / "x")


def test_require_and_layout_helpers():
    require({"a": 1, "b": 2}, ["a", "b"])
    with pytest.raises(EdgeRestoreError, match="lacks 2 variable\\(s\\): c, d"):
        require({"a": 1}, ["a", "c", "d"])
    k = np.arange(3 * 5 * 2 * 4).reshape(3, 5, 2, 4)
    t = tf_conv_to_torch(k)
    assert t.shape == (4, 2, 3, 5) and t[3, 1, 2, 4] == k[2, 4, 1, 3] and t.flags.c_contiguous
    d = np.arange(6).reshape(2, 3)
    assert tf_dense_to_torch(d).shape == (3, 2) and tf_dense_to_torch(d)[2, 1] == d[1, 2]


# ---------------------------------------------------------------------------- real RL-Restore files
@pytest.mark.parametrize("tool", SMALL + LARGE)
def test_real_toolbox(tool):
    prefix = _need_rl() / "toolbox" / f"tool{tool}"
    listed = list_tf1_variables(prefix)
    weights = read_tf1_checkpoint(prefix)
    assert {k: (v.dtype.name, v.shape) for k, v in weights.items()} == listed
    assert all(np.isfinite(v).all() for v in weights.values())
    if tool in SMALL:
        assert listed == {"conv1/weights": ("float32", (9, 9, 3, 32)), "conv1/biases": ("float32", (32,)),
                          "conv2/weights": ("float32", (5, 5, 32, 16)), "conv2/biases": ("float32", (16,)),
                          "conv3/weights": ("float32", (5, 5, 16, 3)), "conv3/biases": ("float32", (3,))}
    else:
        assert {k.split("/")[0] for k in listed} == LARGE_NAMES and len(listed) == 16
        assert listed["conv1/weights"] == ("float32", (5, 5, 3, 64))
        assert listed["conv1_2/weights"] == ("float32", (1, 1, 64, 32))
        assert listed["conv2_2/weights"] == ("float32", (1, 1, 32, 64))
        assert listed["conv3/weights"] == ("float32", (5, 5, 64, 3))
        for name in ("conv2", "conv2a", "conv2c", "conv2d"):
            assert listed[f"{name}/weights"] == ("float32", (3, 3, 32, 32))


def test_real_agent():
    models = _need_rl() / "models"
    listed = list_tf1_variables(models)  # the directory: resolved through its 'checkpoint' file
    assert {k: shape for k, (_, shape) in listed.items()} == AGENT
    weights = read_tf1_checkpoint(models / "model.index")
    assert weights["step/step"].dtype == np.int32
    assert all(v.dtype == np.float32 for k, v in weights.items() if k != "step/step")
    require(weights, AGENT)
    with pytest.raises(EdgeRestoreError, match="prediction/l5/w"):
        require(weights, ["prediction/l1/w", "prediction/l5/w"])


@pytest.fixture()
def tool_copy(tmp_path):
    src = _need_rl() / "toolbox"
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copy(src / f"tool01{suffix}", tmp_path / f"tool01{suffix}")
    return tmp_path / "tool01"


def _flip(path: Path, pos: int) -> None:
    blob = bytearray(path.read_bytes())
    blob[pos] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(blob))


def test_real_truncated_data(tool_copy):
    data = tool_copy.with_name("tool01.data-00000-of-00001")
    blob = data.read_bytes()
    data.chmod(0o644)
    data.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(EdgeRestoreError, match=r"tool01\.data-00000-of-00001: truncated: tensor '.*'"):
        read_tf1_checkpoint(tool_copy)


def test_real_flipped_data_byte(tool_copy):
    data = tool_copy.with_name("tool01.data-00000-of-00001")
    pos = data.stat().st_size // 2
    _, _, entries = _load_index(tool_copy)
    offset = {n: e.get(4, [0])[0] for n, e in entries.items()}  # field 4 (offset) is omitted when 0
    victim = next(n for n, e in entries.items() if offset[n] <= pos < offset[n] + e[5][0])
    _flip(data, pos)
    with pytest.raises(EdgeRestoreError, match=f"CRC mismatch in tensor '{victim}'"):
        read_tf1_checkpoint(tool_copy)
    assert list_tf1_variables(tool_copy)  # the index is still fine


def test_real_flipped_index_byte(tool_copy):
    index = tool_copy.with_name("tool01.index")
    _flip(index, 20)  # inside the key "conv1/biases" of the only data block
    with pytest.raises(EdgeRestoreError, match=r"tool01\.index: corrupt index: block CRC mismatch"):
        list_tf1_variables(tool_copy)
    _flip(index, 20)
    _flip(index, index.stat().st_size - 3)  # the magic number
    with pytest.raises(EdgeRestoreError, match="bad SSTable magic"):
        read_tf1_checkpoint(tool_copy)


def test_real_missing_files(tool_copy):
    tool_copy.with_name("tool01.data-00000-of-00001").unlink()
    assert "conv1/weights" in list_tf1_variables(tool_copy)  # listing needs no data file
    with pytest.raises(EdgeRestoreError, match="data file not found"):
        read_tf1_checkpoint(tool_copy)
    tool_copy.with_name("tool01.index").unlink()
    with pytest.raises(EdgeRestoreError, match="index file not found"):
        list_tf1_variables(tool_copy)
