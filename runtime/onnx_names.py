"""The graph input, output and initializer names of an ONNX file, without loading the model.

Every bundle load checks its manifest's stage I/O names against the stage files.
``onnx.load`` parses every weight to get there (0.33 s for a 200 MB stage, measured on the
development machine, before the backend loads the same file again); the names sit in a
few short fields. This walks the protobuf wire format of a memory map instead and skips
every other field by its length, so the weights are never read:

* ``ModelProto.graph`` is field 7;
* ``GraphProto``: ``initializer`` 5, ``input`` 11, ``output`` 12, ``sparse_initializer`` 15;
* ``ValueInfoProto.name`` 1, ``TensorProto.name`` 8, ``SparseTensorProto.values`` 1.

(Field numbers from onnx/onnx.proto3, unchanged since ONNX 1.0; tests/test_bundle_schema.py
compares the result with ``onnx.load`` on every exported stage file.)
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from . import protowire

_MODEL_GRAPH = 7
_GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT, _GRAPH_SPARSE_INITIALIZER = 5, 11, 12, 15
_VALUE_INFO_NAME, _TENSOR_NAME, _SPARSE_VALUES = 1, 8, 1


class NotOnnx(ValueError):
    """The file is not a readable ONNX model (truncated, or not protobuf at all)."""


@dataclass(frozen=True)
class GraphNames:
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    initializers: frozenset[str]  # graphs of IR version < 4 list these among the inputs too


def graph_names(path: str | Path) -> GraphNames:
    """Names of ``path``'s main graph; cached per file version (path, size, mtime)."""
    stat = os.stat(path)
    return _cached(os.path.realpath(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)


@lru_cache(maxsize=256)
def _cached(path: str, size: int, mtime_ns: int, inode: int) -> GraphNames:
    if size == 0:
        raise NotOnnx("the file is empty")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        inputs, outputs, initializers = [], [], set()
        graphs = 0
        for number, start, end in _fields(buf, 0, len(buf)):
            if number != _MODEL_GRAPH:
                continue
            graphs += 1
            for field, a, b in _fields(buf, start, end):
                if field == _GRAPH_INPUT:
                    inputs.append(_name(buf, a, b, _VALUE_INFO_NAME))
                elif field == _GRAPH_OUTPUT:
                    outputs.append(_name(buf, a, b, _VALUE_INFO_NAME))
                elif field == _GRAPH_INITIALIZER:
                    initializers.add(_name(buf, a, b, _TENSOR_NAME))
                elif field == _GRAPH_SPARSE_INITIALIZER:
                    values = [(c, d) for f, c, d in _fields(buf, a, b) if f == _SPARSE_VALUES]
                    initializers.update(_name(buf, c, d, _TENSOR_NAME) for c, d in values)
    if not graphs:
        raise NotOnnx("it has no graph")
    return GraphNames(tuple(inputs), tuple(outputs), frozenset(initializers))


def _name(buf: mmap.mmap, start: int, end: int, number: int) -> str:
    """The string field ``number`` of the message in ``buf[start:end]`` ('' when unset)."""
    name = b""
    for field, a, b in _fields(buf, start, end):
        if field == number:
            name = buf[a:b]  # the last occurrence wins, as in protobuf
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        raise NotOnnx("a graph name is not UTF-8") from None


def _fields(buf: mmap.mmap, pos: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field of the message in
    ``buf[pos:end]``; fields of the other wire types are skipped."""
    try:
        for number, wire, start, nxt in protowire.fields(buf, pos, end):
            if wire == protowire.LENGTH_DELIMITED:
                yield number, start, nxt
    except ValueError as err:
        raise NotOnnx(str(err)) from None
