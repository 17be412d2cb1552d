"""Errors raised while reading and loading model files.

Every message names the file, says what was found and what was expected, so a ComfyUI user can tell a
wrong file from a damaged one without reading a traceback.
"""

from __future__ import annotations

import os
import reprlib


class ModelFileError(ValueError):
    """A model file that cannot be used: wrong family or component, damaged, incomplete or unsupported."""

    def __init__(self, path, problem: str, found: str | None = None, expected: str | None = None,
                 hint: str | None = None):
        self.path = os.fspath(path) if path is not None else None
        self.problem = problem
        self.found = found
        self.expected = expected
        self.hint = hint
        # A full stop ends the problem, so "Found:" does not read as part of it.
        parts = [f"{os.path.basename(self.path)}: {problem}." if self.path else f"{problem}."]
        if found:
            parts.append(f"Found: {found}.")
        if expected:
            parts.append(f"Expected: {expected}.")
        if hint:
            parts.append(hint)
        if self.path:
            parts.append(f"(file: {self.path})")
        super().__init__(" ".join(parts))


def summarize_keys(keys, limit: int = 6) -> str:
    """A short, readable list of tensor names for an error message."""
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxdict, _BRIEF.maxlist, _BRIEF.maxtuple = 3, 6, 8, 8
_BRIEF.maxstring, _BRIEF.maxlong, _BRIEF.maxother = 80, 40, 80


def brief(value) -> str:
    """A short repr for a message: names and values read from a damaged file can be of any size or depth."""
    return _BRIEF.repr(value)


def byte_count(n: int) -> str:
    return f"{n} byte" if n == 1 else f"{n} bytes"
