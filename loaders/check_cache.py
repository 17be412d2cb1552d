"""Remember which model files passed their check, so checking a workflow again costs nothing.

ComfyUI validates a prompt every time it is queued, and the checks open every model file. A file is
identified by its path and, for each file it consists of, the size and modification time: any change to
the file (a new download, a repair) checks it again. Only passes are remembered; a failed check runs
again next time, since what it missed (a tokenizer folder, a shard) may have appeared since.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

_passed: dict[tuple, object] = {}


def fingerprint(path: Path) -> tuple:
    """(relative name, size, mtime) of the file, or of every file in the folder."""
    path = Path(path)
    if not path.is_dir():
        stat = path.stat()
        return (("", stat.st_size, stat.st_mtime_ns),)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return tuple((p.relative_to(path).as_posix(), *_size_and_mtime(p)) for p in files)


def _size_and_mtime(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def check_once(kind: str, path, check: Callable[[Path], object]):
    """`check(path)` unless this file, unchanged, passed the `kind` check before; returns what the check
    returned then (a summary, not the opened file). Errors from `check` propagate and are not remembered."""
    path = Path(path)
    key = (kind, os.path.abspath(path), fingerprint(path))
    if key not in _passed:
        _passed[key] = check(path)
    return _passed[key]


def forget() -> None:
    """Drop every remembered pass (tests)."""
    _passed.clear()
