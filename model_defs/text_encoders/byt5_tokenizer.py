"""ByT5's tokenizer, with Glyph-SDXL-v2's colour and font markup tokens.

ByT5 reads UTF-8 bytes: byte b is token b + 3 (0 <pad>, 1 </s>, 2 <unk>), 125 sentinel tokens
<extra_id_N> follow at 259 + N (384 tokens), and the end token </s> is appended. Glyph-SDXL-v2 (the
official HunyuanImage 2.1 code, hyimage/models/text_encoder/byT5) adds special tokens after those, in
this order: 138 colours <color-0> ... <color-137>, then its multilingual font list as <xx-font-N>: 512
English (en), 143 Chinese (cn), 211 Japanese (jp) and 122 Korean (kr) fonts; 384 + 138 + 988 = 1510,
the encoder's token table. (The counts are those of Glyph-SDXL-v2's assets color_idx.json and
multilingual_10-lang_idx.json, whose indices run 0..n-1 within each language; no other data is needed.)
The official pipeline itself never writes markup (it formats quoted text without colour or font), so
markup only matters when a prompt's quoted text contains it literally.

Two sources, the same ids (tests/test_byt5.py compares them on ASCII, CJK, emoji, quotes, markup, long
text and stray special-token spellings):
* `ByteTokenizer`: our own, needs no files (outside ComfyUI when no tokenizer folder is found);
* a transformers ByT5Tokenizer read from a folder (inside ComfyUI: the byt5_tokenizer/ it ships), with
  the markup tokens added to a copy by `with_glyph_markup`, as the official code adds them.

transformers' rules with such a folder (google/byt5-small's files, which ComfyUI ships unchanged),
reproduced by ByteTokenizer: special-token spellings in the text are single tokens, whitespace around them
is kept, and no second </s> is appended when the text already ends with one. (A ByT5Tokenizer constructed
without files differs: it declares <pad>, </s> and <unk> lstrip/rstrip and drops whitespace around them.)
"""

from __future__ import annotations

import copy
import re

PAD, EOS, UNK = 0, 1, 2
BYTE_OFFSET = 3
SENTINELS = 125  # <extra_id_0> .. <extra_id_124>
BASE_VOCAB = 256 + BYTE_OFFSET + SENTINELS  # 384, google/byt5-small
COLOURS = 138
FONTS = (("en", 512), ("cn", 143), ("jp", 211), ("kr", 122))


def glyph_markup_tokens() -> list[str]:
    """Glyph-SDXL-v2's added tokens in id order (ids BASE_VOCAB ...)."""
    tokens = [f"<color-{i}>" for i in range(COLOURS)]
    for language, count in FONTS:
        tokens += [f"<{language}-font-{i}>" for i in range(count)]
    return tokens


GLYPH_VOCAB = BASE_VOCAB + COLOURS + sum(count for _, count in FONTS)  # 1510

# Every spelling a special token can have; a match that names no token (e.g. <color-999>) stays bytes.
_SPECIAL = re.compile(r"<(?:pad|/s|unk|extra_id_\d+|color-\d+|(?:en|cn|jp|kr)-font-\d+)>")


class ByteTokenizer:
    """ByT5's tokenizer without files: bytes + 3, special-token spellings, end token appended.

    markup: include Glyph-SDXL-v2's colour and font tokens (1510 tokens) or not (384, plain ByT5).
    Call it like a transformers tokenizer for one string: tokenizer(text)["input_ids"].
    """

    def __init__(self, markup: bool = True):
        self.specials = {"<pad>": PAD, "</s>": EOS, "<unk>": UNK}
        self.specials.update({f"<extra_id_{i}>": 256 + BYTE_OFFSET + i for i in range(SENTINELS)})
        if markup:
            self.specials.update({token: BASE_VOCAB + i for i, token in enumerate(glyph_markup_tokens())})
        self.size = GLYPH_VOCAB if markup else BASE_VOCAB

    def __len__(self) -> int:
        return self.size

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        position = 0
        for match in _SPECIAL.finditer(text):
            token = self.specials.get(match.group())
            if token is None:
                continue
            ids += _bytes(text[position:match.start()])
            ids.append(token)
            position = match.end()
        ids += _bytes(text[position:])
        if not ids or ids[-1] != EOS:
            ids.append(EOS)
        return ids

    def __call__(self, text: str) -> dict:
        ids = self.encode(text)
        return {"input_ids": ids, "attention_mask": [1] * len(ids)}


def _bytes(text: str) -> list[int]:
    return [b + BYTE_OFFSET for b in text.encode("utf-8")]


def is_byte_tokenizer(tokenizer) -> bool:
    """Whether `tokenizer` is a ByT5 one ("a" -> byte 97 + 3, then the end token)."""
    try:
        return list(tokenizer("a")["input_ids"]) == [ord("a") + BYTE_OFFSET, EOS]
    except Exception:  # a tokenizer of another kind may refuse the call in many ways
        return False


def with_glyph_markup(tokenizer):
    """A copy of a transformers ByT5 tokenizer with Glyph-SDXL-v2's markup tokens added (the original,
    which may be cached and shared, is left as it is)."""
    if len(tokenizer) != BASE_VOCAB:
        raise ValueError(f"expected a plain ByT5 tokenizer of {BASE_VOCAB} tokens, this one has {len(tokenizer)}")
    extended = copy.deepcopy(tokenizer)
    extended.add_tokens(glyph_markup_tokens(), special_tokens=True)
    return extended
