"""ComfyUI-MMDiT: ComfyUI entry point. ComfyUI reads the two mappings and the web folder below; everything
else lives in nodes/."""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"  # editor helpers (web/mmdit.js), served by ComfyUI to its frontend

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
