"""The loader nodes' VALIDATE_INPUTS: a chosen model file is opened and checked when the workflow is
queued, before any node runs.

ComfyUI calls a node's VALIDATE_INPUTS at queue time with the constant inputs its signature names, and
shows a returned string as that node's validation error; for those inputs it skips its own combo check,
so the check here also makes sure the file is one the models folder lists. The command line's workflow
check calls the same methods. A pass is remembered per file version (loaders.check_cache).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Callable

from ..loaders.check_cache import check_once
from ..loaders.errors import ModelFileError
from .host import get_host


def validate_model_file(kind: str, name, check: Callable[[Path], object]) -> bool | str:
    """True when `name` is listed in the `kind` models folder and its file passes `check(path)`;
    otherwise the message to show."""
    if not isinstance(name, str):
        return True  # linked from another node: known only when it runs, and checked then
    host = get_host()
    listed = host.folder_files(kind)
    if name not in listed:
        return not_listed(kind, name, listed)
    try:
        check_once(kind, host.full_path(kind, name), check)
    except (ModelFileError, FileNotFoundError) as error:
        return str(error)
    return True


def not_listed(kind: str, name: str, listed: list[str]) -> str:
    message = f"{name!r} is not in the {kind} models folder"
    close = difflib.get_close_matches(name, listed, n=1)
    if close:
        return f"{message} (did you mean {close[0]!r}?)"
    if not listed:
        return f"{message}, which holds no model files"
    shown = ", ".join(listed[:8]) + (f", ... ({len(listed)} in all)" if len(listed) > 8 else "")
    return f"{message}; it holds: {shown}"
