"""Reference images before they reach a VAE or a vision tower: one RGB image per reference, and the two
size policies.

- official: the official pipeline's rescale (a family's ReferenceSpec.official_size), resampled the way it
  resamples: Pillow's Lanczos on 8-bit levels (diffusers' VaeImageProcessor on a PIL image), through
  Pillow itself (qwen_image_processor.pil_resize), so the pixels are the official path's.
- native: the image's own pixels, centre-cropped to whole cells of the family's size step (Qwen-Image: 16
  pixels, one 2x2 patch of 8x VAE cells). Nothing is resampled, so the latent grid lies on the input's
  pixel grid and an edit that changes nothing keeps every pixel where it was.
"""

from __future__ import annotations

import torch

from .text_encoders.qwen_image_processor import pil_resize

POLICIES = ("official", "native")
# A native-size image over this many times the official area gets a warning (large_size_warning).
LARGE_NATIVE = 4


def rgb_frames(image: torch.Tensor, label: str) -> list[tuple[torch.Tensor, str | None]]:
    """A ComfyUI IMAGE ([B, H, W, C] or [H, W, C]) -> one [H, W, 3] frame per batch entry, with a note
    when channels were converted: grey-scale (1 channel) is repeated to RGB, an alpha channel (2 or 4
    channels) is dropped as the official pipelines' `convert("RGB")` drops it. NaN or infinite pixels are
    refused: clamping would keep a NaN, and the VAE would then report a NaN latent as its own overflow."""
    if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4):
        raise ValueError(f"{label} is not an image: expected an IMAGE [batch, height, width, channels], got "
                         f"{type(image).__name__}{list(image.shape) if isinstance(image, torch.Tensor) else ''}")
    frames = image if image.ndim == 4 else image[None]
    channels = frames.shape[-1]
    if channels == 3:
        note = None
    elif channels in (1, 2):
        note = f"{label} is grey-scale{' with alpha' if channels == 2 else ''}: used as RGB" + (
            " (alpha dropped)" if channels == 2 else "")
        frames = frames[..., :1].expand(*frames.shape[:-1], 3)
    elif channels == 4:
        note = f"{label} has an alpha channel: dropped (as the official pipeline's convert('RGB') does)"
        frames = frames[..., :3]
    else:
        raise ValueError(f"{label} has {channels} channels; expected RGB (3), RGBA (4) or grey-scale (1)")
    if frames.shape[0] == 0:
        raise ValueError(f"{label} is an empty batch")
    bad = (~torch.isfinite(frames)).sum().item() if frames.is_floating_point() else 0
    if bad:
        raise ValueError(f"{label} has {bad} NaN or infinite pixel value{'s' if bad > 1 else ''} (of "
                         f"{frames.numel()}): the node that made the image failed; fix or replace it")
    return [(frame.float().clamp(0, 1), note) for frame in frames]


def official_pixels(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[H, W, 3] in 0..1 -> [height, width, 3]: PIL's Lanczos resize of the 8-bit image (what the official
    pipeline does to its PIL input), then levels / 255 in float32."""
    levels = (image.detach().to("cpu", torch.float64).clamp(0, 1) * 255).round().permute(2, 0, 1)
    if levels.shape[-2:] != (height, width):
        levels = pil_resize(levels, height, width, "lanczos")
    return (levels.float() / 255.0).permute(1, 2, 0).to(image.device)


def check_size(width: int, height: int, cell: int) -> None:
    """ValueError for an image with a side shorter than one `cell` (under either policy: the native one would
    crop it to nothing, the official one would blow a sliver up to a megapixel)."""
    if width < cell or height < cell:
        raise ValueError(f"an image of {width}x{height} pixels is smaller than one latent cell ({cell}x{cell} "
                         f"pixels): it cannot be a reference image")


def native_crop(width: int, height: int, cell: int) -> tuple[int, int, int, int]:
    """(left, top, new width, new height): the centred window of whole `cell`-pixel cells."""
    check_size(width, height, cell)
    new_width, new_height = width // cell * cell, height // cell * cell
    return (width - new_width) // 2, (height - new_height) // 2, new_width, new_height


def prepare(frame: torch.Tensor, policy: str, official_size, cell: int) -> tuple[torch.Tensor, str | None]:
    """One RGB frame -> (the VAE path's pixels, a note on what changed) under the size policy."""
    height, width = frame.shape[:2]
    if policy not in POLICIES:
        raise ValueError(f"unknown resolution policy {policy!r}; expected one of {', '.join(POLICIES)}")
    check_size(width, height, cell)
    if policy == "official":
        new_width, new_height = official_size(width, height)
        if min(new_width, new_height) < cell:
            raise ValueError(f"an image of {width}x{height} pixels rescales to {new_width}x{new_height}, "
                             f"smaller than one latent cell ({cell} pixels)")
        note = None if (new_width, new_height) == (width, height) else \
            f"{width}x{height} rescaled to {new_width}x{new_height} (official)"
        return official_pixels(frame, new_width, new_height), note
    left, top, new_width, new_height = native_crop(width, height, cell)
    note = None if (new_width, new_height) == (width, height) else \
        f"{width}x{height} cropped to {new_width}x{new_height} (whole {cell}-pixel cells, centred)"
    return frame[top:top + new_height, left:left + new_width], note


def large_size_warning(width: int, height: int, official_size) -> str | None:
    """A warning for a native-size image far larger than the official size (not refused: a large card may
    want it, but every step attends over all of its tokens, and the model was trained near that size)."""
    official_width, official_height = official_size(width, height)
    ratio = width * height / (official_width * official_height)
    if ratio <= LARGE_NATIVE:
        return None
    return (f"{width}x{height} is {ratio:.1f}x the area the model was trained at ({official_width}x"
            f"{official_height}): sampling is much slower and may drift; downscale the image or use the official "
            f"resolution if this is not meant")
