"""Paths and small utilities shared by the tests."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MANIFESTS = SHARED / "reference" / "manifests"


@lru_cache(maxsize=None)
def manifest(name: str) -> dict:
    """A published checkpoint's tensor names and shapes (see shared/reference/manifests/README.md)."""
    return json.loads((MANIFESTS / f"{name}.json").read_text())


def manifest_shapes(name: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v) for k, v in manifest(name)["tensors"].items()}
