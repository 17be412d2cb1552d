"""Qwen2.5-VL text encoding for Qwen-Image: parity with diffusers, every file layout, bad inputs."""

from pathlib import Path

import pytest
import torch

from comfyui_mmdit.loaders.errors import ModelFileError
from comfyui_mmdit.loaders.text_encoder import load_text_encoder
from comfyui_mmdit.loaders.tokenizers import load_tokenizer
from comfyui_mmdit.model_defs.qwen_image.family import MAX_PROMPT_TOKENS, PROMPT_TEMPLATE
from comfyui_mmdit.model_defs.text_encoders import qwen25vl
from comfyui_mmdit.tools.tiny_models import random_state_dict, write_safetensors
from comfyui_mmdit.tools.tiny_tokenizer import write_tiny_qwen_tokenizer

from helpers import comfyui_qwen25vl_names, manifest_shapes, transformers_qwen25vl

PROMPTS = ["a cat on a chair", "", "a watercolor painting of mountains at sunrise with a lake in the foreground"]
# Same weights, same token ids, fp32: the only difference allowed is summation order.
TEXT_ATOL = 1e-5


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return write_tiny_qwen_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer")


@pytest.fixture(scope="module")
def reference(tokenizer_dir):
    """diffusers' pipeline around a tiny random Qwen2.5-VL (one 128-dim head, two layers)."""
    from diffusers import QwenImagePipeline

    tokenizer = load_tokenizer(tokenizer_dir)
    model = transformers_qwen25vl(len(tokenizer), layers=2)
    model.load_state_dict(random_state_dict(model, seed=7, scale=0.1))
    pipeline = QwenImagePipeline(scheduler=None, vae=None, text_encoder=model, tokenizer=tokenizer, transformer=None)
    pipeline.prompt_template_encode_start_idx = qwen25vl.template_prefix_tokens(tokenizer, PROMPT_TEMPLATE)
    return pipeline


def _comfyui_file(reference, path: Path) -> Path:
    """The reference weights as ComfyUI's single file stores them: model.*, visual.*, lm_head.*."""
    return write_safetensors(comfyui_qwen25vl_names(reference.text_encoder.state_dict()), path)


@pytest.fixture(scope="module")
def comfyui_file(reference, tokenizer_dir):
    return _comfyui_file(reference, tokenizer_dir.parent / "qwen_2.5_vl_tiny.safetensors")


@pytest.fixture(scope="module")
def ours(comfyui_file, tokenizer_dir):
    return load_text_encoder(comfyui_file, tokenizer_path=tokenizer_dir)


@torch.no_grad()
def test_batch_matches_diffusers_encode_prompt(reference, ours):
    expected, expected_mask = reference.encode_prompt(PROMPTS, device="cpu")
    got, mask = qwen25vl.encode_prompts(ours.model, ours.tokenizer, PROMPTS, PROMPT_TEMPLATE, MAX_PROMPT_TOKENS)
    assert got.shape == expected.shape
    assert torch.equal(mask, expected_mask.long())
    torch.testing.assert_close(got, expected, atol=TEXT_ATOL, rtol=0)


@pytest.mark.parametrize("prompt", PROMPTS)
@torch.no_grad()
def test_single_prompt_matches_diffusers(reference, ours, prompt):
    expected, expected_mask = reference.encode_prompt(prompt, device="cpu")
    assert expected_mask is None  # one prompt: nothing padded, the pipeline drops the mask
    got, mask = qwen25vl.encode_prompts(ours.model, ours.tokenizer, [prompt], PROMPT_TEMPLATE, MAX_PROMPT_TOKENS)
    assert bool(mask.all())
    torch.testing.assert_close(got, expected, atol=TEXT_ATOL, rtol=0)


def test_visual_tower_and_lm_head_are_not_loaded(ours):
    names = [n for n, _ in ours.model.named_parameters()]
    assert not any("visual" in n or "lm_head" in n for n in names)


@torch.no_grad()
def test_hf_folder_and_diffusers_repo_load_the_same_model(reference, ours, tmp_path, tokenizer_dir):
    repo = tmp_path / "Qwen-Image"
    reference.text_encoder.save_pretrained(repo / "text_encoder")
    load_tokenizer(tokenizer_dir).save_pretrained(repo / "tokenizer")
    expected, _ = qwen25vl.encode_prompts(ours.model, ours.tokenizer, PROMPTS, PROMPT_TEMPLATE, MAX_PROMPT_TOKENS)
    for path in (repo, repo / "text_encoder"):  # the repo root and its text_encoder/ folder
        loaded = load_text_encoder(path)
        got, _ = qwen25vl.encode_prompts(loaded.model, loaded.tokenizer, PROMPTS, PROMPT_TEMPLATE, MAX_PROMPT_TOKENS)
        torch.testing.assert_close(got, expected, atol=0, rtol=0)


@torch.no_grad()
def test_bf16_file_with_prefix_and_tokenizer_beside_it(reference, tmp_path, tokenizer_dir, ours):
    state = {"text_encoders.qwen25_7b.transformer." + k: v for k, v in
             comfyui_qwen25vl_names(reference.text_encoder.state_dict(), language_model_only=True).items()}
    path = write_safetensors(state, tmp_path / "full_checkpoint.safetensors", dtype=torch.bfloat16)
    load_tokenizer(tokenizer_dir).save_pretrained(tmp_path / "full_checkpoint_tokenizer")
    loaded = load_text_encoder(path)  # tokenizer found beside the file
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    got, _ = qwen25vl.encode_prompts(loaded.model, loaded.tokenizer, PROMPTS[:1], PROMPT_TEMPLATE, MAX_PROMPT_TOKENS,
                                     dtype=torch.float32)
    expected, _ = qwen25vl.encode_prompts(ours.model, ours.tokenizer, PROMPTS[:1], PROMPT_TEMPLATE, MAX_PROMPT_TOKENS)
    assert got.dtype == torch.float32  # bf16 weights, fp32 activations
    assert (got - expected).abs().max() < 0.05 * expected.abs().max()


def test_full_size_language_model_matches_published_checkpoint():
    shapes = manifest_shapes("qwen25_vl_7b.comfyui")
    text = {k[len("model."):]: v for k, v in shapes.items() if k.startswith("model.")}
    config = qwen25vl.config_from_shapes(text)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
            config.intermediate_size, config.mrope_section) == (3584, 28, 28, 4, 18944, [16, 24, 24])
    model = qwen25vl.build_text_model(config)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == text
    # Everything else in the file is the vision tower, for the Edit models (a later issue).
    assert all(k.startswith("visual.") for k in shapes.keys() - {"model." + k for k in text})


def test_prompt_too_long_is_refused(ours):
    long_prompt = "cat " * (MAX_PROMPT_TOKENS + 10)
    with pytest.raises(ValueError, match=r"tokens long after the template; the limit is 1024"):
        qwen25vl.encode_prompts(ours.model, ours.tokenizer, [long_prompt], PROMPT_TEMPLATE, MAX_PROMPT_TOKENS)


def test_bad_files(tmp_path, reference, tokenizer_dir):
    not_te = write_safetensors({"txt_norm.weight": torch.ones(4), "img_in.weight": torch.zeros(4, 4),
                                "transformer_blocks.0.attn.add_q_proj.weight": torch.zeros(4, 4)},
                               tmp_path / "qwen_image_bf16.safetensors")
    with pytest.raises(ModelFileError, match="is not a text encoder.*Qwen-Image diffusion model"):
        load_text_encoder(not_te, tokenizer_path=tokenizer_dir)

    path = _comfyui_file(reference, tmp_path / "broken.safetensors")
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    del state["model.layers.1.mlp.down_proj.weight"]
    save_file(state, str(path))
    with pytest.raises(ModelFileError, match="1 tensors are missing.*layers.1.mlp.down_proj.weight"):
        load_text_encoder(path, tokenizer_path=tokenizer_dir)

    lonely = _comfyui_file(reference, tmp_path / "lonely" / "qwen.safetensors")
    with pytest.raises(ModelFileError, match="needs a tokenizer"):
        load_text_encoder(lonely)
