"""Text-encoder files -> a ready encoder and its tokenizer, for every kind of text encoder the pack runs.

Kinds (each file's is detected from its tensors, loaders/detection.py, and reported as `encoder_kind`):
* "qwen25_vl": Qwen2.5-VL's language model (Qwen-Image, HunyuanImage 2.1). A single file in the ComfyUI
  layout (qwen_2.5_vl_7b*.safetensors, or the text-encoder part of a full checkpoint), a llama.cpp GGUF,
  a Hugging Face model folder (config.json + sharded safetensors, e.g. a diffusers repo's text_encoder/),
  or a diffusers repo root holding text_encoder/ and tokenizer/. Only the language model's tensors are
  read; the vision tower and the LM head in the same files stay on disk.
* "byt5": the ByT5 glyph encoder (HunyuanImage 2.1). The ComfyUI single file (byt5_small_glyphxl*.safetensors,
  also FP8), a Hugging Face T5EncoderModel folder (transformers' names; its tied alias
  encoder.embed_tokens.weight is skipped, decoder tensors of a full T5 are left on disk), or a GGUF in
  llama.cpp's T5 names (token_embd, enc.blk.N.attn_q, ..., as ComfyUI-GGUF maps them) or in the ComfyUI names.

Vision tower (Qwen-Image-Edit's image prompts): `load_vision_tower(path)` reads the `visual.*` tensors of the
same Qwen2.5-VL file (ComfyUI single file, FP8 too) or folder (transformers' `model.visual.*`); loading the
text encoder never touches them. A llama.cpp GGUF holds no vision tower (llama.cpp keeps it in a separate
`mmproj` file, not read yet).

`read_text_encoder(path)` does everything that can fail on a bad file, without allocating a weight: it
opens the file, reads the configuration from the shapes, checks every tensor against a build on the meta
device, finds and loads the tokenizer and checks that the embedding covers the tokenizer's vocabulary.
`build_text_encoder` then assigns the memory-mapped tensors; `load_text_encoder` does both.

Tokenizers: loaders/tokenizers.py (never downloaded; the host's places are asked with the detected kind's
tokenizer name). Every loaded encoder records where its tokenizer came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..model_defs.ops import StandaloneOps
from ..model_defs.text_encoders import byt5, qwen25vl, qwen25vl_vision
from ..model_defs.text_encoders.base import TextEncoderSpec
from .assign import assign_state_dict, check_shapes, module_shapes
from .checkpoints import Checkpoint, open_checkpoint
from .detection import TEXT_ENCODER, Identity, find_component
from .errors import ModelFileError
from .layouts import llama_cpp
from .quant.ops import quantized_ops
from .quant.tensor import holds_quantized
from .tokenizers import TokenizerPlace, check_vocabulary, find_byt5_tokenizer, find_qwen_tokenizer

# Parts of the file that are not the language model (kept on disk).
SKIPPED_PREFIXES = ("visual.", "model.visual.", "lm_head.")
LANGUAGE_MODEL_PREFIXES = ("model.language_model.", "language_model.model.", "model.")


@dataclass
class LoadedTextEncoder:
    model: torch.nn.Module
    tokenizer: object
    family: str  # the encoder kind: "qwen25_vl", "byt5"
    layout: str
    path: str
    description: str
    tokenizer_source: TokenizerPlace | None = None

    @property
    def encoder_kind(self) -> str:
        """What the file holds ("qwen25_vl", "byt5"), for a node to check it fits the family."""
        return self.family


@dataclass
class TextEncoderFile:
    """A text-encoder file that passed every check, with its tokenizer loaded."""

    checkpoint: Checkpoint
    identity: Identity
    names: dict[str, str]  # {key in the file: network name}
    config: object  # the kind's config (qwen25vl.QwenTextConfig, byt5.ByT5Config)
    tokenizer: object
    tokenizer_source: TokenizerPlace

    @property
    def encoder_kind(self) -> str:
        return self.identity.family

    @property
    def description(self) -> str:
        return _description(self.identity, self.config)


def _description(identity: Identity, config) -> str:
    return f"{identity.description} ({_KINDS[identity.family].summary(config)})"


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


# Parts of a T5 file that are not the encoder (a full encoder-decoder T5, llama.cpp's decoder and head).
T5_SKIPPED_PREFIXES = ("decoder.", "lm_head.", "dec.", "output.")
T5_TIED_ALIAS = "encoder.embed_tokens.weight"  # transformers' second name for shared.weight


def t5_encoder_names(checkpoint: Checkpoint, prefix: str, layout: str = "") -> dict[str, str]:
    """{file key: network name} for a T5 encoder's tensors in the ComfyUI, transformers or llama.cpp names
    (layout "llama_cpp": through that key layout); decoder and head left out, transformers' tied alias
    skipped when shared.weight is there too."""
    keys = [k for k in checkpoint.keys() if k.startswith(prefix)]
    renamed = llama_cpp.t5_names([k[len(prefix):] for k in keys], checkpoint.path) if layout == "llama_cpp" else {}
    names = {}
    for key in keys:
        rest = key[len(prefix):]
        rest = renamed.get(rest, rest)
        if rest.startswith(T5_SKIPPED_PREFIXES):
            continue
        names[key] = rest
    if prefix + "shared.weight" in checkpoint or "shared.weight" in names.values():
        names.pop(prefix + T5_TIED_ALIAS, None)
    elif prefix + T5_TIED_ALIAS in names:
        names[prefix + T5_TIED_ALIAS] = "shared.weight"
    return names


def read_text_encoder(path, tokenizer_path=None, tokenizer_search=(), tokenizer_places=None,
                      kinds: tuple[str, ...] | None = None) -> TextEncoderFile:
    """Open and check the text encoder in `path` (its kind detected), and load its tokenizer.

    tokenizer_path: a tokenizer folder to use; tokenizer_search: more folders to look in (TokenizerPlace or
    paths) whatever the kind; tokenizer_places: the host's `tokenizer_places(name)`, asked with the
    detected kind's tokenizer name ("qwen25", "byt5"); kinds: the encoder kinds wanted (None: any), so
    that a file of another kind is refused naming what was found and what was expected.
    """
    weights = _weights_location(Path(path))
    checkpoint = open_checkpoint(weights)
    identity = find_component(checkpoint, TEXT_ENCODER, families=ENCODER_KINDS)
    kind = _KINDS[identity.family]
    if kinds is not None and identity.family not in kinds:
        wanted = " or ".join(_KINDS[k].spec.display_name for k in kinds)
        raise ModelFileError(checkpoint.path, f"holds a {identity.description}, but the {wanted} is wanted here",
                             found=identity.description, expected=wanted,
                             hint="Choose the matching file in this loader (each family names the text encoders it takes).")
    names, config = checked_tensors(checkpoint, identity)

    # The tokenizer is part of the check: a missing one should not cost a multi-GB load.
    search = list(tokenizer_search)
    if tokenizer_places is not None:
        search += list(tokenizer_places(kind.spec.tokenizer_name))
    tokenizer, place = kind.tokenizer(Path(path), tokenizer_path, search, config)
    check_vocabulary(checkpoint.path, config, tokenizer, place)
    return TextEncoderFile(checkpoint, identity, names, config, tokenizer, place)


# --- the kinds ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Kind:
    """The loader's side of an encoder kind: its file names, tokenizer and description."""

    spec: TextEncoderSpec
    names: Callable[[Checkpoint, str, str], dict[str, str]]  # (checkpoint, prefix, layout) -> {file key: name}
    tokenizer: Callable  # (path, tokenizer_path, search, config) -> (tokenizer, TokenizerPlace)
    summary: Callable[[object], str]  # config -> "12 layers, width 1472"
    finish: Callable[[torch.nn.Module, object], None] = lambda model, device: None  # after assignment


_KINDS = {
    "qwen25_vl": _Kind(qwen25vl.SPEC, language_model_names, find_qwen_tokenizer,
                       lambda c: f"{c.num_hidden_layers} layers, hidden {c.hidden_size}",
                       finish=lambda model, device: model.rotary_emb.to(device)),
    "byt5": _Kind(byt5.SPEC, t5_encoder_names, find_byt5_tokenizer,
                  lambda c: f"{c.num_layers} layers, width {c.d_model}, {c.vocab_size} tokens"),
}
ENCODER_KINDS = tuple(_KINDS)


def checked_tensors(checkpoint: Checkpoint, identity: Identity) -> tuple[dict[str, str], object]:
    """({file key: network name}, config) of the encoder `identity` found in `checkpoint`: the config read
    from the shapes and every name and shape checked against the network built on the meta device."""
    kind = _KINDS[identity.family]
    names = kind.names(checkpoint, identity.prefix, identity.layout)
    shapes = {name: checkpoint.shape(key) for key, name in names.items()}
    try:
        config = kind.spec.config_from_shapes(shapes)
    except (KeyError, ValueError, IndexError) as e:
        raise ModelFileError(checkpoint.path, f"looks like a {identity.description} but its configuration "
                             "cannot be read from its tensors", found=f"{type(e).__name__}: {e}") from None
    check_shapes(checkpoint.path, _description(identity, config), shapes, module_shapes(kind.spec.build(config)))
    return names, config


def encoder_kind(name: str):
    """The loader's record for an encoder kind ("qwen25_vl", "byt5": its file names, network spec and
    tokenizer search), None for a kind it does not run."""
    return _KINDS.get(name)


def build_text_encoder(checked: TextEncoderFile, dtype: torch.dtype | None = None, device="cpu",
                       operations=None) -> LoadedTextEncoder:
    """The encoder with the checked file's tensors assigned.

    dtype: weight dtype (None keeps the stored one; layers from `operations` compute in the input dtype).
    """
    checkpoint = checked.checkpoint
    kind = _KINDS[checked.encoder_kind]
    state_dict = {name: checkpoint.tensor(key) for key, name in checked.names.items()}
    operations = operations or StandaloneOps
    if holds_quantized(state_dict):
        operations = quantized_ops(operations)  # FP8 / GGUF weights stay quantized, dequantized per layer
    model = kind.spec.build(checked.config, operations, dtype=dtype)
    assign_state_dict(model, state_dict, checkpoint.path, checked.description, dtype=dtype, device=device)
    kind.finish(model, device)
    return LoadedTextEncoder(model, checked.tokenizer, checked.identity.family, checked.identity.layout,
                             str(checkpoint.path), checked.description, checked.tokenizer_source)


def load_text_encoder(path, tokenizer_path=None, tokenizer_search=(), dtype: torch.dtype | None = None,
                      device="cpu", operations=None, tokenizer_places=None,
                      kinds: tuple[str, ...] | None = None) -> LoadedTextEncoder:
    """read_text_encoder + build_text_encoder: the text encoder in `path` and its tokenizer."""
    checked = read_text_encoder(path, tokenizer_path=tokenizer_path, tokenizer_search=tokenizer_search,
                                tokenizer_places=tokenizer_places, kinds=kinds)
    return build_text_encoder(checked, dtype=dtype, device=device, operations=operations)


# --- the vision tower -----------------------------------------------------------------------------------------
@dataclass
class VisionTowerFile:
    """The vision tower in a Qwen2.5-VL file, checked against a meta build (nothing loaded yet)."""

    checkpoint: Checkpoint
    names: dict[str, str]  # {key in the file: tower name}
    config: qwen25vl_vision.QwenVisionConfig

    @property
    def description(self) -> str:
        c = self.config
        return (f"Qwen2.5-VL vision tower ({c.depth} blocks, width {c.hidden_size}, "
                f"output {c.out_hidden_size})")


@dataclass
class LoadedVisionTower:
    model: torch.nn.Module
    config: qwen25vl_vision.QwenVisionConfig
    path: str
    description: str


VISION_MARKER = "visual.patch_embed.proj.weight"


def vision_tower_names(checkpoint: Checkpoint) -> dict[str, str]:
    """{file key: tower name} for the vision tower's tensors, wherever the file puts them (`visual.*`,
    transformers 5's `model.visual.*`, a full checkpoint's `<prefix>visual.*`): found by its patch embedding."""
    markers = sorted(k for k in checkpoint.keys() if k == VISION_MARKER or k.endswith("." + VISION_MARKER))
    if not markers:
        return {}
    prefix = markers[0][:-len("patch_embed.proj.weight")]
    return {key: key[len(prefix):] for key in checkpoint.keys() if key.startswith(prefix)}


def read_vision_tower(path) -> VisionTowerFile:
    """Open the Qwen2.5-VL text-encoder file (or folder) `path` and check its vision tower; ModelFileError
    for a file of another kind or one without a vision tower."""
    checkpoint = open_checkpoint(_weights_location(Path(path)))
    identity = find_component(checkpoint, TEXT_ENCODER, families=("qwen25_vl",))
    names = vision_tower_names(checkpoint)
    if not names:
        gguf = identity.layout == llama_cpp.LLAMA_CPP.name
        raise ModelFileError(
            checkpoint.path, "has no vision tower: this text encoder file holds only the language model, and "
            "Qwen-Image-Edit needs the vision tower to read its reference images",
            found=f"a {identity.description} without visual.* tensors",
            expected="the full Qwen2.5-VL file (qwen_2.5_vl_7b*.safetensors, also FP8) or a Hugging Face folder",
            hint=("A llama.cpp GGUF keeps the vision tower in a separate mmproj file, which this pack does not read "
                  "yet: use the safetensors text encoder for editing." if gguf else
                  "Use the complete qwen_2.5_vl_7b text encoder (it holds model.* and visual.* tensors)."),
        )
    shapes = {name: tuple(checkpoint.shape(key)) for key, name in names.items()}
    try:
        config = qwen25vl_vision.config_from_shapes(shapes)
    except (KeyError, ValueError, IndexError) as e:
        raise ModelFileError(checkpoint.path, "has visual.* tensors, but the vision tower's configuration cannot "
                             "be read from them", found=f"{type(e).__name__}: {e}") from None
    checked = VisionTowerFile(checkpoint, names, config)
    check_shapes(checkpoint.path, checked.description, shapes,
                 module_shapes(qwen25vl_vision.build_vision_model(config)))
    return checked


def _vision_tensor(tensor: torch.Tensor, name: str, dtype) -> torch.Tensor:
    """Plain FP8 norm weights (torch has no fp8 arithmetic; transformers' RMSNorm multiplies by its weight)
    become fp32 when no weight dtype was asked for; everything else as stored (layers cast at use)."""
    fp8 = tensor.dtype in (torch.float8_e4m3fn, torch.float8_e5m2)
    if dtype is None and fp8 and tensor.ndim == 1 and not name.endswith(".bias"):  # norm1, norm2, merger.ln_q
        return tensor.to(torch.float32)
    return tensor


def build_vision_tower(checked: VisionTowerFile, dtype: torch.dtype | None = None, device="cpu",
                       operations=None) -> LoadedVisionTower:
    """The tower with the checked file's tensors assigned (dtype: weight dtype, None keeps the stored one)."""
    checkpoint = checked.checkpoint
    state_dict = {name: _vision_tensor(checkpoint.tensor(key), name, dtype) for key, name in checked.names.items()}
    operations = operations or StandaloneOps
    if holds_quantized(state_dict):
        operations = quantized_ops(operations)
    model = qwen25vl_vision.build_vision_model(checked.config, operations, dtype=dtype)
    assign_state_dict(model, state_dict, checkpoint.path, checked.description, dtype=dtype, device=device)
    model.rotary_pos_emb.to(device)
    return LoadedVisionTower(model, checked.config, str(checkpoint.path), checked.description)


def load_vision_tower(path, dtype: torch.dtype | None = None, device="cpu", operations=None) -> LoadedVisionTower:
    """read_vision_tower + build_vision_tower: the vision tower of the Qwen2.5-VL file or folder `path`."""
    return build_vision_tower(read_vision_tower(path), dtype=dtype, device=device, operations=operations)
