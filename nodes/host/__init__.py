"""The host adapter: the one place nodes get devices, model folders, progress bars and sampling from.

Inside ComfyUI (ComfyUI imports comfy.model_management before it loads custom nodes) the ComfyUI host
wraps ComfyUI's own machinery: its memory manager, samplers, schedulers, progress hooks and folders.
Anywhere else (tests, the command line) a small standalone host does the same jobs plainly.
"""

from __future__ import annotations

import sys

_host = None


def running_in_comfyui() -> bool:
    return "comfy.model_management" in sys.modules and "folder_paths" in sys.modules


def get_host():
    global _host
    if _host is None:
        if running_in_comfyui():
            from .comfyui_host import ComfyUIHost

            _host = ComfyUIHost()
        else:
            from .standalone import StandaloneHost

            _host = StandaloneHost()
    return _host


def set_host(host) -> None:
    """Install a host explicitly (the command line and tests configure a standalone one)."""
    global _host
    _host = host
