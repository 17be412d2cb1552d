"""One rewrite: the chat input for the target's instruction, generation, and the parsed answer.

The chat input is the tokenizer's own chat template over [system: instruction, user: prompt] with the
generation prompt added and `enable_thinking` passed (False unless the caller wants the model to reason
first: the official HunyuanImage 2.1 call passes False), as the official code's
`apply_chat_template(..., add_generation_prompt=True, enable_thinking=False)`. The new tokens are decoded
with special tokens kept (the reasoning tags may be special in some tokenizers), then parsed
(parsing.py); the official quote normalisation is applied for the targets whose official code does it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from .generation import GenerationResult, SamplingSettings, generate_tokens
from .instructions import Instruction, official_postprocess
from .parsing import parse_answer


@dataclass
class EnhancedPrompt:
    prompt: str
    reasoning: str
    raw: str  # the decoded answer, special tokens kept
    generation: GenerationResult
    prompt_tokens: int
    seconds: float
    fell_back: bool  # the model produced no usable prompt: `prompt` is the user's own

    @property
    def tokens_per_second(self) -> float:
        return len(self.generation.tokens) / self.seconds if self.seconds > 0 else float("inf")


def chat_input_ids(tokenizer, messages: list[dict], thinking: bool = False) -> list[int]:
    """The token ids of `messages` through the tokenizer's chat template, ready for the answer."""
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                            enable_thinking=thinking)
    ids = encoded["input_ids"]
    return list(ids[0] if ids and isinstance(ids[0], list) else ids)


def check_context(prompt_tokens: int, settings: SamplingSettings, context_length: int | None) -> SamplingSettings:
    """`settings` with max_new_tokens capped to the context left; ValueError when the prompt alone fills it."""
    if context_length is None:
        return settings
    if prompt_tokens >= context_length:
        raise ValueError(f"the prompt with the instruction is {prompt_tokens} tokens, and the model's context holds "
                         f"{context_length}: shorten the prompt")
    room = context_length - prompt_tokens
    if settings.max_new_tokens > room:
        return SamplingSettings(room, settings.temperature, settings.top_p, settings.top_k,
                                settings.repetition_penalty, settings.seed)
    return settings


def enhance_prompt(model, tokenizer, prompt: str, instruction: Instruction, settings: SamplingSettings,
                   stop_ids=(), context_length: int | None = None, thinking: bool = False,
                   device=None, on_token: Callable[[int], None] | None = None,
                   check_interrupt: Callable[[], None] | None = None) -> EnhancedPrompt:
    """Rewrite `prompt` for `instruction`'s target with the loaded causal LM `model` on `device`."""
    ids = chat_input_ids(tokenizer, instruction.messages(prompt), thinking)
    settings = check_context(len(ids), settings, context_length)
    device = device if device is not None else next(model.parameters()).device
    started = time.perf_counter()
    result = generate_tokens(model, torch.tensor([ids], device=device), settings, stop_ids, on_token,
                             check_interrupt)
    seconds = time.perf_counter() - started
    raw = tokenizer.decode(result.tokens, skip_special_tokens=False)
    parsed = parse_answer(raw, prompt, getattr(tokenizer, "all_special_tokens", ()))
    text = official_postprocess(parsed.prompt) if instruction.postprocess and not parsed.fell_back else parsed.prompt
    return EnhancedPrompt(text, parsed.reasoning, raw, result, len(ids), seconds, parsed.fell_back)
