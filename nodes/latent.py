"""MMDiTEmptyLatent: an empty latent of a family's shape, at the sizes the family was trained for."""

from __future__ import annotations

import torch

from ..model_defs.families import FAMILIES, family_by_display_name
from .common import CATEGORY, log
from .host import get_host

CUSTOM = "custom (width x height)"
ASPECTS = ["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3"]


def preset_size(spec, aspect: str) -> tuple[int, int]:
    try:
        return spec.aspect_presets[aspect]
    except KeyError:
        raise ValueError(f"{spec.display_name} has no {aspect} preset; its presets are: "
                         f"{', '.join(spec.aspect_presets)}") from None


def preset_table() -> dict:
    """{family display name: {aspect: [width, height]}}: for the tooltip, and for the web extension that
    fills width and height in when a preset is picked (web/mmdit.js)."""
    return {spec.display_name: {a: list(size) for a, size in spec.aspect_presets.items()} for spec in FAMILIES.values()}


def _tooltip() -> str:
    lines = [f"{family}: " + ", ".join(f"{a} {w}x{h}" for a, (w, h) in sizes.items())
             for family, sizes in preset_table().items()]
    return ("A trained size of the family, or 'custom' for any size. With a preset, width and height must be "
            "its size (picking a preset in the editor sets them). " + "; ".join(lines) + ".")


def _size_steps() -> str:
    return "; ".join(f"{spec.display_name}: a multiple of {spec.size_multiple}" for spec in FAMILIES.values())


class MMDiTEmptyLatent:
    DESCRIPTION = ("An empty latent for text-to-image, at a size the family was trained at (aspect presets) or "
                   "any size ('custom': width and height, rounded down to the family's size step).")
    CATEGORY = f"{CATEGORY}/latent"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        families = [spec.display_name for spec in FAMILIES.values()]
        width, height = preset_size(next(iter(FAMILIES.values())), "1:1")
        return {"required": {
            "family": (families, {"default": families[0]}),
            "aspect": (ASPECTS + [CUSTOM], {"default": "1:1", "tooltip": _tooltip(), "mmdit_presets": preset_table()}),
            "width": ("INT", {"default": width, "min": 16, "max": 8192, "step": 16,
                              "tooltip": f"Image width in pixels ({_size_steps()})."}),
            "height": ("INT", {"default": height, "min": 16, "max": 8192, "step": 16,
                               "tooltip": f"Image height in pixels ({_size_steps()})."}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 64}),
        }}

    def generate(self, family, aspect, width, height, batch_size=1):
        spec = family_by_display_name(family)
        if aspect != CUSTOM:
            preset = preset_size(spec, aspect)
            if (width, height) != preset:
                raise ValueError(
                    f"aspect {aspect} makes {preset[0]}x{preset[1]} for {spec.display_name}, but width and height "
                    f"are {width}x{height}: set them to {preset[0]}x{preset[1]}, or choose '{CUSTOM}' to make "
                    f"{width}x{height}")
        step = spec.size_multiple
        rounded = (width // step) * step, (height // step) * step
        if rounded[0] < step or rounded[1] < step:
            raise ValueError(f"{spec.display_name} images must be at least {step}x{step} pixels, got {width}x{height}")
        if rounded != (width, height):
            log.warning("%s sizes are multiples of %d: %dx%d makes a %dx%d image", spec.display_name, step,
                        width, height, *rounded)
        note = spec.size_note(*rounded) if spec.size_note else None
        if note:
            log.warning("%s", note)
        fmt = spec.latent_format
        latent = torch.zeros([batch_size, fmt.channels, rounded[1] // fmt.downscale, rounded[0] // fmt.downscale],
                             device=get_host().intermediate_device())
        return ({"samples": latent},)
