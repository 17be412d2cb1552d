"""Tokenizers for the text encoders: where to find one, loading it once, checking it fits the encoder.

Tokenizers are never downloaded. A kind's tokenizer comes from a folder given to the loader, else from a
folder beside the weights (a diffusers repo's tokenizer/ or tokenizer_2/, `<file stem>_tokenizer/` or
`tokenizer/` next to a single file), else from the places the host knows for the kind's tokenizer name
(`host.tokenizer_places(name)`: ComfyUI ships qwen25_tokenizer/ and byt5_tokenizer/; the standalone host
looks in the models folder and in COMFYUI_PATH's checkout). ByT5 needs no data, so when no folder holds a
ByT5 tokenizer the pack's own byte tokenizer is used (model_defs/text_encoders/byt5_tokenizer.py, the same
ids); Qwen2.5's vocabulary is data, so without a folder it is an error naming every place searched.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from ..model_defs.text_encoders import byt5_tokenizer
from .check_cache import fingerprint
from .errors import ModelFileError

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")


@dataclass(frozen=True)
class TokenizerPlace:
    """A folder that may hold a tokenizer, and how to name it in messages."""

    folder: Path
    origin: str  # e.g. "beside the weights", "the tokenizer ComfyUI ships"

    def __str__(self) -> str:
        return f"{self.folder} ({self.origin})"


def as_places(search) -> list[TokenizerPlace]:
    """The host's places (TokenizerPlace) or plain folders, as TokenizerPlace."""
    return [p if isinstance(p, TokenizerPlace) else TokenizerPlace(Path(p), "given") for p in search]


def places_beside(weights: Path) -> list[TokenizerPlace]:
    """Where a tokenizer may sit beside the weights: a diffusers repo's tokenizer/, or next to a single file."""
    if weights.is_dir():
        return [TokenizerPlace(weights.parent / "tokenizer", "the diffusers tokenizer/ beside this folder"),
                TokenizerPlace(weights / "tokenizer", "the diffusers tokenizer/ in this folder"),
                TokenizerPlace(weights, "in the model folder itself")]
    return [TokenizerPlace(weights.parent / f"{weights.stem}_tokenizer", "beside the weights"),
            TokenizerPlace(weights.parent / "tokenizer", "beside the weights")]


def holds_tokenizer(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).exists() for name in TOKENIZER_FILES)


def find_tokenizer(weights: Path, search=()) -> TokenizerPlace:
    """The first place holding tokenizer files: beside the weights first, then the host's places
    (TokenizerPlace, or plain folders)."""
    places = places_beside(weights) + as_places(search)
    for place in places:
        if holds_tokenizer(place.folder):
            return place
    searched = "; ".join(str(place) for place in places)
    raise ModelFileError(
        weights, "needs a tokenizer, and none was found",
        found=f"no tokenizer files ({', '.join(TOKENIZER_FILES)}) in any place searched: {searched}",
        hint=f"Put the model's tokenizer files (vocab.json + merges.txt, or tokenizer.json) in "
             f"{places_beside(weights)[0].folder}. Inside ComfyUI the tokenizer ComfyUI ships is used; outside it, "
             f"set COMFYUI_PATH to a ComfyUI checkout to use that one.",
    )


def load_tokenizer(folder: Path):
    """The tokenizer in `folder`, loaded once per version of its files: the queue-time check and the load
    that follows both need it, and reading one takes up to a second."""
    return _load_tokenizer(str(Path(folder).resolve()), fingerprint(Path(folder)))


@functools.lru_cache(maxsize=8)
def _load_tokenizer(folder: str, version: tuple):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (ValueError, OSError):  # no tokenizer_class recorded: Qwen2.5's own class reads vocab + merges
        from transformers import Qwen2Tokenizer

        return Qwen2Tokenizer.from_pretrained(folder)


def check_vocabulary(path, config, tokenizer, place: TokenizerPlace) -> None:
    """Every token id the tokenizer can produce must have an embedding row (else the embedding fails on
    the first high id, deep inside the model)."""
    if config.vocab_size < len(tokenizer):
        raise ModelFileError(
            path, "has fewer token embeddings than its tokenizer has tokens",
            found=f"{config.vocab_size} embedding rows; the tokenizer from {place} has {len(tokenizer)} tokens",
            expected=f"at least {len(tokenizer)} embedding rows",
            hint="The tokenizer belongs to another model, or the file is from a smaller variant.",
        )


# --- ByT5's tokenizer ----------------------------------------------------------------------------------------
def byt5_places_beside(weights: Path) -> list[TokenizerPlace]:
    """Where a ByT5 tokenizer may sit beside the weights: as for any encoder, and a diffusers repo's
    tokenizer_2/ (HunyuanImage 2.1's repo keeps ByT5 in text_encoder_2/ and its tokenizer in tokenizer_2/)."""
    places = places_beside(weights)
    if weights.is_dir():
        places.insert(1, TokenizerPlace(weights.parent / "tokenizer_2", "the diffusers tokenizer_2/ beside this folder"))
    return places


def holds_byt5_tokenizer(folder: Path) -> bool:
    """A folder whose tokenizer_config.json names ByT5Tokenizer (checked without loading, so the Qwen2.5
    tokenizer in a shared tokenizer/ folder is passed over at no cost)."""
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class") == "ByT5Tokenizer"
    except (OSError, ValueError, AttributeError):
        return False


@functools.lru_cache(maxsize=4)
def _with_markup(folder: str, version: tuple):
    return byt5_tokenizer.with_glyph_markup(load_tokenizer(Path(folder)))


def _byt5_folder_tokenizer(place: TokenizerPlace, markup: bool):
    tokenizer = load_tokenizer(place.folder)
    if not byt5_tokenizer.is_byte_tokenizer(tokenizer):
        raise ModelFileError(place.folder, "does not hold a ByT5 byte tokenizer",
                             found=f"{type(tokenizer).__name__} of {len(tokenizer)} tokens",
                             expected="ByT5Tokenizer (such as the byt5_tokenizer/ ComfyUI ships)")
    if markup and len(tokenizer) == byt5_tokenizer.BASE_VOCAB:  # add Glyph-SDXL-v2's markup, as the official code does
        return _with_markup(str(Path(place.folder).resolve()), fingerprint(Path(place.folder)))
    return tokenizer


BUILTIN_BYT5 = TokenizerPlace(Path(byt5_tokenizer.__file__).parent,
                              "the pack's own ByT5 byte tokenizer (no files needed)")


def find_byt5_tokenizer(path: Path, tokenizer_path, search, config):
    """(tokenizer, place): a given folder, else the first folder holding a ByT5 tokenizer beside the weights
    or among the host's places, else the pack's own byte tokenizer. With a token table of Glyph-SDXL-v2's
    size (1510) the colour and font markup tokens are part of it."""
    markup = config.vocab_size >= byt5_tokenizer.GLYPH_VOCAB
    if tokenizer_path:
        place = TokenizerPlace(Path(tokenizer_path), "given")
        return _byt5_folder_tokenizer(place, markup), place
    places = byt5_places_beside(Path(path)) + as_places(search)
    for place in places:
        if holds_byt5_tokenizer(place.folder):
            return _byt5_folder_tokenizer(place, markup), place
    return byt5_tokenizer.ByteTokenizer(markup=markup), BUILTIN_BYT5


def find_qwen_tokenizer(path: Path, tokenizer_path, search, config):
    """(tokenizer, place): a given folder, else the first folder holding tokenizer files beside the weights
    or among the host's places (there is no fallback: Qwen2.5's vocabulary is data)."""
    place = TokenizerPlace(Path(tokenizer_path), "given") if tokenizer_path else find_tokenizer(path, search)
    return load_tokenizer(place.folder), place
