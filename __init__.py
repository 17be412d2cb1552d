"""ComfyUI-MMDiT: ComfyUI entry point. ComfyUI reads the two mappings below; everything else lives in nodes/."""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
