"""HunyuanImage 2.1 (base, MeanFlow-distilled, and the refiner) as a FamilySpec; the constants are in
family.py, sampling.py, refiner.py and text.py.

The refiner's record (4 steps, embedded guidance, shift 4, no MeanFlow) lets the hosts load a refiner file
(ComfyUI's model config reads the variant's shift); sampling with it is the refine stage's job (refiner.py:
check_generating_model refuses it in the base sampling path)."""

from __future__ import annotations

from ..spec import ConditioningAdapter, EncoderSlot, FamilySpec, QuantPolicy, SamplingSpec, TextSpec
from . import family, refiner, sampling, text
from .transformer import HunyuanImageTransformer, config_from_shapes


def _official_guidance(scale: float, positive_extras) -> object:
    """The base model's adaptive projected mix guidance; the glyph guider when the prompt has quoted text."""
    has_glyph = positive_extras.get(text.GLYPH_KEY) is not None
    return sampling.official_guidance(has_glyph_text=has_glyph, guidance_scale=scale)


def _sampling_spec(official: sampling.HunyuanSampling) -> SamplingSpec:
    embedded = official.guidance_kind == "embedded"
    return SamplingSpec(
        steps=official.steps,
        guidance_scale=official.guidance_scale,
        schedule=official.schedule,
        shift=official.shift,
        guidance=None if embedded else _official_guidance,
        guidance_name="embedded guidance" if embedded else "adaptive projected mix guidance",
        embedded_guidance=embedded,
        meanflow=official.meanflow,
    )


def _refiner_sampling_spec(official: refiner.RefinerSampling) -> SamplingSpec:
    return SamplingSpec(steps=official.steps, guidance_scale=official.guidance_scale, schedule=official.schedule,
                        shift=official.shift, guidance=None, guidance_name="embedded guidance",
                        embedded_guidance=True, meanflow=False, refines_only=True)


SPEC = FamilySpec(
    name=family.FAMILY,
    display_name=family.DISPLAY_NAME,
    latent_format=family.LATENT_FORMAT,
    network_class=HunyuanImageTransformer,
    config_from_shapes=config_from_shapes,
    variant_of=lambda config: config.variant,
    sampling={**{variant: _sampling_spec(s) for variant, s in sampling.OFFICIAL_SAMPLING.items()},
              refiner.REFINER_VARIANT: _refiner_sampling_spec(refiner.REFINER_SAMPLING)},
    text=TextSpec(
        encoders=(EncoderSlot("qwen25_vl", "Qwen2.5-VL-7B", "qwen25"),
                  EncoderSlot("byt5", "the ByT5 glyph encoder (byt5_small_glyphxl)", "byt5")),
        encode=text.encode,
        limit_note=text.LIMIT_NOTE,
    ),
    patch_size=family.PATCH_SIZE,
    size_multiple=family.SIZE_MULTIPLE,
    timestep_scale=sampling.TIMESTEP_SCALE,
    conditioning=ConditioningAdapter({
        "attention_mask": "attention_mask",
        text.GLYPH_KEY: "txt_byt5",
        text.GLYPH_MASK_KEY: "txt_byt5_mask",
        "guidance": "guidance",
    }),
    quant=QuantPolicy(family.PRECISE_TENSORS, family.EIGHT_BIT_TENSORS),
    aspect_presets=family.ASPECT_PRESETS,
    size_note=family.size_note,
)
