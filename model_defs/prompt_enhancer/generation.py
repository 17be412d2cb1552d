"""Token-by-token generation for the prompt enhancer, equal to transformers' `generate` token for token.

Why our own loop rather than `model.generate`: the node must show a progress step and honour ComfyUI's
interrupt after every token, and sampling must be seeded without touching torch's global random state
(other nodes draw from it). The loop does what `generate` does for one sequence with these settings, in
the same order, with the same operations (so the same floating-point results):

1. one forward over the prompt, then one per new token with the key/value cache, an all-ones attention
   mask over the whole sequence, and `logits_to_keep=1` when the model's forward takes it (as `generate`
   passes it): the output layer runs for the last position only, so the prompt's forward makes [1, 1, V]
   logits, not [1, L, V] (at a 128k vocabulary and a 700-token prompt, 180 MB in bf16);
2. the last position's logits, copied to float32;
3. repetition penalty over every id seen so far, prompt included (transformers'
   RepetitionPenaltyLogitsProcessor: a seen token's logit is divided by the penalty when positive,
   multiplied when negative);
4. sampling only: temperature (logits / t), top-k (logits below the k-th largest become -inf, ties kept),
   top-p (sorted ascending, softmax, cumulative sum; tokens whose cumulative probability is <= 1 - top_p
   are dropped, the most likely one always kept);
5. sampling: softmax and `torch.multinomial(probs, 1)` drawn from a torch.Generator seeded with `seed` on
   the model's device; greedy (temperature 0): argmax;
6. stop after a stop token (kept in the output, as `generate` keeps the EOS) or after max_new_tokens.

`generate` draws from torch's global generator: `torch.manual_seed(seed)` and then `generate` gives the
same tokens as this loop with `seed` (tests/test_prompt_enhancer.py checks it, greedy and sampled). The
official HunyuanImage 2.1 pipeline calls `torch.manual_seed(seed)` before its reprompt call, so with its
seed and sampling settings this loop reproduces the official rewrite on the same device.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class SamplingSettings:
    """max_new_tokens: the token limit; temperature 0 means greedy decoding (argmax), as in the official
    PromptEnhancer code; top_k 0 and top_p 1.0 switch those filters off; repetition_penalty 1.0 too."""

    max_new_tokens: int = 2048
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int = 0

    @property
    def sampling(self) -> bool:
        return self.temperature > 0

    def check(self) -> None:
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be at least 1 (got {self.max_new_tokens})")
        if self.temperature < 0:
            problems.append(f"temperature must be 0 (greedy) or more (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.top_k < 0:
            problems.append(f"top_k must be 0 (off) or more (got {self.top_k})")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty must be above 0 (got {self.repetition_penalty})")
        if problems:
            raise ValueError("; ".join(problems))

    def generate_kwargs(self) -> dict:
        """The same settings as keyword arguments for transformers' `generate` (used by the tests)."""
        kwargs = {"max_new_tokens": self.max_new_tokens, "repetition_penalty": self.repetition_penalty}
        if self.sampling:
            return {**kwargs, "do_sample": True, "temperature": self.temperature, "top_k": self.top_k,
                    "top_p": self.top_p}
        return {**kwargs, "do_sample": False, "temperature": None, "top_k": None, "top_p": None}


@dataclass
class GenerationResult:
    tokens: list[int]  # the new tokens, a final stop token included
    stopped: str  # "stop_token" or "limit"


def penalize_repetition(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """logits [1, V]; seen [1, N] ids so far. Seen tokens: positive logits / penalty, negative * penalty."""
    if penalty == 1.0:
        return logits
    vocab = logits.shape[-1]
    seen = seen.clamp(max=vocab)  # an id past the head's width (embedding wider than the head) is ignored
    padded = torch.nn.functional.pad(logits, (0, 1))
    picked = torch.gather(padded, 1, seen)
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    return padded.scatter(1, seen, picked)[..., :vocab]


def keep_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0:
        return logits
    k = min(k, logits.shape[-1])
    threshold = torch.topk(logits, k)[0][..., -1, None]
    return logits.masked_fill(logits < threshold, -float("inf"))


def keep_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    if p >= 1.0:
        return logits
    ascending, order = torch.sort(logits, descending=False)
    cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
    drop = cumulative <= (1 - p)
    drop[..., -1:] = False  # the most likely token always stays
    return logits.masked_fill(drop.scatter(1, order, drop), -float("inf"))


def processed_scores(logits: torch.Tensor, seen: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
    """The scores the next token is chosen from: steps 3 and 4 of the module docstring."""
    scores = penalize_repetition(logits, seen, settings.repetition_penalty)
    if not settings.sampling:
        return scores
    if settings.temperature != 1.0:
        scores = scores / settings.temperature
    return keep_top_p(keep_top_k(scores, settings.top_k), settings.top_p)


def next_token(logits: torch.Tensor, seen: torch.Tensor, settings: SamplingSettings,
               generator: torch.Generator | None) -> torch.Tensor:
    """The next token id [1] from the last position's float32 logits [1, V]."""
    scores = processed_scores(logits, seen, settings)
    if not settings.sampling:
        return torch.argmax(scores, dim=-1)
    probs = torch.nn.functional.softmax(scores, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


def last_position_only(model) -> dict:
    """{"logits_to_keep": 1} for a model whose forward takes it (transformers' causal LMs; `generate` passes
    it then, GenerationMixin._supports_logits_to_keep), else {}."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}


@torch.inference_mode()
def generate_tokens(model, input_ids: torch.Tensor, settings: SamplingSettings, stop_ids=(),
                    on_token: Callable[[int], None] | None = None,
                    check_interrupt: Callable[[], None] | None = None) -> GenerationResult:
    """New tokens after `input_ids` [1, L] (on the model's device) from a transformers causal LM.

    on_token(token_id) is called after each token (progress); check_interrupt() before each forward (it
    raises to stop)."""
    settings.check()
    device = input_ids.device
    generator = torch.Generator(device=device).manual_seed(settings.seed) if settings.sampling else None
    stop = set(int(i) for i in stop_ids)
    sequence = input_ids
    step_input = input_ids
    cache = None
    tokens: list[int] = []
    keep = last_position_only(model)
    for _ in range(settings.max_new_tokens):
        if check_interrupt is not None:
            check_interrupt()
        mask = torch.ones(sequence.shape, dtype=torch.long, device=device)
        out = model(input_ids=step_input, attention_mask=mask, past_key_values=cache, use_cache=True,
                    return_dict=True, **keep)
        cache = out.past_key_values
        logits = out.logits[:, -1].to(copy=True, dtype=torch.float32, device=device)
        del out
        token = next_token(logits, sequence, settings, generator)
        sequence = torch.cat([sequence, token[:, None]], dim=-1)
        step_input = token[:, None]
        value = int(token[0])
        tokens.append(value)
        if on_token is not None:
            on_token(value)
        if value in stop:
            return GenerationResult(tokens, "stop_token")
    return GenerationResult(tokens, "limit")
