"""Qwen-Image diffusion model: one layout. ComfyUI's files and diffusers' transformer/ use the same names
and shapes (ComfyUI's QwenImage class is built from the diffusers names; its process_unet_state_dict is
the identity), and they are the network's own names: nothing to rename.

One difference: Qwen-Image-Edit-2511 says it is 2511 with an empty `__index_timestep_zero__` tensor in
ComfyUI's file, and with `"zero_cond_t": true` in diffusers' transformer/config.json (the key diffusers'
QwenImageTransformer2DModel registers). The flag becomes the same empty tensor (Layout.config_markers)."""

from __future__ import annotations

from ...model_defs.qwen_image.edit import ZERO_COND_MARKER
from .base import Layout

COMFYUI = Layout("comfyui", description="ComfyUI/diffusers layout", config_markers={"zero_cond_t": ZERO_COND_MARKER})

LAYOUTS = {COMFYUI.name: COMFYUI}
