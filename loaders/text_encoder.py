"""Text-encoder files -> a ready language model and its tokenizer.

Accepted: a single file in the ComfyUI layout (qwen_2.5_vl_7b*.safetensors, or the text-encoder part of a
full checkpoint), a Hugging Face model folder (config.json + sharded safetensors, e.g. a diffusers repo's
text_encoder/), or a diffusers repo root holding text_encoder/ and tokenizer/. Only the language model's
tensors are read; the vision tower and the LM head in the same files stay on disk.

Tokenizers are never downloaded: they come from a folder beside the weights (a diffusers repo's
tokenizer/, `<file stem>_tokenizer/` or `tokenizer/` next to a single file) or from the folders the host
knows (ComfyUI ships Qwen2.5's tokenizer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..model_defs.ops import StandaloneOps
from ..model_defs.text_encoders import qwen25vl
from .assign import assign_state_dict
from .checkpoints import Checkpoint, open_checkpoint
from .detection import TEXT_ENCODER, find_component
from .errors import ModelFileError
from .quant.ops import quantized_ops
from .quant.tensor import holds_quantized

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")
# Parts of the file that are not the language model (kept on disk).
SKIPPED_PREFIXES = ("visual.", "model.visual.", "lm_head.")
LANGUAGE_MODEL_PREFIXES = ("model.language_model.", "language_model.model.", "model.")


@dataclass
class LoadedTextEncoder:
    model: torch.nn.Module
    tokenizer: object
    family: str  # "qwen25_vl"
    layout: str
    path: str
    description: str


def _weights_location(path: Path) -> Path:
    if path.is_dir() and (path / "text_encoder").is_dir():
        return path / "text_encoder"  # a diffusers repo root
    return path


def language_model_names(checkpoint: Checkpoint, prefix: str) -> dict[str, str]:
    """{file key: language-model name} for the language model's tensors (vision tower, LM head left out)."""
    names = {}
    for key in checkpoint.keys():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        if rest.startswith(SKIPPED_PREFIXES):
            continue
        for lm_prefix in LANGUAGE_MODEL_PREFIXES:
            if rest.startswith(lm_prefix):
                names[key] = rest[len(lm_prefix):]
                break
        else:
            names[key] = rest  # not a language-model tensor: reported as unexpected by the check
    return names


def find_tokenizer(weights: Path, search: list[Path] | tuple = ()) -> Path:
    """The first folder holding tokenizer files, beside the weights first, then the host's folders."""
    candidates = []
    if weights.is_dir():
        candidates += [weights.parent / "tokenizer", weights / "tokenizer", weights]
    else:
        candidates += [weights.parent / f"{weights.stem}_tokenizer", weights.parent / "tokenizer"]
    candidates += [Path(p) for p in search]
    for folder in candidates:
        if folder.is_dir() and any((folder / name).exists() for name in TOKENIZER_FILES):
            return folder
    raise ModelFileError(
        weights, "needs a tokenizer, and none was found",
        found=f"no tokenizer files in {', '.join(str(c) for c in candidates)}",
        hint=f"Put the model's tokenizer files (vocab.json + merges.txt or tokenizer.json) in "
             f"{weights.parent / (weights.stem + '_tokenizer')}; inside ComfyUI the bundled one is used.",
    )


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (ValueError, OSError):  # no tokenizer_class recorded: Qwen2.5's own class reads vocab + merges
        from transformers import Qwen2Tokenizer

        return Qwen2Tokenizer.from_pretrained(str(folder))


def load_text_encoder(path, tokenizer_path=None, tokenizer_search=(), dtype: torch.dtype | None = None,
                      device="cpu", operations=None) -> LoadedTextEncoder:
    """Load the Qwen2.5-VL language model in `path` and its tokenizer.

    dtype: weight dtype (None keeps the stored one; layers from `operations` compute in the input dtype).
    """
    weights = _weights_location(Path(path))
    checkpoint = open_checkpoint(weights)
    identity = find_component(checkpoint, TEXT_ENCODER)
    names = language_model_names(checkpoint, identity.prefix)
    shapes = {name: checkpoint.shape(key) for key, name in names.items()}
    try:
        config = qwen25vl.config_from_shapes(shapes)
    except (KeyError, ValueError, IndexError) as e:
        raise ModelFileError(checkpoint.path, f"looks like a {identity.description} but its configuration "
                             "cannot be read from its tensors", found=f"{type(e).__name__}: {e}") from None
    # Tokenizer first: a missing tokenizer should not cost a multi-GB load.
    tokenizer = load_tokenizer(Path(tokenizer_path) if tokenizer_path else find_tokenizer(Path(path), tokenizer_search))

    state_dict = {name: checkpoint.tensor(key) for key, name in names.items()}
    operations = operations or StandaloneOps
    if holds_quantized(state_dict):
        operations = quantized_ops(operations)  # FP8 / GGUF weights stay quantized, dequantized per layer
    model = qwen25vl.build_text_model(config, operations, dtype=dtype)
    description = f"{identity.description} ({config.num_hidden_layers} layers, hidden {config.hidden_size})"
    assign_state_dict(model, state_dict, checkpoint.path, description, dtype=dtype, device=device)
    model.rotary_emb.to(device)
    return LoadedTextEncoder(model, tokenizer, identity.family, identity.layout, str(checkpoint.path), description)
