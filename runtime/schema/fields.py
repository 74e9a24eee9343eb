"""Reading JSON values with their field paths: one typed check per kind of value, and
:class:`Obj`, which reads an object's fields by key and refuses the ones left over."""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable

from ..errors import EdgeRestoreError

MANIFEST = "manifest.json"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ManifestError(EdgeRestoreError):
    """One field of a manifest is missing, mistyped or inconsistent. ``field`` is its path,
    e.g. ``plan[3].branches[1].steps[0].stage``."""

    def __init__(self, field: str, problem: str, origin: str = "bundle"):
        super().__init__(one_line(f"{origin}: {MANIFEST}: {field}: {problem}"))
        self.field, self.problem, self.origin = field, problem, origin


def one_line(message: str) -> str:
    """Names from the manifest may hold line breaks; an error stays one line."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def fail(path: str, problem: str) -> None:
    raise ManifestError(path, problem)


def join(path: str, *keys: str | int) -> str:
    """``stages`` + ``main`` -> ``stages.main``; keys that are not identifiers (stage names
    with dots) in brackets: ``stages["block0.branch"]``; list indices ``plan[3]``."""
    for key in keys:
        if isinstance(key, int):
            path = f"{path}[{key}]"
        elif _IDENTIFIER.fullmatch(key):
            path = f"{path}.{key}" if path else key
        else:
            path = f"{path}[{json.dumps(key)}]"
    return path


def describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({json.dumps(value)[:40]})"
    return "a list" if isinstance(value, list) else "an object"


Check = Callable[[Any, str], Any]


def text(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        fail(path, f"expected a non-empty string, got {describe(value)}")
    return value


def integer(minimum: int = 0) -> Check:
    def check(value: Any, path: str) -> int:
        if type(value) is not int:
            fail(path, f"expected an integer, got {describe(value)}")
        if value < minimum:
            fail(path, f"must be at least {minimum}, got {value}")
        return value
    return check


def number(minimum: float | None = None, positive: bool = False) -> Check:
    def check(value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            fail(path, f"expected a finite number, got {describe(value)}")
        if minimum is not None and value < minimum:
            fail(path, f"must be at least {minimum}, got {value}")
        if positive and value <= 0:
            fail(path, f"must be positive, got {value}")
        return value  # as written: an int stays an int, so the manifest writes back unchanged
    return check


def boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        fail(path, f"expected true or false, got {describe(value)}")
    return value


def one_of(choices: tuple[str, ...]) -> Check:
    def check(value: Any, path: str) -> str:
        if value not in choices:
            fail(path, f"expected one of {', '.join(choices)}, got {describe(value)}")
        return value
    return check


def digest(value: Any, path: str) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        fail(path, f"expected a sha256 hex digest (64 characters 0-9a-f), got {describe(value)}")
    return value


def free(value: Any, path: str) -> dict[str, Any]:
    """An object whose contents are not part of the schema (``model.config``, ``provenance``)."""
    if not isinstance(value, dict):
        fail(path, f"expected an object, got {describe(value)}")
    return value


def listing(item: Check, nonempty: bool = False) -> Check:
    def check(value: Any, path: str) -> list:
        if not isinstance(value, list):
            fail(path, f"expected a list, got {describe(value)}")
        if nonempty and not value:
            fail(path, "must not be empty")
        return [item(v, join(path, i)) for i, v in enumerate(value)]
    return check


def mapping(item: Check, nonempty: bool = False) -> Check:
    """An object of any keys (non-empty strings), each value read by ``item``."""
    def check(value: Any, path: str) -> dict:
        free(value, path)
        if nonempty and not value:
            fail(path, "must not be empty")
        if "" in value:
            fail(path, "a key is an empty string")
        return {key: item(v, join(path, key)) for key, v in value.items()}
    return check


class Obj:
    """One JSON object with known fields: read each by key, then :meth:`close` refuses the rest."""

    def __init__(self, value: Any, path: str):
        self.data, self.path, self.read = free(value, path), path, set()

    def __call__(self, key: str, check: Check, required: bool = True) -> Any:
        self.read.add(key)
        if key not in self.data:
            if required:
                fail(join(self.path, key), "missing")
            return None
        return check(self.data[key], join(self.path, key))

    def close(self) -> None:
        for key in self.data:
            if key not in self.read:
                fail(join(self.path, key), f"unknown field (known here: {', '.join(sorted(self.read))})")


def record(factory: Callable[[Obj], Any]) -> Check:
    """A check for an object with known fields: ``factory`` reads them from an :class:`Obj`."""
    def check(value: Any, path: str) -> Any:
        obj = Obj(value, path)
        result = factory(obj)
        obj.close()
        return result
    return check
