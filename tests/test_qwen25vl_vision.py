"""Qwen2.5-VL vision tower and image preprocessing (Qwen-Image-Edit's image prompts): the full-size build
against the published checkpoint, the preprocessing against transformers' image processor (PIL backend, fed
as diffusers' edit pipelines feed it), the features against transformers' get_image_features, and loading."""

import numpy as np
import PIL.Image
import pytest
import torch

from comfyui_mmdit.model_defs.ops import StandaloneOps
from comfyui_mmdit.model_defs.text_encoders import qwen25vl_vision as vision
from comfyui_mmdit.model_defs.text_encoders import qwen_image_processor as processor
from comfyui_mmdit.tools.tiny_models import tiny_qwen_vision_config, tiny_qwen_vision_state_dict

from helpers import as_pil, manifest_shapes, smooth_image

# pixel_values: Pillow resamples on both sides and the arithmetic after it is transformers', so float32
# rounding only.
EXACT_ATOL = 1e-6
FEATURE_ATOL = 1e-5


@pytest.fixture(scope="module")
def official_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    return Qwen2VLImageProcessorPil(min_pixels=processor.MIN_PIXELS, max_pixels=processor.MAX_PIXELS)


SIZES = [(56, 56), (112, 84), (100, 77), (333, 517), (29, 401), (27, 27), (200, 96)]


@pytest.mark.parametrize("height,width", SIZES)
def test_preprocess_matches_transformers_processor(official_processor, height, width):
    image = smooth_image(height, width, seed=height * 1000 + width)
    expected = official_processor(images=[as_pil(image)], return_tensors="pt")
    pixel_values, grid = processor.preprocess(image[None])
    assert grid.tolist() == expected["image_grid_thw"].tolist()
    assert pixel_values.shape == expected["pixel_values"].shape
    torch.testing.assert_close(pixel_values, expected["pixel_values"], atol=EXACT_ATOL, rtol=0)


@pytest.mark.parametrize("area", [processor.EDIT_AREA, processor.EDIT_PLUS_AREA])
@pytest.mark.parametrize("height,width", [(333, 517), (640, 480), (97, 301)])
def test_edit_pipeline_path(official_processor, area, height, width):
    """diffusers' edit pipelines: VaeImageProcessor.resize (PIL Lanczos) to calculate_dimensions(area), then
    the processor; ours from the same image in one call."""
    from diffusers.image_processor import VaeImageProcessor
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_dimensions

    image = smooth_image(height, width, seed=area + height)
    w, h, _ = calculate_dimensions(area, width / height)
    assert processor.calculate_dimensions(area, width / height) == (w, h)
    resized = VaeImageProcessor(vae_scale_factor=16).resize(as_pil(image), h, w)
    expected = official_processor(images=[resized], return_tensors="pt")
    pixel_values, grid = processor.preprocess(image[None], target_area=area)
    assert grid.tolist() == expected["image_grid_thw"].tolist()
    torch.testing.assert_close(pixel_values, expected["pixel_values"], atol=EXACT_ATOL, rtol=0)


def test_batch_and_list_inputs():
    a, b = smooth_image(84, 112, 1), smooth_image(56, 56, 2)
    pv, grid = processor.preprocess([a, b])
    pa, ga = processor.preprocess(a[None])
    pb, gb = processor.preprocess(b[None])
    assert torch.equal(pv, torch.cat([pa, pb])) and grid.tolist() == ga.tolist() + gb.tolist()
    with pytest.raises(ValueError, match="RGB"):
        processor.preprocess(torch.rand(1, 28, 28, 4))
    with pytest.raises(ValueError, match="aspect ratio"):
        processor.preprocess(torch.rand(1, 2, 500, 3))


# --- the tower ----------------------------------------------------------------------------------------------
def test_full_size_tower_matches_published_checkpoint():
    shapes = manifest_shapes("qwen25_vl_7b.comfyui")
    visual = {k[len("visual."):]: v for k, v in shapes.items() if k.startswith("visual.")}
    assert len(visual) == 390
    config = vision.config_from_shapes(visual)
    assert (config.hidden_size, config.depth, config.num_heads, config.intermediate_size, config.out_hidden_size,
            config.patch_size, config.temporal_patch_size, config.spatial_merge_size, config.window_size,
            config.fullatt_block_indexes) == (1280, 32, 16, 3420, 3584, 14, 2, 2, 112, (7, 15, 23, 31))
    model = vision.build_vision_model(config, StandaloneOps)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == visual
    # transformers 5 stores the same tensors under model.visual.
    tf = manifest_shapes("qwen25_vl_7b.transformers")
    assert {k[len("model.visual."):]: v for k, v in tf.items() if k.startswith("model.visual.")} == visual


def test_config_from_shapes_refuses_nonsense():
    shapes = {k[len("visual."):]: tuple(v.shape) for k, v in tiny_qwen_vision_state_dict().items()}
    assert vision.config_from_shapes(shapes) == tiny_qwen_vision_config()
    with pytest.raises(KeyError):
        vision.config_from_shapes({k: v for k, v in shapes.items() if not k.startswith("merger.")})
    with pytest.raises(ValueError):
        vision.config_from_shapes({**shapes, "merger.mlp.0.weight": (500, 500)})


@pytest.fixture(scope="module")
def tiny_weights():
    return tiny_qwen_vision_state_dict(seed=5)


@pytest.fixture(scope="module")
def reference_model(tiny_weights):
    """transformers' full Qwen2.5-VL (tiny language model, our tiny tower's config), the tower's weights."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tower = vision.transformers_vision_config(tiny_qwen_vision_config())
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=64, hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1, rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
                         bos_token_id=None, eos_token_id=None),
        vision_config=tower.to_dict(),
    )
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    missing = model.model.visual.load_state_dict({k[len("visual."):]: v for k, v in tiny_weights.items()})
    assert not missing.missing_keys and not missing.unexpected_keys
    return model


@pytest.fixture(scope="module")
def ours(tiny_weights):
    model = vision.build_vision_model(tiny_qwen_vision_config(), StandaloneOps)
    model.load_state_dict({k[len("visual."):]: v for k, v in tiny_weights.items()}, assign=True)
    return model


@torch.no_grad()
def test_features_match_transformers_get_image_features(official_processor, reference_model, ours):
    # Sides multiples of 28 (no resize: our preprocessing is exact there), several attention windows (8x8
    # patches) with partial ones at the edges, two images of different sizes in one call.
    images = [smooth_image(224, 168, 11), smooth_image(56, 308, 12)]
    pil = [as_pil(i) for i in images]
    inputs = official_processor(images=pil, return_tensors="pt")
    expected = reference_model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output
    pixel_values, grid = processor.preprocess(images)
    got = vision.encode_images(ours, pixel_values, grid)
    assert got.shape == (sum(e.shape[0] for e in expected), 128)
    got_split = vision.split_features(got, grid)
    for g, e in zip(got_split, expected):
        torch.testing.assert_close(g, e, atol=FEATURE_ATOL, rtol=0)
    assert grid.tolist() == [[1, 16, 12], [1, 4, 22]]
    # and on the processor's own pixel_values, sizes that need resizing
    inputs = official_processor(images=[as_pil(smooth_image(230, 170, 13))], return_tensors="pt")
    expected = reference_model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output[0]
    got = vision.encode_images(ours, inputs["pixel_values"], inputs["image_grid_thw"])
    torch.testing.assert_close(got, expected, atol=FEATURE_ATOL, rtol=0)
    print("max abs feature difference", (got - expected).abs().max().item())


# --- loading ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def comfyui_file(tmp_path_factory, tiny_weights):
    """A tiny qwen_2.5_vl file as ComfyUI stores it: model.* (language model), visual.*, lm_head.*."""
    from comfyui_mmdit.tools.tiny_models import tiny_qwen_text_state_dict, write_safetensors
    text = tiny_qwen_text_state_dict(vocab_size=300, seed=1)
    return write_safetensors({**text, **tiny_weights}, tmp_path_factory.mktemp("te") / "qwen_2.5_vl_tiny.safetensors")


def _features(model, images=None):
    pixel_values, grid = processor.preprocess(images if images is not None else [smooth_image(112, 196, 21)])
    return vision.encode_images(model, pixel_values, grid)


@torch.no_grad()
def test_load_from_comfyui_file_hf_folder_and_fp8(comfyui_file, ours, reference_model, tmp_path):
    from safetensors.torch import load_file
    from comfyui_mmdit.loaders.text_encoder import load_vision_tower
    from comfyui_mmdit.tools.tiny_models import write_safetensors

    expected = _features(ours)
    loaded = load_vision_tower(comfyui_file)
    assert loaded.config == tiny_qwen_vision_config()
    assert torch.equal(_features(loaded.model), expected)

    folder = tmp_path / "text_encoder"  # what save_pretrained writes (transformers' checkpoint names)
    reference_model.save_pretrained(folder)
    assert any("visual." in k for k in load_file(str(next(folder.glob("*.safetensors")))))
    torch.testing.assert_close(_features(load_vision_tower(folder).model), expected, atol=0, rtol=0)
    v5 = write_safetensors(reference_model.state_dict(), tmp_path / "v5" / "model.safetensors")  # model.visual.*
    assert any(k.startswith("model.visual.") for k in load_file(str(v5)))
    torch.testing.assert_close(_features(load_vision_tower(v5).model), expected, atol=0, rtol=0)

    # FP8, every tensor plainly cast (as *_fp8_e4m3fn files are): equals fp32 weights holding those values
    state = load_file(str(comfyui_file))
    fp8 = write_safetensors({k: v.to(torch.float8_e4m3fn) for k, v in state.items()}, tmp_path / "fp8.safetensors")
    as_fp32 = write_safetensors({k: v.to(torch.float8_e4m3fn).float() for k, v in state.items()}, tmp_path / "fp32.safetensors")
    exact = _features(load_vision_tower(as_fp32).model)
    kept = load_vision_tower(fp8)  # weights stay FP8, cast per layer
    assert kept.model.blocks[0].attn.qkv.weight.dtype == torch.float8_e4m3fn
    torch.testing.assert_close(_features(kept.model), exact, atol=FEATURE_ATOL, rtol=0)
    cast = load_vision_tower(fp8, dtype=torch.float32)
    torch.testing.assert_close(_features(cast.model), exact, atol=FEATURE_ATOL, rtol=0)


def test_text_only_file_is_refused_for_vision(tmp_path):
    from comfyui_mmdit.loaders.errors import ModelFileError
    from comfyui_mmdit.loaders.text_encoder import load_vision_tower
    from comfyui_mmdit.tools.tiny_models import tiny_qwen_text_state_dict, write_safetensors

    path = write_safetensors(tiny_qwen_text_state_dict(vocab_size=300), tmp_path / "text_only.safetensors")
    with pytest.raises(ModelFileError, match="no vision tower.*Qwen-Image-Edit needs"):
        load_vision_tower(path)


def test_damaged_vision_tower_is_refused(tmp_path, tiny_weights):
    from comfyui_mmdit.loaders.errors import ModelFileError
    from comfyui_mmdit.loaders.text_encoder import load_vision_tower
    from comfyui_mmdit.tools.tiny_models import tiny_qwen_text_state_dict, write_safetensors

    damaged = {k: v for k, v in tiny_weights.items() if k != "visual.blocks.3.mlp.up_proj.weight"}
    path = write_safetensors({**tiny_qwen_text_state_dict(vocab_size=300), **damaged}, tmp_path / "damaged.safetensors")
    with pytest.raises(ModelFileError, match="1 tensors are missing"):
        load_vision_tower(path)
