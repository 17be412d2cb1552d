"""Qwen-Image as a FamilySpec (the constants are in family.py)."""

from __future__ import annotations

from ..sampling import DynamicShiftSchedule
from ..spec import ConditioningAdapter, EncoderSlot, FamilySpec, QuantPolicy, SamplingSpec, TextSpec
from . import family, text
from .guidance import true_cfg_rule
from .references import REFERENCES
from .transformer import QwenImageTransformer, config_from_shapes

SAMPLING = SamplingSpec(
    steps=family.DEFAULT_STEPS,
    guidance_scale=family.DEFAULT_CFG,
    schedule=DynamicShiftSchedule(**family.OFFICIAL_SCHEDULE),
    shift=family.COMMON_SHIFT,
    guidance=true_cfg_rule,
    guidance_name="true CFG with norm rescale",
)

SPEC = FamilySpec(
    name=family.FAMILY,
    display_name=family.DISPLAY_NAME,
    latent_format=family.LATENT_FORMAT,
    network_class=QwenImageTransformer,
    config_from_shapes=config_from_shapes,
    variant_of=lambda config: "base",
    sampling={"base": SAMPLING},
    text=TextSpec(
        encoders=(EncoderSlot("qwen25_vl", "Qwen2.5-VL-7B", "qwen25"),),
        encode=text.encode,
        limit_note=f"{family.MAX_PROMPT_TOKENS} tokens",
    ),
    patch_size=family.PATCH_SIZE,
    size_multiple=family.SIZE_MULTIPLE,
    timestep_scale=1.0,  # the network takes sigma itself
    quant=QuantPolicy(family.PRECISE_TENSORS, family.EIGHT_BIT_TENSORS),
    aspect_presets=family.ASPECT_PRESETS,
    # The network's keywords for reference images (Qwen-Image-Edit); ComfyUI's QwenImage passes the same.
    conditioning=ConditioningAdapter(reference_latents="ref_latents", reference_method="ref_latents_method"),
    references=REFERENCES,
)
