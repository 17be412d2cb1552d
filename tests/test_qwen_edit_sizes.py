"""Qwen-Image-Edit's reference-image sizes: the official rescale equals diffusers' for every aspect ratio,
and the native policy keeps the image's pixels (whole latent cells, centred)."""

import pytest

from comfyui_mmdit.model_defs.qwen_image.edit_sizes import CONDITION_AREA_PLUS, VAE_AREA, area_size
from comfyui_mmdit.model_defs.reference_images import native_crop

SIZES = [(1024, 1024), (3000, 2000), (2000, 3000), (1920, 1080), (1080, 1920), (640, 480), (333, 777), (4096, 17),
         (17, 4096), (1000, 1001), (1536, 640), (96, 64)]


@pytest.mark.parametrize("width,height", SIZES)
def test_official_rescale_is_diffusers(width, height):
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_dimensions as edit_dimensions
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_dimensions as plus_dimensions

    assert area_size(width, height, VAE_AREA) == edit_dimensions(VAE_AREA, width / height)[:2]
    assert area_size(width, height, VAE_AREA) == plus_dimensions(VAE_AREA, width / height)
    assert area_size(width, height, CONDITION_AREA_PLUS) == plus_dimensions(CONDITION_AREA_PLUS, width / height)


def test_native_size_keeps_the_pixels_in_whole_cells():
    assert native_crop(3008, 2000, 16) == (0, 0, 3008, 2000)
    assert native_crop(3000, 2000, 16) == (4, 0, 2992, 2000)
    assert native_crop(1001, 777, 16) == (4, 4, 992, 768)
    with pytest.raises(ValueError, match="smaller than one latent cell"):
        native_crop(15, 400, 16)
    with pytest.raises(ValueError, match="no aspect ratio"):
        area_size(0, 10, VAE_AREA)
