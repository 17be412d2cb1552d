"""Qwen-Image family constants: latent format, prompt template, default sampling and sizes.

Values are those of the official release (Qwen/Qwen-Image on the diffusers layout: transformer, vae and
scheduler configs, and QwenImagePipeline).
"""

from __future__ import annotations

from ..latents import LatentFormat

FAMILY = "qwen_image"
DISPLAY_NAME = "Qwen-Image"

# The Qwen-Image VAE (Wan 2.1 architecture): 16 channels, 8x spatial, per-channel statistics.
LATENT_FORMAT = LatentFormat(
    channels=16,
    downscale=8,
    dims=3,
    mean=(-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
          0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921),
    std=(2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
         3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160),
)
PATCH_SIZE = 2
# Pixel sizes must be multiples of this: 8x VAE times the 2x2 patch.
SIZE_MULTIPLE = LATENT_FORMAT.downscale * PATCH_SIZE

# Text: Qwen2.5-VL-7B, last hidden state after the final norm, chat template below with its first
# 34 tokens (the system block and "<|im_start|>user\n") dropped from the output.
PROMPT_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
    "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
PROMPT_TEMPLATE_DROP = 34
MAX_PROMPT_TOKENS = 1024  # the official pipeline truncates longer prompts; we refuse them with a clear error

# Sampling as the official pipeline does it: sigmas = linspace(1, 1/steps, steps), shifted by an exponential
# time shift whose mu grows linearly with the image token count, then stretched so the last sigma is 0.02;
# true CFG with the combined prediction rescaled to the conditional one's norm.
DEFAULT_STEPS = 50
DEFAULT_CFG = 4.0
OFFICIAL_SCHEDULE = {
    "base_image_seq_len": 256,
    "max_image_seq_len": 8192,
    "base_shift": 0.5,
    "max_shift": 0.9,
    "shift_terminal": 0.02,
}
# The constant shift ComfyUI workflows commonly use with Qwen-Image (ModelSamplingAuraFlow 3.1).
COMMON_SHIFT = 3.1

# Sizes the model was trained for (width, height), from the official release notes, by aspect ratio. The
# notes give 4:3 as 1472x1140; the pipeline rounds sides down to multiples of 16, so 1140 makes 1136.
ASPECT_PRESETS = {
    "1:1": (1328, 1328),
    "16:9": (1664, 928),
    "9:16": (928, 1664),
    "4:3": (1472, 1136),
    "3:4": (1136, 1472),
    "3:2": (1584, 1056),
    "2:3": (1056, 1584),
}

# Quantized files (the pack's converter): what stays precise. 1-D tensors (norms, biases) always do;
# these are small and the model is sensitive to them: input embeddings, timestep embedding, final layer.
PRECISE_TENSORS = ("img_in.", "txt_in.", "txt_norm.", "time_text_embed.", "norm_out.", "proj_out.")
# Per-block modulation: a third of the model's weights, too big to keep at full precision on a 12-24 GB
# card, so kept at 8 bits at least whatever the file's type.
EIGHT_BIT_TENSORS = (".img_mod.", ".txt_mod.")
