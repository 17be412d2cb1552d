"""Qwen2.5-VL image preprocessing for the vision tower, on ComfyUI IMAGE tensors [B, H, W, 3] in 0..1.

What the official path does, and what this mirrors step by step:
1. diffusers' Qwen-Image-Edit pipelines first resize the (PIL) image with their VaeImageProcessor (PIL
   Lanczos) to `calculate_dimensions(area, width / height)`: sides rounded to multiples of 32 at an area of
   1024*1024 (QwenImageEditPipeline) or 384*384 (QwenImageEditPlusPipeline, its CONDITION_IMAGE_SIZE).
   `preprocess(..., target_area=...)` does this step; target_area=None skips it.
2. transformers' Qwen2-VL image processor: `smart_resize` (sides to multiples of patch*merge = 28, area
   kept within [min_pixels, max_pixels]) with PIL bicubic, rescale by 1/255, normalise with the CLIP
   mean/std, then cut into patches: each row of `pixel_values` is one 14x14 patch repeated over the 2
   temporal frames, flattened as (channel, frame, y, x), and the rows ordered so that every 2x2 group of
   patches the merger fuses is contiguous. grid_thw = (1, H/14, W/14) per image.

Resizing is Pillow's own (`pil_resize`), on the 8-bit levels a PIL image holds: an image whose values are
multiples of 1/255 (what ComfyUI's image loader gives) is treated exactly as the PIL image it came from, and
values between the levels are rounded to them first, as converting to a PIL image would. The rescale and
normalisation follow transformers' arithmetic (x * (1/255) in float64, stored float32, normalised in
float32), so pixel_values come out bit-identical to transformers' processor (PIL backend).
"""

from __future__ import annotations

import math

import numpy as np
import torch

# OpenAI CLIP's normalisation (transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# The published Qwen2.5-VL / Qwen-Image-Edit processor configuration (preprocessor_config.json).
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 16384  # 12845056
PATCH_SIZE = 14
TEMPORAL_PATCH_SIZE = 2
MERGE_SIZE = 2
EDIT_AREA = 1024 * 1024  # QwenImageEditPipeline: the image given to the processor
EDIT_PLUS_AREA = 384 * 384  # QwenImageEditPlusPipeline: CONDITION_IMAGE_SIZE


# --- sizes --------------------------------------------------------------------------------------------------
def calculate_dimensions(target_area: int, ratio: float) -> tuple[int, int]:
    """diffusers' Qwen-Image-Edit size rule: (width, height) at about `target_area` pixels with aspect
    `ratio` = width / height, each side rounded to a multiple of 32 (Python's round: halves to even)."""
    width = math.sqrt(target_area * ratio)
    height = width / ratio
    return round(width / 32) * 32, round(height / 32) * 32


def smart_resize(height: int, width: int, factor: int = PATCH_SIZE * MERGE_SIZE, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """transformers' rule: (height, width) as multiples of `factor`, area within [min_pixels, max_pixels],
    the aspect ratio kept as closely as that allows. ValueError for an aspect ratio over 200."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"the image's aspect ratio must be under 200, got {max(height, width) / min(height, width)}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


# --- resampling ----------------------------------------------------------------------------------------------
PIL_FILTERS = {"bicubic": "BICUBIC", "lanczos": "LANCZOS"}


def pil_resize(levels: torch.Tensor, height: int, width: int, filter_name: str) -> torch.Tensor:
    """PIL `Image.resize((width, height), filter)` of an 8-bit RGB image given as levels 0..255 in a
    float64 tensor [3, H, W] (channels first), returned the same way.

    Pillow itself does the work, because the official pipelines hand it PIL images: its fixed-point filters
    and the order of its two passes (which recent versions choose per size) then agree with the official
    path on the same machine, pixel for pixel."""
    from PIL import Image

    if tuple(levels.shape[-2:]) == (height, width):
        return levels
    array = levels.to("cpu", torch.uint8).permute(1, 2, 0).contiguous().numpy()
    resized = Image.fromarray(array).resize((width, height), getattr(Image.Resampling, PIL_FILTERS[filter_name]))
    return torch.from_numpy(np.array(resized, dtype=np.uint8)).permute(2, 0, 1).to(torch.float64)


# --- the processor ------------------------------------------------------------------------------------------
def patchify(image: torch.Tensor, patch_size: int = PATCH_SIZE, merge_size: int = MERGE_SIZE,
             temporal_patch_size: int = TEMPORAL_PATCH_SIZE) -> tuple[torch.Tensor, int, int]:
    """[C, H, W] (sides multiples of patch*merge) -> ([grid_h*grid_w, C*T*p*p], grid_h, grid_w) in
    transformers' order (merge groups contiguous; the one image repeated over the T frames)."""
    channels, height, width = image.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    patches = image.reshape(channels, grid_h // merge_size, merge_size, patch_size,
                            grid_w // merge_size, merge_size, patch_size)
    patches = patches.permute(1, 4, 2, 5, 0, 3, 6)  # (gh, gw, mh, mw, C, ph, pw)
    patches = patches.unsqueeze(5).expand(*patches.shape[:5], temporal_patch_size, *patches.shape[5:])
    return patches.reshape(grid_h * grid_w, channels * temporal_patch_size * patch_size * patch_size), grid_h, grid_w


def processor_size(height: int, width: int, target_area: int | None = None, min_pixels: int = MIN_PIXELS,
                   max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """The (height, width) the vision tower sees for an input of height x width."""
    if target_area is not None:
        width, height = calculate_dimensions(target_area, width / height)
    return smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels)


def preprocess(images: torch.Tensor, target_area: int | None = None, min_pixels: int = MIN_PIXELS,
               max_pixels: int = MAX_PIXELS) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI IMAGE [B, H, W, 3] (0..1) -> (pixel_values [sum of patches, 3*2*14*14] float32,
    grid_thw [B, 3] long), what the official pipeline hands the vision tower for these images.

    target_area: the Edit pipelines' first resize (EDIT_AREA for Qwen-Image-Edit, EDIT_PLUS_AREA for the
    2509/2511 "Plus" pipeline; None: none). min_pixels / max_pixels: the processor's area bounds.
    A list of images of different sizes may be given instead of one batch tensor."""
    batch = list(images) if not isinstance(images, torch.Tensor) or images.ndim == 4 else [images]
    # transformers' arithmetic exactly: rescale in float64 (x * (1/255)), stored as float32, then normalise
    # in float32 with float32 mean/std; so pixel_values come out bit-identical, not merely within an ulp.
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(CLIP_STD, dtype=torch.float32)[:, None, None]
    all_patches, grids = [], []
    for image in batch:
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"expected RGB images [H, W, 3], got shape {list(image.shape)}")
        # What converting to a PIL image does: 8-bit levels.
        levels = (image.detach().to("cpu", torch.float64).clamp(0, 1) * 255).round().permute(2, 0, 1)
        height, width = levels.shape[-2:]
        if target_area is not None:
            new_w, new_h = calculate_dimensions(target_area, width / height)
            levels = pil_resize(levels, new_h, new_w, "lanczos")
            height, width = new_h, new_w
        new_h, new_w = smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels)
        levels = pil_resize(levels, new_h, new_w, "bicubic")
        normalised = ((levels * (1 / 255)).float() - mean) / std
        patches, grid_h, grid_w = patchify(normalised)
        all_patches.append(patches)
        grids.append((1, grid_h, grid_w))
    device = images.device if isinstance(images, torch.Tensor) else batch[0].device
    return torch.cat(all_patches).to(device), torch.tensor(grids, dtype=torch.long, device=device)
