"""What the hosts and nodes need to know about each model family, in one record per family.

Nodes never branch on family names: they read a FamilySpec (latent format, network class, sampling
defaults, guidance rule, sizes). Adding a family means adding a spec here and its module beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .latents import LatentFormat
from .qwen_image import family as qwen_family
from .qwen_image.guidance import true_cfg as qwen_true_cfg
from .qwen_image.transformer import QwenImageTransformer, config_from_shapes as qwen_config_from_shapes
from .sampling import DynamicShiftSchedule


@dataclass(frozen=True)
class FamilySpec:
    name: str
    display_name: str
    latent_format: LatentFormat
    network_class: type
    config_from_shapes: Callable
    patch_size: int
    size_multiple: int  # pixel sizes must be multiples of this
    default_steps: int
    default_cfg: float
    schedule: DynamicShiftSchedule  # the official pipeline's sigma schedule
    common_shift: float  # the constant shift ComfyUI workflows use; the standalone host's "simple" scheduler applies it
    # Guidance: combine(cond, uncond, scale) -> guided prediction (both in velocity or noise units, which
    # differ by the per-sample sigma factor, so any rule homogeneous in its inputs works in either).
    guidance: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] | None = None
    aspect_presets: dict = field(default_factory=dict)
    # Quantized files: name fragments of tensors kept at full precision, and of tensors kept at >= 8 bits.
    precise_tensors: tuple[str, ...] = ()
    eight_bit_tensors: tuple[str, ...] = ()
    prompt_template: str = "{}"  # the text encoder's chat template; "{}" marks the prompt
    max_prompt_tokens: int = 1024
    # ComfyUI's native classes for the family (comfy.model_base / comfy.supported_models), the model type
    # that selects its sampling (sigma -> timestep) and the cond names counted in its memory estimate.
    comfy_model: str = ""
    comfy_model_type: str = "FLUX"
    comfy_memory_conds: tuple[str, ...] = ()

    def image_tokens(self, latent_shape) -> int:
        """Image tokens the network sees for a latent of this shape (drives the dynamic shift)."""
        height, width = latent_shape[-2:]
        return -(-height // self.patch_size) * -(-width // self.patch_size)


QWEN_IMAGE = FamilySpec(
    name=qwen_family.FAMILY,
    display_name=qwen_family.DISPLAY_NAME,
    latent_format=qwen_family.LATENT_FORMAT,
    network_class=QwenImageTransformer,
    config_from_shapes=qwen_config_from_shapes,
    patch_size=qwen_family.PATCH_SIZE,
    size_multiple=qwen_family.SIZE_MULTIPLE,
    default_steps=qwen_family.DEFAULT_STEPS,
    default_cfg=qwen_family.DEFAULT_CFG,
    schedule=DynamicShiftSchedule(**qwen_family.OFFICIAL_SCHEDULE),
    common_shift=qwen_family.COMMON_SHIFT,
    guidance=qwen_true_cfg,
    aspect_presets=qwen_family.ASPECT_PRESETS,
    precise_tensors=qwen_family.PRECISE_TENSORS,
    eight_bit_tensors=qwen_family.EIGHT_BIT_TENSORS,
    prompt_template=qwen_family.PROMPT_TEMPLATE,
    max_prompt_tokens=qwen_family.MAX_PROMPT_TOKENS,
    comfy_model="QwenImage",
    comfy_model_type="FLUX",
    comfy_memory_conds=("ref_latents",),
)

FAMILIES = {spec.name: spec for spec in (QWEN_IMAGE,)}


def family_spec(name: str) -> FamilySpec:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None
