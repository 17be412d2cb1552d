"""Split a model's answer into its reasoning and the rewritten prompt.

The rules follow the official code (github Hunyuan-PromptEnhancer/PromptEnhancer inference/prompt_enhancer.py,
and hyimage/models/reprompt/*.py of HunyuanImage 2.1):

* The HunyuanImage reprompt model (Hunyuan-7B) answers `<think>...</think>\\n<answer>...</answer>` (its think
  block is empty with thinking off): the prompt is the first `<answer>` block, stripped.
* Without an answer block the prompt is the text with every `<think>...</think>` block removed, stripped
  (PromptEnhancer's fallback; chat models that answer plainly land here).
* PromptEnhancer-32B's output holds one closing think tag with the reasoning before it (its opening tag
  may be in the prompt the chat template wrote): the prompt is what follows `</think>`, one leading newline
  dropped.
* When nothing is left, the official code uses the user's original prompt; `parse_answer` reports that
  with `fell_back=True` so the caller can say so.

Reasoning ("show reasoning") is the text of the think blocks (stripped, joined by blank lines), or the text
before a lone `</think>`; empty when the model produced none. A generation cut off by the token limit inside
a block keeps what it had: an unclosed `<think>` counts as reasoning, an unclosed `<answer>` as the prompt.
Special tokens that are not these tags (end-of-turn markers and the like) are removed from both parts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
_THINK_BLOCK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


@dataclass(frozen=True)
class ParsedAnswer:
    prompt: str
    reasoning: str
    fell_back: bool = False  # nothing usable was produced: `prompt` is the user's original


def _without_tokens(text: str, tokens) -> str:
    for token in tokens:
        if token and token not in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE):
            text = text.replace(token, "")
    return text


def parse_answer(text: str, original_prompt: str = "", special_tokens=()) -> ParsedAnswer:
    """The rewritten prompt and the reasoning in `text` (the decoded new tokens, special tokens kept);
    `special_tokens`: strings to remove (the tokenizer's special tokens)."""
    text = _without_tokens(text, special_tokens)
    reasoning_parts = [m.strip() for m in _THINK_BLOCK.findall(text)]
    rest = _THINK_BLOCK.sub("", text)

    if THINK_CLOSE in rest:  # a lone closing tag: the reasoning comes before it (PromptEnhancer-32B)
        before, _, rest = rest.rpartition(THINK_CLOSE)
        reasoning_parts.append(before.replace(THINK_OPEN, "").strip())
        rest = rest[1:] if rest.startswith("\n") else rest
    elif THINK_OPEN in rest:  # cut off while reasoning
        rest, _, unfinished = rest.partition(THINK_OPEN)
        reasoning_parts.append(unfinished.strip())

    answers = _ANSWER_BLOCK.findall(rest)
    if answers:
        prompt = answers[0].strip()
    elif ANSWER_OPEN in rest:  # cut off inside the answer
        prompt = rest.partition(ANSWER_OPEN)[2].strip()
    else:
        prompt = rest.replace(ANSWER_CLOSE, "").strip()

    reasoning = "\n\n".join(part for part in reasoning_parts if part)
    if not prompt:
        return ParsedAnswer(original_prompt, reasoning, fell_back=True)
    return ParsedAnswer(prompt, reasoning)
