"""Qwen-Image diffusion model: one layout. ComfyUI's files and diffusers' transformer/ use the same names
and shapes (ComfyUI's QwenImage class is built from the diffusers names; its process_unet_state_dict is
the identity), and they are the network's own names: nothing to rename."""

from __future__ import annotations

from .base import Layout

COMFYUI = Layout("comfyui", description="ComfyUI/diffusers layout")

LAYOUTS = {COMFYUI.name: COMFYUI}
