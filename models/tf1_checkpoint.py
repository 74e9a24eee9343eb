"""Read TensorFlow-1 ``tf.train.Saver`` checkpoints (V2 "tensor bundle") without TensorFlow.

A checkpoint ``PREFIX`` is two kinds of file:

``PREFIX.index``
    A LevelDB-format SSTable mapping tensor names (sorted) to serialized ``BundleEntryProto``
    messages; the empty key holds the ``BundleHeaderProto``.
``PREFIX.data-0000S-of-0000N``
    Shard ``S`` of ``N``: the raw tensor bytes, concatenated (little-endian unless the header
    says otherwise).
``PREFIX.meta`` (optional)
    The ``MetaGraphDef``: the graph's nodes and how they connect, which the variables alone do
    not tell (residual adds, gate order); :func:`read_tf1_graph` lists them.

SSTable layout (https://github.com/google/leveldb/blob/main/doc/table_format.md): the last 48
bytes are the *footer*: two block handles (metaindex, index; each ``offset, size`` as varints),
zero padding, then the magic ``0xdb4775248b80fb57`` (8 bytes little-endian).  The *index block*
maps a separator key to the handle of each *data block*.  A block is a run of entries
``varint shared, varint non_shared, varint value_len, key[shared:] bytes, value bytes`` (the key
shares its first ``shared`` bytes with the previous key), then ``uint32 restarts[num]`` and
``uint32 num``.  Every block is followed by a 1-byte compression type (0 none, 1 snappy) and a
4-byte *masked* CRC32C of block+type: ``mask(c) = ((c >> 15) | (c << 17)) + 0xa282ead8``.

Protobufs are decoded with a tiny wire-format reader (no generated classes):
``BundleHeaderProto {1 num_shards, 2 endianness (0 little, 1 big), 3 version}`` and
``BundleEntryProto {1 dtype, 2 shape: TensorShapeProto {2 repeated dim {1 size, 2 name}},
3 shard_id, 4 offset, 5 size, 6 crc32c (fixed32), 7 slices}``.

TF stores each tensor's checksum *masked*: ``entry.crc32c == mask(crc32c(raw bytes))`` (verified
on the RL-Restore checkpoints; the unmasked value never matches).  String tensors (``DT_STRING``,
e.g. a saved ``global_step`` name) use a different byte layout and are skipped by
:func:`read_tf1_checkpoint`; :func:`list_tf1_variables` still lists them as ``"string"``.
Partitioned variables (entries with ``slices``) are refused.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgerestore.runtime import protowire
from edgerestore.runtime.errors import EdgeRestoreError

MAGIC = 0xDB4775248B80FB57
_MASK_DELTA = 0xA282EAD8
# TF DataType enum -> numpy dtype (numeric types only; 7 = DT_STRING is handled separately).
_DTYPES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 8: "complex64",
           9: "int64", 10: "bool", 17: "uint16", 18: "complex128", 19: "float16", 22: "uint32", 23: "uint64"}
_DT_STRING = 7

# ---------------------------------------------------------------------------- CRC32C
try:  # C implementation when available; pure Python otherwise (fine for a few MB).
    import google_crc32c as _gcrc

    def crc32c(data: bytes) -> int:
        return _gcrc.value(bytes(data))
except ImportError:  # pragma: no cover - depends on the environment
    try:
        import crc32c as _crcmod

        def crc32c(data: bytes) -> int:
            return _crcmod.crc32c(bytes(data))
    except ImportError:
        crc32c = None  # replaced just below


def _crc32c_py(data: bytes) -> int:
    """Reference CRC32C (Castagnoli, reflected polynomial 0x82F63B78), table driven."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for b in bytes(data):
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _make_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _make_table()
if crc32c is None:  # pragma: no cover
    crc32c = _crc32c_py


def mask_crc(crc: int) -> int:
    """LevelDB/TF checksum masking (so that a CRC of data containing CRCs stays well spread)."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


# ---------------------------------------------------------------------------- protobuf wire format
def _fields(buf: bytes) -> dict[int, list]:
    """Decode one protobuf message into ``{field_number: [values...]}`` (ints or bytes)."""
    out: dict[int, list] = {}
    for number, wire, value, nxt in protowire.fields(buf):
        out.setdefault(number, []).append(bytes(buf[value:nxt]) if wire == protowire.LENGTH_DELIMITED else value)
    return out


def _get(fields: dict, num: int, default=0):
    return fields[num][-1] if num in fields else default


# ---------------------------------------------------------------------------- SSTable
def _read_block(data: bytes, offset: int, size: int, path: Path) -> bytes:
    """Return the (decompressed) contents of the block at ``offset`` after checking its CRC."""
    if offset + size + 5 > len(data):
        raise EdgeRestoreError(f"{path}: corrupt index: block at {offset} (+{size}) runs past the end of the file")
    block = data[offset:offset + size]
    ctype = data[offset + size]
    stored = struct.unpack_from("<I", data, offset + size + 1)[0]
    if mask_crc(crc32c(data[offset:offset + size + 1])) != stored:
        raise EdgeRestoreError(f"{path}: corrupt index: block CRC mismatch at offset {offset}")
    if ctype == 0:
        return block
    if ctype == 1:
        return _snappy_raw(block, path)
    raise EdgeRestoreError(f"{path}: index block uses unknown compression type {ctype}")


def _snappy_raw(block: bytes, path: Path) -> bytes:
    """Decompress a raw-snappy block with cramjam or python-snappy, whichever is importable."""
    try:
        import cramjam
        decompress = lambda b: bytes(cramjam.snappy.decompress_raw(b))  # noqa: E731
    except ImportError:
        try:
            import snappy
            decompress = snappy.uncompress
        except ImportError:
            raise EdgeRestoreError(f"{path}: index block is snappy-compressed; "
                                   "install 'cramjam' or 'python-snappy' to read it") from None
    try:
        return decompress(block)
    except Exception as exc:
        raise EdgeRestoreError(f"{path}: corrupt index: snappy block does not decompress ({exc})") from None


def _block_entries(block: bytes):
    """Yield ``(key, value)`` from a block, undoing prefix compression."""
    if len(block) < 4:
        raise ValueError("block too short")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 - 4 * num_restarts
    if end < 0:
        raise ValueError("bad restart count")
    pos, key = 0, b""
    while pos < end:
        shared, pos = protowire.varint(block, pos)
        non_shared, pos = protowire.varint(block, pos)
        vlen, pos = protowire.varint(block, pos)
        if shared > len(key) or pos + non_shared + vlen > end:
            raise ValueError("bad block entry")
        key = key[:shared] + block[pos:pos + non_shared]
        pos += non_shared
        yield key, block[pos:pos + vlen]
        pos += vlen


def _read_sstable(path: Path) -> dict[bytes, bytes]:
    data = path.read_bytes()
    if len(data) < 48 or struct.unpack_from("<Q", data, len(data) - 8)[0] != MAGIC:
        raise EdgeRestoreError(f"{path}: not a TensorFlow checkpoint index (bad SSTable magic)")
    try:
        footer = data[-48:]
        _, pos = protowire.varint(footer, 0)  # metaindex offset
        _, pos = protowire.varint(footer, pos)  # metaindex size (empty for TF bundles)
        idx_off, pos = protowire.varint(footer, pos)
        idx_size, pos = protowire.varint(footer, pos)
        table: dict[bytes, bytes] = {}
        for _, handle in _block_entries(_read_block(data, idx_off, idx_size, path)):
            off, p = protowire.varint(handle, 0)
            size, _ = protowire.varint(handle, p)
            table.update(_block_entries(_read_block(data, off, size, path)))
    except ValueError as exc:
        raise EdgeRestoreError(f"{path}: corrupt index: {exc}") from None
    return table


# ---------------------------------------------------------------------------- bundle
def _resolve_prefix(prefix: str | Path) -> Path:
    """Accept ``PREFIX``, ``PREFIX.index``, ``PREFIX.data-*`` or a directory with a ``checkpoint`` file."""
    p = Path(prefix)
    if p.is_dir():
        state = p / "checkpoint"
        if not state.is_file():
            raise EdgeRestoreError(f"{p}: directory has no 'checkpoint' file naming a TF1 checkpoint")
        m = re.search(r'^model_checkpoint_path:\s*"(.*)"\s*$', state.read_text(errors="replace"), re.M)
        if not m:
            raise EdgeRestoreError(f"{state}: no model_checkpoint_path line")
        name = Path(m.group(1))
        return name if name.is_absolute() else p / name
    if p.suffix == ".index":
        return p.with_suffix("")
    m = re.fullmatch(r"(.*)\.data-\d{5}-of-\d{5}", p.name)
    return p.with_name(m.group(1)) if m else p


def _load_index(prefix: str | Path) -> tuple[Path, dict, dict[str, dict]]:
    base = _resolve_prefix(prefix)
    index = base.with_name(base.name + ".index")
    if not index.is_file():
        raise EdgeRestoreError(f"{index}: TF1 checkpoint index file not found")
    table = _read_sstable(index)
    try:
        header = _fields(table.pop(b"", b""))
        entries = {k.decode("utf-8"): _fields(v) for k, v in table.items()}
    except (ValueError, UnicodeDecodeError) as exc:
        raise EdgeRestoreError(f"{index}: corrupt index entry: {exc}") from None
    return base, header, entries


def _shape(entry: dict) -> tuple[int, ...]:
    shape = _fields(_get(entry, 2, b""))
    return tuple(_get(_fields(d), 1) for d in shape.get(2, []))


def _dtype_name(code: int) -> str:
    return "string" if code == _DT_STRING else _DTYPES.get(code, f"DT_{code}")


def list_tf1_variables(prefix: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{name: (numpy dtype name, shape)}`` for every tensor, reading only the ``.index`` file."""
    _, _, entries = _load_index(prefix)
    return {name: (_dtype_name(_get(e, 1)), _shape(e)) for name, e in entries.items()}


def read_tf1_checkpoint(prefix: str | Path) -> dict[str, np.ndarray]:
    """Read every numeric tensor of a TF1 (V2 bundle) checkpoint, checksums verified.

    Returns ``{variable name: np.ndarray}`` in TF layout (conv kernels ``[kh, kw, in, out]``,
    dense kernels ``[in, out]``); see :func:`tf_conv_to_torch` / :func:`tf_dense_to_torch`.
    String tensors are skipped.  Any problem raises a one-line :class:`EdgeRestoreError`.
    """
    base, header, entries = _load_index(prefix)
    index = base.with_name(base.name + ".index")
    num_shards = _get(header, 1, 1) or 1
    order = ">" if _get(header, 2) == 1 else "<"
    shards: dict[int, bytes] = {}
    out: dict[str, np.ndarray] = {}
    for name, e in entries.items():
        code, shape = _get(e, 1), _shape(e)
        if 7 in e:
            raise EdgeRestoreError(f"{index}: tensor {name!r} is a partitioned (sliced) variable: not supported")
        if code == _DT_STRING:
            continue
        if code not in _DTYPES:
            raise EdgeRestoreError(f"{index}: tensor {name!r} has unsupported TF dtype {code}")
        shard, offset, size = _get(e, 3), _get(e, 4), _get(e, 5)
        if not 0 <= shard < num_shards:
            raise EdgeRestoreError(f"{index}: tensor {name!r} names shard {shard} of {num_shards}")
        data_path = base.with_name(f"{base.name}.data-{shard:05d}-of-{num_shards:05d}")
        if shard not in shards:
            if not data_path.is_file():
                raise EdgeRestoreError(f"{data_path}: TF1 checkpoint data file not found")
            shards[shard] = data_path.read_bytes()
        blob = shards[shard]
        if offset + size > len(blob):
            raise EdgeRestoreError(f"{data_path}: truncated: tensor {name!r} needs bytes {offset}..{offset + size} "
                                   f"but the file has {len(blob)}")
        raw = blob[offset:offset + size]
        if 6 in e and mask_crc(crc32c(raw)) != _get(e, 6):
            raise EdgeRestoreError(f"{data_path}: CRC mismatch in tensor {name!r} (corrupt data file)")
        dt = np.dtype(_DTYPES[code]).newbyteorder(order)
        if size != dt.itemsize * int(np.prod(shape, dtype=np.int64)):
            raise EdgeRestoreError(f"{index}: tensor {name!r} size {size} does not match {dt.name}{list(shape)}")
        out[name] = np.frombuffer(raw, dtype=dt).astype(dt.newbyteorder("="), copy=True).reshape(shape)
    return out


def require(variables: dict, names) -> None:
    """Raise :class:`EdgeRestoreError` listing every name in ``names`` absent from ``variables``."""
    missing = [n for n in names if n not in variables]
    if missing:
        raise EdgeRestoreError(f"checkpoint lacks {len(missing)} variable(s): {', '.join(missing)}")


def tf_conv_to_torch(kernel) -> np.ndarray:
    """TF conv kernel ``[kh, kw, in, out]`` -> PyTorch ``Conv2d.weight`` ``[out, in, kh, kw]``."""
    return np.ascontiguousarray(np.transpose(np.asarray(kernel), (3, 2, 0, 1)))


def tf_dense_to_torch(kernel) -> np.ndarray:
    """TF dense kernel ``[in, out]`` (``y = x @ W``) -> PyTorch ``Linear.weight`` ``[out, in]``."""
    return np.ascontiguousarray(np.asarray(kernel).T)


# ---------------------------------------------------------------------------- .meta graph
@dataclass(frozen=True)
class GraphNode:
    """One ``NodeDef`` of a saved graph: ``inputs`` as TF writes them (``name:k`` for output k,
    ``^name`` for control edges); ``attrs`` decoded to Python values (strings, ints, floats,
    lists, and ``np.ndarray`` for tensor constants)."""

    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: dict


def read_tf1_graph(meta: str | Path) -> dict[str, GraphNode]:
    """The nodes of a ``PREFIX.meta`` file (``MetaGraphDef``), by name.

    A checkpoint's ``.index``/``.data`` hold only variables; the wiring between layers (which
    output a residual ``AddN`` adds, which LSTM gate gets the forget bias) is recorded only
    here. Decoded fields: ``MetaGraphDef {2 graph_def}``, ``GraphDef {1 repeated node}``,
    ``NodeDef {1 name, 2 op, 3 repeated input, 5 map<string, AttrValue> attr}``.
    """
    path = Path(meta)
    if path.suffix != ".meta":
        path = _resolve_prefix(path)
        path = path.with_name(path.name + ".meta")
    if not path.is_file():
        raise EdgeRestoreError(f"{path}: TF1 meta graph file not found")
    try:
        graph = _fields(_get(_fields(path.read_bytes()), 2, b""))
        nodes = {}
        for raw in graph.get(1, []):
            f = _fields(raw)
            attrs = {}
            for entry in f.get(5, []):
                e = _fields(entry)
                attrs[_get(e, 1, b"").decode()] = _attr_value(_fields(_get(e, 2, b"")))
            name = _get(f, 1, b"").decode()
            nodes[name] = GraphNode(name, _get(f, 2, b"").decode(), tuple(i.decode() for i in f.get(3, [])), attrs)
    except (ValueError, UnicodeDecodeError, struct.error) as exc:
        raise EdgeRestoreError(f"{path}: corrupt meta graph: {exc}") from None
    return nodes


def _attr_value(v: dict):
    """``AttrValue {1 list, 2 s, 3 i, 4 f, 5 b, 6 type, 7 shape, 8 tensor}`` -> Python."""
    if 1 in v:
        items = _fields(v[1][-1])
        if 2 in items:
            return [s.decode(errors="replace") for s in items[2]]
        for num, kind in ((3, "varint"), (6, "varint"), (4, "float")):
            if num in items:
                return _repeated(items[num], kind)
        return []
    if 2 in v:
        return v[2][-1].decode(errors="replace")
    if 3 in v:
        return _signed(v[3][-1])
    if 4 in v:
        return struct.unpack("<f", struct.pack("<I", v[4][-1]))[0]
    if 5 in v:
        return bool(v[5][-1])
    if 6 in v:
        return _dtype_name(v[6][-1])
    if 8 in v:
        return _tensor_proto(_fields(v[8][-1]))
    return None


def _signed(n: int) -> int:
    return n - (1 << 64) if n >= 1 << 63 else n


def _repeated(values: list, kind: str) -> list:
    """A repeated scalar field, packed (one bytes value) or not."""
    out = []
    for value in values:
        if not isinstance(value, bytes):
            out.append(struct.unpack("<f", struct.pack("<I", value))[0] if kind == "float" else _signed(value))
        elif kind == "float":
            out.extend(struct.unpack(f"<{len(value) // 4}f", value))
        else:
            pos = 0
            while pos < len(value):
                n, pos = protowire.varint(value, pos)
                out.append(_signed(n))
    return out


def _tensor_proto(t: dict):
    """``TensorProto {1 dtype, 2 shape, 4 tensor_content, 5 float_val, 7 int_val, 10 int64_val}``."""
    code = _get(t, 1)
    if code not in _DTYPES:
        return None
    shape = tuple(_get(_fields(d), 1) for d in _fields(_get(t, 2, b"")).get(2, []))
    dtype = np.dtype(_DTYPES[code])
    if 4 in t:
        return np.frombuffer(t[4][-1], dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    for num, kind in ((5, "float"), (7, "varint"), (10, "varint")):
        if num in t:
            values = np.array(_repeated(t[num], kind), dtype)
            size = int(np.prod(shape, dtype=np.int64))
            if values.size == 1 and size != 1:  # TF stores a splat constant as one value
                return np.broadcast_to(values, shape).copy()
            return values.reshape(shape)
    return np.zeros(shape, dtype)
