"""Qwen-Image-Edit's reference images as a ReferenceSpec: which Edit models there are, the official size
of the VAE path, and the prompt encoding that reads the images (edit_text.py).

The three releases run the same network (edit.py places the reference tokens):
- Qwen-Image-Edit: one image, its placeholder inside the template; the output takes the image's size.
- Edit-2509: one to three images labelled "Picture N:"; the output takes the last image's size
  (QwenImageEditPlusPipeline: `image[-1].size`).
- Edit-2511: as 2509, with the reference tokens modulated at timestep zero. Its files say so (ComfyUI's
  `__index_timestep_zero__` key, diffusers' `zero_cond_t`), which the "from the model file" choice follows;
  the explicit choices are for files that lost the marker (a GGUF made without it) or to override it.
"""

from __future__ import annotations

import torch

from ..spec import ReferenceModel, ReferenceSpec
from .edit import DEFAULT_METHOD, ZERO_COND_METHOD
from .edit_sizes import VAE_AREA, area_size
from .edit_text import VARIANTS, encode_edit_prompts

PLUS = VARIANTS["edit_plus"]

MODELS = (
    ReferenceModel("Qwen-Image-Edit-2509 / 2511 (from the model file)", "edit_plus", PLUS.max_images,
                   method=None, output_image=-1),
    ReferenceModel("Qwen-Image-Edit-2511", "edit_plus", PLUS.max_images, method=ZERO_COND_METHOD, output_image=-1),
    ReferenceModel("Qwen-Image-Edit-2509", "edit_plus", PLUS.max_images, method=DEFAULT_METHOD, output_image=-1),
    ReferenceModel("Qwen-Image-Edit", "edit", VARIANTS["edit"].max_images, method=DEFAULT_METHOD, output_image=0),
)


def encode(encoders: dict, vision, prompts: list[str], images: list[torch.Tensor], model: ReferenceModel, device,
           dtype: torch.dtype) -> list[tuple[torch.Tensor, dict]]:
    """Each edit prompt read together with the images by Qwen2.5-VL (the tower reads the images once; one
    prompt has no padding, so no mask)."""
    qwen = encoders["qwen25_vl"]
    encoded = encode_edit_prompts(qwen.model, vision, qwen.tokenizer, prompts, images, model.variant,
                                  device=device, dtype=dtype)
    return [(context, {}) for context, _ in encoded]


def official_size(width: int, height: int) -> tuple[int, int]:
    """The VAE path's size in both Edit pipelines: about 1024 x 1024 pixels at the image's aspect ratio."""
    return area_size(width, height, VAE_AREA)


REFERENCES = ReferenceSpec(
    models=MODELS,
    encode=encode,
    official_size=official_size,
    official_note="about 1 megapixel (1024x1024) at the image's aspect ratio, sides multiples of 32; "
                  "Qwen2.5-VL reads it at 384x384 (2509/2511) or 1 megapixel (Edit)",
    vision_encoder="qwen25_vl",
)
