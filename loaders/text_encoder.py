"""Text-encoder files -> a ready language model and its tokenizer.

Accepted: a single file in the ComfyUI layout (qwen_2.5_vl_7b*.safetensors, or the text-encoder part of a
full checkpoint), a Hugging Face model folder (config.json + sharded safetensors, e.g. a diffusers repo's
text_encoder/), or a diffusers repo root holding text_encoder/ and tokenizer/. Only the language model's
tensors are read; the vision tower and the LM head in the same files stay on disk.

`read_text_encoder(path)` does everything that can fail on a bad file, without allocating a weight: it
opens the file, reads the configuration from the shapes, checks every tensor against a build on the meta
device, finds and loads the tokenizer and checks that the embedding covers the tokenizer's vocabulary.
`build_text_encoder` then assigns the memory-mapped tensors; `load_text_encoder` does both.

Tokenizers are never downloaded: they come from a folder beside the weights (a diffusers repo's
tokenizer/, `<file stem>_tokenizer/` or `tokenizer/` next to a single file) or from the places the host
knows (the Qwen2.5 tokenizer ComfyUI ships); every loaded encoder records where its tokenizer came from.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from ..model_defs.ops import StandaloneOps
from ..model_defs.text_encoders import qwen25vl
from .assign import assign_state_dict, check_shapes, module_shapes
from .check_cache import fingerprint
from .checkpoints import Checkpoint, open_checkpoint
from .detection import TEXT_ENCODER, Identity, find_component
from .errors import ModelFileError
from .layouts import llama_cpp
from .quant.ops import quantized_ops
from .quant.tensor import holds_quantized

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")
# Parts of the file that are not the language model (kept on disk).
SKIPPED_PREFIXES = ("visual.", "model.visual.", "lm_head.")
LANGUAGE_MODEL_PREFIXES = ("model.language_model.", "language_model.model.", "model.")


@dataclass(frozen=True)
class TokenizerPlace:
    """A folder that may hold a tokenizer, and how to name it in messages."""

    folder: Path
    origin: str  # e.g. "beside the weights", "the tokenizer ComfyUI ships"

    def __str__(self) -> str:
        return f"{self.folder} ({self.origin})"


@dataclass
class LoadedTextEncoder:
    model: torch.nn.Module
    tokenizer: object
    family: str  # "qwen25_vl"
    layout: str
    path: str
    description: str
    tokenizer_source: TokenizerPlace | None = None


@dataclass
class TextEncoderFile:
    """A text-encoder file that passed every check, with its tokenizer loaded."""

    checkpoint: Checkpoint
    identity: Identity
    names: dict[str, str]  # {key in the file: language-model name}
    config: qwen25vl.QwenTextConfig
    tokenizer: object
    tokenizer_source: TokenizerPlace

    @property
    def description(self) -> str:
        return _description(self.identity, self.config)


def _description(identity: Identity, config) -> str:
    return f"{identity.description} ({config.num_hidden_layers} layers, hidden {config.hidden_size})"


def _weights_location(path: Path) -> Path:
    if path.is_dir() and (path / "text_encoder").is_dir():
        return path / "text_encoder"  # a diffusers repo root
    return path


def language_model_names(checkpoint: Checkpoint, prefix: str, layout: str = "") -> dict[str, str]:
    """{file key: language-model name} for the language model's tensors (vision tower, LM head left out).
    A file in llama.cpp's names (layout "llama_cpp") is read through that key layout first."""
    renamed = {}
    if layout == llama_cpp.LLAMA_CPP.name:
        keys = [k[len(prefix):] for k in checkpoint.keys() if k.startswith(prefix)]
        renamed = llama_cpp.transformers_names(keys, checkpoint.metadata.get("general.architecture"), checkpoint.path)
    names = {}
    for key in checkpoint.keys():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        rest = renamed.get(rest, rest)
        if rest.startswith(SKIPPED_PREFIXES):
            continue
        for lm_prefix in LANGUAGE_MODEL_PREFIXES:
            if rest.startswith(lm_prefix):
                names[key] = rest[len(lm_prefix):]
                break
        else:
            names[key] = rest  # not a language-model tensor: reported as unexpected by the check
    return names


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
    places = places_beside(weights) + [p if isinstance(p, TokenizerPlace) else TokenizerPlace(Path(p), "given")
                                       for p in search]
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


def read_text_encoder(path, tokenizer_path=None, tokenizer_search=()) -> TextEncoderFile:
    """Open and check the Qwen2.5-VL language model in `path`, and load its tokenizer."""
    weights = _weights_location(Path(path))
    checkpoint = open_checkpoint(weights)
    identity = find_component(checkpoint, TEXT_ENCODER)
    names = language_model_names(checkpoint, identity.prefix, identity.layout)
    shapes = {name: checkpoint.shape(key) for key, name in names.items()}
    try:
        config = qwen25vl.config_from_shapes(shapes)
    except (KeyError, ValueError, IndexError) as e:
        raise ModelFileError(checkpoint.path, f"looks like a {identity.description} but its configuration "
                             "cannot be read from its tensors", found=f"{type(e).__name__}: {e}") from None
    expected = module_shapes(qwen25vl.build_text_model(config))
    check_shapes(checkpoint.path, _description(identity, config), shapes, expected)

    # The tokenizer is part of the check: a missing one should not cost a multi-GB load.
    place = (TokenizerPlace(Path(tokenizer_path), "given") if tokenizer_path
             else find_tokenizer(Path(path), tokenizer_search))
    tokenizer = load_tokenizer(place.folder)
    check_vocabulary(checkpoint.path, config, tokenizer, place)
    return TextEncoderFile(checkpoint, identity, names, config, tokenizer, place)


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


def build_text_encoder(checked: TextEncoderFile, dtype: torch.dtype | None = None, device="cpu",
                       operations=None) -> LoadedTextEncoder:
    """The language model with the checked file's tensors assigned.

    dtype: weight dtype (None keeps the stored one; layers from `operations` compute in the input dtype).
    """
    checkpoint = checked.checkpoint
    state_dict = {name: checkpoint.tensor(key) for key, name in checked.names.items()}
    operations = operations or StandaloneOps
    if holds_quantized(state_dict):
        operations = quantized_ops(operations)  # FP8 / GGUF weights stay quantized, dequantized per layer
    model = qwen25vl.build_text_model(checked.config, operations, dtype=dtype)
    assign_state_dict(model, state_dict, checkpoint.path, checked.description, dtype=dtype, device=device)
    model.rotary_emb.to(device)
    return LoadedTextEncoder(model, checked.tokenizer, checked.identity.family, checked.identity.layout,
                             str(checkpoint.path), checked.description, checked.tokenizer_source)


def load_text_encoder(path, tokenizer_path=None, tokenizer_search=(), dtype: torch.dtype | None = None,
                      device="cpu", operations=None) -> LoadedTextEncoder:
    """read_text_encoder + build_text_encoder: the Qwen2.5-VL language model in `path` and its tokenizer."""
    checked = read_text_encoder(path, tokenizer_path=tokenizer_path, tokenizer_search=tokenizer_search)
    return build_text_encoder(checked, dtype=dtype, device=device, operations=operations)
