"""Outputs appear whole or not at all: write beside the target, then rename.

A crash, a full disk or Ctrl-C leaves at most a hidden ``.name.tmp-*`` entry behind,
never a half-written image or bundle under the name the user asked for.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import EdgeRestoreError


def _default_mode(directory: bool) -> int:
    """What a plain open()/mkdir() would have given: mkstemp/mkdtemp use 0600/0700."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


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
    os.chmod(tmp, _default_mode(directory=True))
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


@contextmanager
def atomic_file(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's directory that is renamed to ``target``
    when the block succeeds and removed when it fails. ``suffix`` keeps the extension
    for writers that pick the format from the file name."""
    target = Path(target)
    parent = target.parent if str(target.parent) else Path(".")
    _check_writable_dir(parent, target)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", suffix=suffix or target.suffix, dir=parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, _default_mode(directory=False))
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
