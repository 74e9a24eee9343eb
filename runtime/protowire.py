"""The protobuf wire format, read by hand where no schema library is worth loading: the
names of an ONNX file's graph (:mod:`.onnx_names`, without parsing its weights) and the
index of a TF1 checkpoint (``models/tf1_checkpoint.py``, without TensorFlow).

A message is a run of fields, each a varint key ``number << 3 | wire type`` and a value:
0 a varint, 1 eight bytes, 2 a varint length and that many bytes, 5 four bytes (3 and 4,
groups, are obsolete). Malformed input raises ``ValueError``.
"""

from __future__ import annotations

import struct
from typing import Iterator, Union

Buffer = Union[bytes, bytearray, memoryview, "mmap.mmap"]  # noqa: F821 - anything indexable by int and slice

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5


def varint(buf: Buffer, pos: int, end: int | None = None) -> tuple[int, int]:
    """The varint at ``buf[pos]`` and the position after it."""
    end = len(buf) if end is None else end
    value = shift = 0
    while True:
        if pos >= end:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 64:
            raise ValueError("a varint longer than 10 bytes")


def fields(buf: Buffer, pos: int = 0, end: int | None = None) -> Iterator[tuple[int, int, int, int]]:
    """``(number, wire type, value, next)`` of each field of the message in ``buf[pos:end]``.
    ``value`` is the number itself for varint and fixed fields; for a length-delimited field
    it is the start of its bytes, which end at ``next`` (nothing is copied)."""
    end = len(buf) if end is None else end
    while pos < end:
        key, pos = varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == VARINT:
            value, nxt = varint(buf, pos, end)
        elif wire == FIXED64:
            value, nxt = (struct.unpack_from("<Q", buf, pos)[0] if pos + 8 <= end else 0), pos + 8
        elif wire == FIXED32:
            value, nxt = (struct.unpack_from("<I", buf, pos)[0] if pos + 4 <= end else 0), pos + 4
        elif wire == LENGTH_DELIMITED:
            length, value = varint(buf, pos, end)
            nxt = value + length
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if nxt > end:
            raise ValueError("truncated field")
        yield number, wire, value, nxt
        pos = nxt
