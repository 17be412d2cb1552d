"""Qwen-Image prompts: Qwen2.5-VL-7B with the family's chat template, last hidden state after the norm."""

from __future__ import annotations

import torch

from ..text_encoders.qwen25vl import encode_prompts
from .family import MAX_PROMPT_TOKENS, PROMPT_TEMPLATE


def encode(encoders: dict, prompt: str, device, dtype: torch.dtype) -> tuple[torch.Tensor, dict]:
    """One prompt -> (context [1, L, 3584], extras): a single prompt has no padding, so no mask."""
    qwen = encoders["qwen25_vl"]
    embeds, mask = encode_prompts(qwen.model, qwen.tokenizer, [prompt], PROMPT_TEMPLATE,
                                  max_tokens=MAX_PROMPT_TOKENS, device=device, dtype=dtype)
    extras = {} if bool(mask.all()) else {"attention_mask": mask}
    return embeds, extras
