"""Qwen-Image-Edit's image sizes: the official rescale of each reference image, or the image's own size.

The official pipelines (diffusers' QwenImageEditPipeline / QwenImageEditPlusPipeline, the same numbers as
the official release) resize every input to a fixed area at its own aspect ratio, sides rounded to
multiples of 32 with Python's round (ties to even):
- the VAE path (the reference latents, and the output size unless given): about 1 megapixel (1024 x 1024);
- the vision path (Qwen2.5-VL reading the image): the same image for Edit, 384 x 384 for Edit-2509/2511.
Rescaling a 3000x2000 photo to 1 MP and back is where the zoom and shift users see come from; the
"native" policy (model_defs/reference_images.py) keeps the image's own pixels instead.
"""

from __future__ import annotations

from ..text_encoders.qwen_image_processor import EDIT_AREA, EDIT_PLUS_AREA, calculate_dimensions

VAE_AREA = EDIT_AREA  # about 1 MP: the VAE path of both pipelines (and Edit's vision path)
CONDITION_AREA_PLUS = EDIT_PLUS_AREA  # Edit-2509 / 2511's vision path


def area_size(width: int, height: int, area: int) -> tuple[int, int]:
    """(width, height) of about `area` pixels at the aspect ratio width / height, sides multiples of 32
    (as the official pipelines compute them)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"an image of {width}x{height} pixels has no aspect ratio")
    return calculate_dimensions(area, width / height)
