"""MMDiTEmptyLatent: an empty latent of a family's shape, at the sizes the family was trained for."""

from __future__ import annotations

import torch

from ..model_defs.families import FAMILIES
from .common import CATEGORY
from .host import get_host

CUSTOM = "custom (width x height)"
ASPECTS = ["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3"]


def _family_by_display_name(name: str):
    for spec in FAMILIES.values():
        if spec.display_name == name:
            return spec
    raise ValueError(f"unknown family {name!r}; expected one of {', '.join(s.display_name for s in FAMILIES.values())}")


def preset_size(spec, aspect: str) -> tuple[int, int]:
    for label, size in spec.aspect_presets.items():
        if label.split(" ")[0] == aspect:
            return size
    raise ValueError(f"{spec.display_name} has no {aspect} preset; its presets are: "
                     f"{', '.join(spec.aspect_presets)}")


class MMDiTEmptyLatent:
    DESCRIPTION = ("An empty latent for text-to-image. Pick the family and an aspect ratio to get the size it "
                   "was trained at, or 'custom' to use width and height (rounded down to the family's size step).")
    CATEGORY = f"{CATEGORY}/latent"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        families = [spec.display_name for spec in FAMILIES.values()]
        return {"required": {
            "family": (families, {"default": families[0]}),
            "aspect": ([f"{a}" for a in ASPECTS] + [CUSTOM], {
                "default": "1:1",
                "tooltip": "Qwen-Image: 1:1 1328x1328, 16:9 1664x928, 9:16 928x1664, 4:3 1472x1140, "
                           "3:4 1140x1472, 3:2 1584x1056, 2:3 1056x1584.",
            }),
            "width": ("INT", {"default": 1328, "min": 16, "max": 8192, "step": 16,
                              "tooltip": "Used with 'custom'. Rounded down to a multiple of 16."}),
            "height": ("INT", {"default": 1328, "min": 16, "max": 8192, "step": 16,
                               "tooltip": "Used with 'custom'. Rounded down to a multiple of 16."}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 64}),
        }}

    def generate(self, family, aspect, width, height, batch_size=1):
        spec = _family_by_display_name(family)
        if aspect != CUSTOM:
            width, height = preset_size(spec, aspect)
        step = spec.size_multiple
        width, height = (width // step) * step, (height // step) * step
        if width < step or height < step:
            raise ValueError(f"{spec.display_name} images must be at least {step}x{step} pixels")
        fmt = spec.latent_format
        latent = torch.zeros([batch_size, fmt.channels, height // fmt.downscale, width // fmt.downscale],
                             device=get_host().intermediate_device())
        return ({"samples": latent},)
