"""Qwen-Image-Edit prompt encoding (the instruction with its reference images through Qwen2.5-VL): parity with
diffusers' QwenImageEditPipeline / QwenImageEditPlusPipeline encode_prompt at a tiny configuration, fp32.

The oracle is fed as its own __call__ feeds encode_prompt: each image resized by the pipeline's
VaeImageProcessor (PIL Lanczos) to calculate_dimensions(area), then the Qwen2-VL processor (PIL backend,
the official pixel limits). The parity images have sizes for which the first resize is the identity and the
processor's resize changes at most one side: there our torch preprocessing gives bit-identical pixel_values,
so the whole path is compared to 1e-5 (measured: 0, bit-identical). Sizes that need both resizes on both
sides are compared given the processor's own pixel_values (1e-5), and through our preprocessing with the
looser bound the pixels' one- or two-level differences allow.

One adjustment to the oracle: diffusers calls the text encoder without `mm_token_type_ids`, and transformers 5
then gives the image tokens text positions (transformers 4, the release's, derived them from the image token
id). The reference model is wrapped to pass them, restoring the official 3-D positions; a test shows the
unwrapped oracle differs, i.e. that the positions are checked.
"""

from pathlib import Path

import pytest
import torch

from comfyui_mmdit.loaders.text_encoder import load_text_encoder, load_vision_tower
from comfyui_mmdit.loaders.tokenizers import load_tokenizer
from comfyui_mmdit.model_defs.qwen_image import edit_text
from comfyui_mmdit.model_defs.text_encoders import qwen25vl_vision as vision
from comfyui_mmdit.model_defs.text_encoders import qwen_image_processor as processor
from comfyui_mmdit.tools.tiny_models import write_safetensors
from comfyui_mmdit.tools.tiny_tokenizer import write_tiny_qwen_tokenizer

from helpers import (
    as_pil, comfyui_qwen25vl_names, official_qwen_processor, smooth_image, transformers_qwen25vl_with_vision,
    with_token_types,
)

# Same weights, same ids, same pixels, fp32: only summation order differs.
ATOL = 1e-5
SHORT = "make the sky green"
LONG = ("replace the red chair with a blue armchair, keep the cat exactly where it is, add warm evening light "
        "from the left and a hand-painted sign that reads OPEN above the door, ") * 4

# (width, height): calculate_dimensions(area) is the identity, the processor resizes one side at most.
EDIT_SIZE = (896, 1152)
PLUS_TWO = [(448, 320), (224, 672)]
PLUS_THREE = [(320, 448), (672, 224), (352, 448)]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return write_tiny_qwen_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer")


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="module")
def reference_model(tokenizer):
    return transformers_qwen25vl_with_vision(tokenizer)


@pytest.fixture(scope="module")
def official_processor(tokenizer):
    return official_qwen_processor(tokenizer)


def _pipeline(kind, model, tokenizer, official_processor):
    from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline

    cls = {"edit": QwenImageEditPipeline, "edit_plus": QwenImageEditPlusPipeline}[kind]
    pipeline = cls(scheduler=None, vae=None, text_encoder=model, tokenizer=tokenizer, processor=official_processor,
                   transformer=None)
    # 64 with Qwen's tokenizer; the same text (system block + user header) in the tiny one's tokens
    pipeline.prompt_template_encode_start_idx = edit_text.template_drop(tokenizer)
    return pipeline


@pytest.fixture(scope="module")
def pipelines(reference_model, tokenizer, official_processor):
    typed = with_token_types(transformers_qwen25vl_with_vision(tokenizer), tokenizer.convert_tokens_to_ids("<|image_pad|>"))
    typed.load_state_dict(reference_model.state_dict())
    return {kind: _pipeline(kind, typed, tokenizer, official_processor) for kind in ("edit", "edit_plus")}


@pytest.fixture(scope="module")
def ours(reference_model, tokenizer_dir):
    """Our text model and tower, loaded from the reference weights stored as ComfyUI's single file."""
    state = comfyui_qwen25vl_names(reference_model.state_dict())
    path = write_safetensors(state, Path(tokenizer_dir).parent / "qwen_2.5_vl_tiny.safetensors")
    text = load_text_encoder(path, tokenizer_path=tokenizer_dir)
    return text.model, load_vision_tower(path).model, text.tokenizer


def _official_encode(pipeline, kind, images, prompt):
    """encode_prompt fed as the pipeline's __call__ feeds it (the vision path's resize first)."""
    area = processor.EDIT_AREA if kind == "edit" else processor.EDIT_PLUS_AREA
    resized = []
    for image in images:
        height, width = image.shape[:2]
        w, h = processor.calculate_dimensions(area, width / height)
        resized.append(pipeline.image_processor.resize(as_pil(image), h, w))
    prompt_images = resized[0] if kind == "edit" else resized
    return pipeline.encode_prompt(prompt, image=prompt_images, device="cpu")


def _ours_encode(ours, prompt, images, kind):
    text_model, vision_model, tokenizer = ours
    return edit_text.encode_edit_prompt(text_model, vision_model, tokenizer, prompt, images, kind)


CASES = [("edit", [EDIT_SIZE], SHORT), ("edit", [EDIT_SIZE], LONG),
         ("edit_plus", PLUS_TWO, SHORT), ("edit_plus", PLUS_TWO, LONG),
         ("edit_plus", PLUS_THREE, SHORT), ("edit_plus", PLUS_THREE, LONG),
         ("edit_plus", PLUS_TWO[:1], SHORT)]


@pytest.mark.parametrize("kind,sizes,prompt", CASES)
@torch.no_grad()
def test_matches_diffusers_encode_prompt(pipelines, ours, kind, sizes, prompt):
    images = [smooth_image(h, w, seed=31 * i + w + h) for i, (w, h) in enumerate(sizes)]
    for w, h in sizes:  # the oracle's first resize is the identity (see the module docstring)
        area = processor.EDIT_AREA if kind == "edit" else processor.EDIT_PLUS_AREA
        assert processor.calculate_dimensions(area, w / h) == (w, h)
    expected, expected_mask = _official_encode(pipelines[kind], kind, images, prompt)
    got, mask = _ours_encode(ours, prompt, images, kind)
    assert expected_mask is None and mask is None  # one prompt: nothing padded
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    print(kind, len(sizes), "images", got.shape[1], "tokens: max abs", (got - expected).abs().max().item())


RESIZED = [(517, 333), (301, 97)]  # (width, height): both resizes change both sides


@torch.no_grad()
def test_resized_images_same_pixels_match(pipelines, ours, official_processor):
    """Sizes that need both resizes: the encoders agree to 1e-5 given the processor's own pixel_values."""
    images = [smooth_image(h, w, seed=i + 1) for i, (w, h) in enumerate(RESIZED)]
    expected, _ = _official_encode(pipelines["edit_plus"], "edit_plus", images, SHORT)
    resized = [pipelines["edit_plus"].image_processor.resize(as_pil(image), h, w) for image, (w, h) in
               zip(images, [processor.calculate_dimensions(processor.EDIT_PLUS_AREA, w / h) for w, h in RESIZED])]
    official = official_processor.image_processor(images=resized, return_tensors="pt")
    text_model, vision_model, tokenizer = ours
    got, mask = edit_text.encode_preprocessed_edit_prompt(
        text_model, vision_model, tokenizer, SHORT, official["pixel_values"], official["image_grid_thw"], "edit_plus")
    assert mask is None and got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    print("resized images, the processor's pixels: max abs", (got - expected).abs().max().item())


@torch.no_grad()
def test_resized_images_through_our_preprocessing_match(pipelines, ours):
    """The same sizes through our own preprocessing (Pillow's resampling, as the pipeline's): 1e-5 again."""
    images = [smooth_image(h, w, seed=i + 1) for i, (w, h) in enumerate(RESIZED)]
    expected, _ = _official_encode(pipelines["edit_plus"], "edit_plus", images, SHORT)
    got, _ = _ours_encode(ours, SHORT, images, "edit_plus")
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@torch.no_grad()
def test_oracle_without_token_types_gives_text_positions(reference_model, tokenizer, official_processor, ours):
    """diffusers as it stands with transformers 5 (no mm_token_type_ids): image tokens at text positions, a
    different result; that the parity test sees positions at all."""
    pipeline = _pipeline("edit_plus", reference_model, tokenizer, official_processor)
    images = [smooth_image(h, w, seed=5) for w, h in PLUS_TWO]
    text_positions, _ = _official_encode(pipeline, "edit_plus", images, SHORT)
    got, _ = _ours_encode(ours, SHORT, images, "edit_plus")
    assert (got - text_positions).abs().max() > 1e-2


def test_positions_match_transformers_get_rope_index(reference_model, tokenizer):
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    grid = torch.tensor([[1, 16, 24], [1, 48, 16], [1, 4, 4]])
    counts = vision.tokens_per_image(grid)
    text = edit_text.edit_prompt_text(SHORT, 3, "edit_plus")
    ids = edit_text.expand_image_tokens(tokenizer(text)["input_ids"], image_id, counts)
    expected, _ = reference_model.model.get_rope_index(
        torch.tensor([ids]), mm_token_type_ids=(torch.tensor([ids]) == image_id).int(), image_grid_thw=grid)
    got = edit_text.multimodal_position_ids(ids, image_id, grid)
    assert torch.equal(got, expected[:, 0])


def test_prompt_text_is_the_pipelines():
    assert edit_text.edit_prompt_text("P", 1, "edit").endswith(
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>P<|im_end|>\n<|im_start|>assistant\n")
    assert edit_text.edit_prompt_text("P", 2, "edit_plus").endswith(
        "<|im_start|>user\nPicture 1: <|vision_start|><|image_pad|><|vision_end|>"
        "Picture 2: <|vision_start|><|image_pad|><|vision_end|>P<|im_end|>\n<|im_start|>assistant\n")


def test_bad_inputs_are_refused(ours):
    image = smooth_image(64, 64, 0)
    with pytest.raises(ValueError, match="at most 1 reference image,"):
        _ours_encode(ours, SHORT, [image, image], "edit")
    with pytest.raises(ValueError, match="at most 3 reference images"):
        _ours_encode(ours, SHORT, [image] * 4, "edit_plus")
    with pytest.raises(ValueError, match="at least one"):
        _ours_encode(ours, SHORT, [], "edit_plus")
    with pytest.raises(ValueError, match="unknown Qwen-Image-Edit variant"):
        _ours_encode(ours, SHORT, [image], "edit_max")
    with pytest.raises(ValueError, match="RGB"):
        _ours_encode(ours, SHORT, [torch.rand(64, 64, 4)], "edit")


def test_long_prompt_is_refused_not_cut(ours):
    text_model, vision_model, tokenizer = ours
    words = "cat " * 1100
    assert len(tokenizer(words)["input_ids"]) > 1024
    with pytest.raises(ValueError, match="limit is 1024"):
        _ours_encode(ours, words, [smooth_image(64, 64, 0)], "edit_plus")


@torch.no_grad()
def test_bf16_weights_fp32_activations(ours, tokenizer_dir):
    """bf16 weights (stored or cast), activations in fp32 as asked: close to the fp32 model, and fp32 out."""
    path = Path(tokenizer_dir).parent / "qwen_2.5_vl_tiny.safetensors"
    text = load_text_encoder(path, tokenizer_path=tokenizer_dir, dtype=torch.bfloat16)
    tower = load_vision_tower(path, dtype=torch.bfloat16).model
    assert text.model.embed_tokens.weight.dtype == torch.bfloat16
    images = [smooth_image(h, w, seed=3) for w, h in PLUS_TWO]
    expected, _ = _ours_encode(ours, SHORT, images, "edit_plus")
    got, _ = edit_text.encode_edit_prompt(text.model, tower, text.tokenizer, SHORT, images, "edit_plus",
                                          dtype=torch.float32)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    difference = (got - expected).abs()
    print("bf16 weights, fp32 activations: max abs", difference.max().item(), "mean", difference.mean().item())
    assert difference.mean() < 0.05
