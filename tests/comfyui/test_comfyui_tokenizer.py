"""The real Qwen2.5 tokenizer (the one ComfyUI ships) against the family's template constants."""

from comfyui_mmdit.loaders.text_encoder import load_tokenizer
from comfyui_mmdit.model_defs.qwen_image.family import PROMPT_TEMPLATE, PROMPT_TEMPLATE_DROP
from comfyui_mmdit.model_defs.text_encoders import qwen25vl

from comfy_harness import require_comfyui


def test_real_tokenizer_template_prefix_is_34_tokens():
    tokenizer = load_tokenizer(require_comfyui() / "comfy" / "text_encoders" / "qwen25_tokenizer")
    assert qwen25vl.template_prefix_tokens(tokenizer, PROMPT_TEMPLATE) == PROMPT_TEMPLATE_DROP == 34
