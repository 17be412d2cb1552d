"""Small pieces the node classes share."""

from __future__ import annotations

import logging

CATEGORY = "MMDiT"
log = logging.getLogger("ComfyUI-MMDiT")


def files_or_placeholder(names: list[str], folder: str) -> list[str]:
    """A combo list for a models folder; an empty folder shows a hint instead of an empty list."""
    return names or [f"(no files in models/{folder})"]


# The value of an optional model-file input that is not used (e.g. a family's second text encoder).
NO_FILE = "none"
