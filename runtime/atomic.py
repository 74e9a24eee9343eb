"""Outputs appear whole or not at all: write beside the target, then rename.

A crash, a full disk or Ctrl-C leaves at most a hidden ``.name.tmp-*`` entry behind,
never a half-written image or bundle under the name the user asked for.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import EdgeRestoreError


def process_umask() -> int:
    """The process's umask. ``os.umask`` reads it only by setting it, and setting it even for
    a moment changes the permissions of any file another thread creates meanwhile (a stream's
    encoder, say), so Linux's /proc/self/status is read instead; elsewhere the value is
    taken once, the first time it is needed (CLI start-up, before any worker thread)."""
    global _umask
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        if _umask is None:
            _umask = os.umask(0o022)
            os.umask(_umask)
    return _umask


_umask: int | None = None
_umask_lock = threading.Lock()


def default_mode(directory: bool) -> int:
    """What a plain open()/mkdir() would have given: mkstemp/mkdtemp use 0600/0700."""
    return (0o777 if directory else 0o666) & ~process_umask()


@contextmanager
def atomic_directory(target: str | Path, replace_if=None) -> Iterator[Path]:
    """Yield a fresh temporary directory that becomes ``target`` on success.

    An existing ``target`` is replaced only if ``replace_if(target)`` says so (for a
    bundle: it is an old bundle); otherwise it is an error, so a typo in ``-o`` can
    never wipe an unrelated folder.
    """
    target = Path(target)
    if target.exists() and not (target.is_dir() and (not any(target.iterdir()) or (replace_if and replace_if(target)))):
        raise EdgeRestoreError(f"refusing to overwrite '{target}': it exists and is not an edgerestore bundle")
    parent = target.parent if str(target.parent) else Path(".")
    _check_writable_dir(parent, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    os.chmod(tmp, default_mode(directory=True))
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=parent))
            os.replace(target, old / "bundle")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


TEMPORARY_MARK = ".tmp-"  # atomic_file's temporary for "NAME" is ".NAME.tmp-XXXX[suffix]"


def _temporary_prefix(target: Path) -> str:
    return f".{target.name}{TEMPORARY_MARK}"


def leftover_of(name: str) -> str | None:
    """The target name whose :func:`atomic_file` temporary ``name`` is (a file a killed
    process never renamed), or None for any other file."""
    if not name.startswith(".") or TEMPORARY_MARK not in name:
        return None
    return name[1:].rsplit(TEMPORARY_MARK, 1)[0]


@contextmanager
def atomic_file(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's directory that is renamed to ``target``
    when the block succeeds and removed when it fails. ``suffix`` keeps the extension
    for writers that pick the format from the file name."""
    target = Path(target)
    parent = target.parent if str(target.parent) else Path(".")
    _check_writable_dir(parent, target)
    fd, name = tempfile.mkstemp(prefix=_temporary_prefix(target), suffix=suffix or target.suffix, dir=parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, default_mode(directory=False))
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_writable_dir(parent: Path, target: Path) -> None:
    if not parent.is_dir():
        raise EdgeRestoreError(f"cannot write '{target}': directory '{parent}' does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EdgeRestoreError(f"cannot write '{target}': directory '{parent}' is not writable")
