"""Text in quotes -> the string HunyuanImage 2.1's glyph encoder (ByT5) reads.

As the official pipeline does it (hyimage HunyuanImagePipeline._encode_glyph with
MultilingualPromptFormat.format_prompt; diffusers' extract_glyph_text gives the same string):
every non-greedy match of '...', "...", ‘...’ and “...” (Python's re, `.` not matching a line break), all
single-quote matches first, then double, then Chinese single, then Chinese double (not in prompt order),
each formatted as `Text "<text>". ` and concatenated. No match: None (the network gets no glyph tokens).

Note the single quotes: an apostrophe counts as one ("a cat's toy and a dog's bone" sends
`s toy and a dog` to the glyph encoder), in the official code and diffusers alike. ComfyUI's native
HunyuanImage tokenizer leaves single quotes out; this pack follows the official pipeline.
"""

from __future__ import annotations

import re

QUOTE_PATTERNS = (re.compile(r"'(.*?)'"), re.compile(r'"(.*?)"'), re.compile(r"‘(.*?)’"), re.compile(r"“(.*?)”"))


def quoted_texts(prompt: str) -> list[str]:
    """The quoted pieces of `prompt`, in the official order (by quote kind, then by position)."""
    return [text for pattern in QUOTE_PATTERNS for text in pattern.findall(prompt)]


def format_glyph_texts(texts: list[str]) -> str | None:
    """`Text "a". Text "b". ` (the official formatting without colour or font), or None for no text."""
    if not texts:
        return None
    return "".join(f'Text "{text}". ' for text in texts)


def glyph_prompt(prompt: str) -> str | None:
    """What the glyph encoder reads for `prompt`, or None when it has no text in quotes."""
    return format_glyph_texts(quoted_texts(prompt))
