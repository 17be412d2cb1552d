"""HunyuanImage 2.1 family constants: latent format, sizes, quantisation policy.

Values are those of the official release (tencent/HunyuanImage-2.1: the 32x VAE's config and the
pipeline's defaults), which ComfyUI's native support uses too (latent scale 0.75289, 2K presets).
"""

from __future__ import annotations

from ..latents import LatentFormat

FAMILY = "hunyuan_image"
DISPLAY_NAME = "HunyuanImage 2.1"

# The 32x VAE: 64 channels, one scaling factor, no per-channel statistics.
LATENT_FORMAT = LatentFormat(channels=64, downscale=32, dims=2, scale=0.75289)

# The refiner's 16x VAE (model_defs/hunyuan_image/refiner_vae.py): raw latents [B, 32, 1, h, w], one scaling
# factor 1.03682 and no shift or per-channel statistics: diffusers' config (`scaling_factor`, no shift
# field) and ComfyUI's latent_formats.HunyuanImage21Refiner agree; the official pipeline subtracts a
# `shift_factor` only when the VAE's config.json sets one (that file is published with the weights, not in
# the code repository). The refiner DiT reads 64 channels per frame: the official pipeline (and diffusers'
# `_reorder_image_tokens`, ComfyUI's `process_in`) prepends a copy of the first frame and stacks frames in
# pairs along the channels, so an image's model latent is cat([z, z], dim=1) * scale, [B, 64, 1, h, w];
# back to the VAE: drop the first 32 channels (the copy), then divide by the scale.
REFINER_LATENT_FORMAT = LatentFormat(channels=32, downscale=16, dims=3, scale=1.03682)
PATCH_SIZE = 1
SIZE_MULTIPLE = LATENT_FORMAT.downscale * PATCH_SIZE

# The 2K sizes of the official release (width, height), by aspect ratio.
ASPECT_PRESETS = {
    "1:1": (2048, 2048),
    "16:9": (2560, 1536),
    "9:16": (1536, 2560),
    "4:3": (2304, 1792),
    "3:4": (1792, 2304),
}
# The model is trained for 2K output (about 4 megapixels); near 1K it makes visibly worse images.
TRAINED_PIXELS = 2048 * 2048
LOW_RESOLUTION_FRACTION = 0.6


def size_note(width: int, height: int) -> str | None:
    """A warning for sizes well below the 2K the model was trained at."""
    if width * height >= LOW_RESOLUTION_FRACTION * TRAINED_PIXELS:
        return None
    return (f"{DISPLAY_NAME} is trained for 2K images (about 4 megapixels, e.g. 2048x2048); {width}x{height} "
            f"({width * height / 1e6:.1f} MP) degrades it (blur, broken details, near 1K especially): use a 2K "
            f"aspect preset.")


# Quantized files (the pack's converter): input embeddings, time/guidance embeddings, the glyph mapper and
# the final layer stay precise (small, and the model is sensitive to them; 1-D tensors always do).
PRECISE_TENSORS = ("img_in.", "txt_in.", "time_in.", "time_r_in.", "guidance_in.", "byt5_in.", "final_layer.")
# Per-block modulation matrices: a large share of the weights, kept at 8 bits at least.
EIGHT_BIT_TENSORS = (".img_mod.", ".txt_mod.", ".modulation.")
