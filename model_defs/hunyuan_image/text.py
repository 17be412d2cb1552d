"""HunyuanImage 2.1's text conditioning: Qwen2.5-VL for meaning, ByT5 for the text drawn in the picture.

Values are the official pipeline's (hyimage: HUNYUANIMAGE_V2_1_TEXT_ENCODER with template
"dit-llm-encode-v2", crop_start 34, text_len 1000, hidden_state_skip_layer 2, apply_final_norm False;
byt5_max_length 128), which diffusers' HunyuanImagePipeline repeats (prompt_template_encode,
prompt_template_encode_start_idx, tokenizer_max_length, tokenizer_2_max_length, hidden_state_skip_layer).

Qwen2.5-VL: the prompt in the template below (no assistant turn, unlike Qwen-Image's), the third-from-last
hidden state (the output of layer 26 of 28, before the final norm; Qwen-Image takes the last one after the
norm), the template's first 34 tokens dropped; at most 1000 tokens remain (the template's closing
<|im_end|> counts). The official code pads to 1034 tokens and truncates longer prompts; this pack returns
the real tokens only and refuses longer prompts.

ByT5: the quoted text formatted as glyph.py says, at most 128 tokens with the end token. The official code
truncates it; this pack refuses it. Without quoted text the official code passes 128 zero vectors with an
all-false mask, which the network drops (its attention masks them out); here that is None.

Exactness (tests/test_hunyuan_text.py): against diffusers' HunyuanImagePipeline.encode_prompt with tiny
random encoders, fp32, max abs <= 1e-5 over the real tokens, masks equal.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..text_encoders import byt5, qwen25vl
from .glyph import glyph_prompt

PROMPT_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
    "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>"
)
PROMPT_TEMPLATE_DROP = 34  # tokens of the template before the prompt (Qwen2.5's tokenizer)
HIDDEN_STATE_SKIP_LAYER = 2  # hidden_states[-3]
MAX_PROMPT_TOKENS = 1000
GLYPH_MAX_TOKENS = 128
TEXT_ENCODER_KINDS = ("qwen25_vl", "byt5")  # the text encoders the family takes (loaders' encoder_kind)


def encode_qwen(model, tokenizer, prompts: Sequence[str], device=None,
                dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> (Qwen2.5-VL states [B, L, hidden], mask [B, L] bool), L the longest prompt's tokens."""
    states, mask = qwen25vl.encode_prompts(model, tokenizer, list(prompts), PROMPT_TEMPLATE, MAX_PROMPT_TOKENS,
                                           device=device, dtype=dtype,
                                           hidden_state_skip_layer=HIDDEN_STATE_SKIP_LAYER)
    return states, mask.bool()


GLYPH_WHAT = "quoted text, formatted for the glyph encoder,"


def glyph_texts(prompts: Sequence[str], byt5_encoder, byt5_tokenizer) -> list[str | None]:
    """Each prompt's glyph-encoder string (None: no quoted text), checked: a ByT5 encoder is there when
    some prompt needs one, and every string fits GLYPH_MAX_TOKENS. Raises ValueError otherwise."""
    texts = [glyph_prompt(prompt) for prompt in prompts]
    quoted = [text for text in texts if text is not None]
    if quoted and (byt5_encoder is None or byt5_tokenizer is None):
        raise ValueError(f"the prompt has text in quotes for the glyph encoder ({quoted[0][:60]!r}), but no ByT5 "
                         "glyph encoder is loaded; load byt5_small_glyphxl (HunyuanImage 2.1 draws quoted text "
                         "with it)")
    for text in quoted:
        byt5.check_length(byt5_tokenizer, text, GLYPH_MAX_TOKENS, GLYPH_WHAT)
    return texts


def encode_glyphs(model, tokenizer, prompts: Sequence[str], device=None,
                  dtype: torch.dtype | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Prompts -> (ByT5 states [B, Lg, width], mask [B, Lg] bool) of their quoted text; (None, None) when
    no prompt has any. A prompt without quoted text in a batch that has some gets a zero row, mask false."""
    texts = glyph_texts(prompts, model, tokenizer)
    if all(text is None for text in texts):
        return None, None
    return byt5.encode_texts(model, tokenizer, texts, GLYPH_MAX_TOKENS, device=device, dtype=dtype, what=GLYPH_WHAT)


def encode_hunyuan_image(qwen_encoder, qwen_tokenizer, byt5_encoder, byt5_tokenizer, prompts: Sequence[str],
                         device=None, dtype: torch.dtype | None = None) -> dict:
    """HunyuanImage 2.1's whole text conditioning for `prompts`:
    {"context": [B, L, 3584], "attention_mask": [B, L] bool, "byt5": [B, Lg, 1472] or None,
     "byt5_mask": [B, Lg] bool or None}.

    Unpadded: L (Lg) is the longest prompt's (quoted text's) token count, so a single prompt gives only
    its real tokens and all-true masks (drop them). Padded positions are zeros. The quoted-text checks
    (encoder present, length) run before Qwen2.5-VL does. byt5_encoder / byt5_tokenizer may be None when
    no prompt has quoted text. dtype: the activations' dtype (weights are cast at use).
    """
    prompts = list(prompts)
    glyph_texts(prompts, byt5_encoder, byt5_tokenizer)
    context, mask = encode_qwen(qwen_encoder, qwen_tokenizer, prompts, device=device, dtype=dtype)
    glyphs, glyph_mask = encode_glyphs(byt5_encoder, byt5_tokenizer, prompts, device=device, dtype=dtype)
    return {"context": context, "attention_mask": mask, "byt5": glyphs, "byt5_mask": glyph_mask}


# The conditioning extras the glyph states travel in: ComfyUI's own name for them (its HunyuanImage text
# encoder writes it and its model class reads it), so conditioning moves between our nodes and ComfyUI's.
GLYPH_KEY = "conditioning_byt5small"
GLYPH_MASK_KEY = "conditioning_byt5small_mask"
LIMIT_NOTE = f"{MAX_PROMPT_TOKENS} tokens; quoted text {GLYPH_MAX_TOKENS} bytes"


def encode(encoders: dict, prompt: str, device, dtype: torch.dtype) -> tuple[torch.Tensor, dict]:
    """The family's text encode for one prompt (model_defs/spec.py TextSpec): (context [1, L, 3584], extras
    with the glyph states when the prompt has quoted text). One prompt has no padding, so no masks."""
    qwen, glyph = encoders["qwen25_vl"], encoders.get("byt5")
    out = encode_hunyuan_image(qwen.model, qwen.tokenizer, glyph and glyph.model, glyph and glyph.tokenizer,
                               [prompt], device=device, dtype=dtype)
    extras = {} if bool(out["attention_mask"].all()) else {"attention_mask": out["attention_mask"]}
    if out["byt5"] is not None:
        extras[GLYPH_KEY] = out["byt5"]
        if not bool(out["byt5_mask"].all()):
            extras[GLYPH_MASK_KEY] = out["byt5_mask"]
    return out["context"], extras


# --- the refiner's text conditioning -------------------------------------------------------------------------
# The official refiner (hyimage HUNYUANIMAGE_REFINER_TEXT_ENCODER) reads the same Qwen2.5-VL with its own
# template, "dit-llm-encode" (HunyuanVideo's Llama-3-style template, not the base model's "-v2" one), crop_start
# 36, text_len 256, hidden_state_skip_layer 2, apply_final_norm False, and no ByT5 (the refiner network has no
# byt5_in). diffusers' HunyuanImageRefinerPipeline repeats these values (prompt_template_encode,
# prompt_template_encode_start_idx 36, tokenizer_max_length 256).
#
# The template's <|start_header_id|>/<|eot_id|> markers are not special tokens of Qwen2.5's tokenizer: it splits
# them into pieces, so the text before the prompt is 61 tokens, not 36. Both reference pipelines still drop a
# fixed 36, so the network sees the last 25 template tokens before the prompt, and the closing <|eot_id|> (7
# tokens) after it. That is what the refiner was trained with; we do the same (a fixed drop, not the
# template's measured prefix).
#
# Length: both pipelines tokenize with truncation at 36 + 256 tokens, so the states are at most 256 tokens and
# a long prompt loses its end (the closing marker first). The refiner gets the base stage's prompt, which is
# often long after prompt enhancement, so here we truncate as they do instead of refusing (the base encoder
# refuses; its limit is 1000).
REFINER_PROMPT_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the image by detailing the color, shape, size, "
    "texture, quantity, text, spatial relationships of the objects and background:<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)
REFINER_TEMPLATE_DROP = 36
REFINER_MAX_TOKENS = 256
REFINER_HIDDEN_STATE_SKIP_LAYER = 2
REFINER_LIMIT_NOTE = f"{REFINER_MAX_TOKENS} tokens with part of the template (longer prompts are cut, as officially)"


def refiner_token_ids(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """The refiner template's token ids per prompt, cut at REFINER_TEMPLATE_DROP + REFINER_MAX_TOKENS as the
    official tokenizer call (truncation=True, max_length=292) cuts them."""
    limit = REFINER_TEMPLATE_DROP + REFINER_MAX_TOKENS
    ids = [tokenizer(REFINER_PROMPT_TEMPLATE.format(p))["input_ids"][:limit] for p in prompts]
    for prompt, row in zip(prompts, ids):
        if len(row) <= REFINER_TEMPLATE_DROP:
            raise ValueError(f"the refiner template with prompt {prompt[:60]!r} is {len(row)} tokens, not more than "
                             f"the {REFINER_TEMPLATE_DROP} the refiner drops: this tokenizer is not Qwen2.5's")
    return ids


def refiner_prompt_is_cut(tokenizer, prompt: str) -> bool:
    """Whether the refiner encode cuts this prompt (for a note to the user)."""
    tokens = len(tokenizer(REFINER_PROMPT_TEMPLATE.format(prompt))["input_ids"])
    return tokens > REFINER_TEMPLATE_DROP + REFINER_MAX_TOKENS


def encode_refiner_qwen(model, tokenizer, prompts: Sequence[str], device=None,
                        dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> (Qwen2.5-VL states [B, L, hidden], mask [B, L] bool) as the refiner reads them: the refiner
    template, cut at 292 tokens, the third-from-last hidden state, the first 36 tokens dropped. L is the
    longest row's real tokens (the references pad to 256; padded tokens are masked out in the network, so
    they change nothing: tests/test_hunyuan_refiner.py). Right-padded with zeros, mask false there."""
    hidden, mask = qwen25vl.encode_token_lists(model, tokenizer, refiner_token_ids(tokenizer, prompts),
                                               REFINER_HIDDEN_STATE_SKIP_LAYER, device, dtype)
    states = hidden[:, REFINER_TEMPLATE_DROP:]
    out_mask = mask[:, REFINER_TEMPLATE_DROP:].bool()
    return states * out_mask[..., None].to(states.dtype), out_mask


def encode_refiner(encoders: dict, prompt: str, device, dtype: torch.dtype) -> tuple[torch.Tensor, dict]:
    """The refiner's text encode for one prompt, in the family's TextSpec.encode form: (context [1, L, 3584],
    extras). One prompt has no padding, so no mask; the refiner reads no glyph text."""
    qwen = encoders["qwen25_vl"]
    context, mask = encode_refiner_qwen(qwen.model, qwen.tokenizer, [prompt], device=device, dtype=dtype)
    return context, ({} if bool(mask.all()) else {"attention_mask": mask})
