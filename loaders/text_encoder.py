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
same Qwen2.5-VL file (ComfyUI single file, FP8 too, or a GGUF this pack's converter wrote) or folder
(transformers' `model.visual.*`); loading the text encoder never touches them. A llama.cpp GGUF holds only
the language model: llama.cpp keeps the tower in a separate `mmproj` GGUF (layouts/llama_cpp_vision.py),
which `load_vision_tower` reads too (Q8_0 weights stay quantized). `locate_vision_tower(text_encoder_path)`
says which file holds the tower for a text encoder: the file itself, or the Qwen2.5-VL mmproj beside it.

`read_text_encoder(path)` does everything that can fail on a bad file, without allocating a weight: it
opens the file, reads the configuration from the shapes, checks every tensor against a build on the meta
device, finds and loads the tokenizer and checks that the embedding covers the tokenizer's vocabulary.
`build_text_encoder` then assigns the memory-mapped tensors; `load_text_encoder` does both.

Tokenizers: loaders/tokenizers.py (never downloaded; the host's places are asked with the detected kind's
tokenizer name). Every loaded encoder records where its tokenizer came from.
"""

from __future__ import annotations

import logging
import re
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
from .errors import ModelFileError, brief
from .layouts import llama_cpp, llama_cpp_vision
from .layouts.base import LayoutStateDict, Take
from .quant.ops import quantized_ops
from .quant.tensor import holds_quantized
from .tokenizers import TokenizerPlace, check_vocabulary, find_byt5_tokenizer, find_qwen_tokenizer

log = logging.getLogger("ComfyUI-MMDiT")

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
COMFYUI_VISION_LAYOUT = "comfyui"  # visual.* (ComfyUI single file, FP8) or model.visual.* (transformers)
MMPROJ_LAYOUT = llama_cpp_vision.LLAMA_CPP_VISION.name  # a llama.cpp mmproj GGUF


@dataclass
class VisionTowerFile:
    """The vision tower in a Qwen2.5-VL file or a llama.cpp mmproj file, checked against a meta build
    (nothing loaded yet)."""

    checkpoint: Checkpoint
    weights: LayoutStateDict  # tower name -> tensor made from the file on access; names and shapes in .shapes
    config: qwen25vl_vision.QwenVisionConfig
    layout: str  # COMFYUI_VISION_LAYOUT or MMPROJ_LAYOUT

    @property
    def description(self) -> str:
        c = self.config
        source = ", llama.cpp mmproj" if self.layout == MMPROJ_LAYOUT else ""
        return (f"Qwen2.5-VL vision tower ({c.depth} blocks, width {c.hidden_size}, "
                f"output {c.out_hidden_size}{source})")


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
    """Open and check the vision tower in `path`: a Qwen2.5-VL text-encoder file or folder holding it
    (`visual.*`), or a llama.cpp mmproj GGUF of Qwen2.5-VL (see locate_vision_tower to find one beside a
    GGUF text encoder). ModelFileError for a file of another kind or one without a vision tower."""
    return _checked_vision_tower(open_checkpoint(_weights_location(Path(path))))


def _checked_vision_tower(checkpoint: Checkpoint) -> VisionTowerFile:
    if llama_cpp_vision.is_mmproj(checkpoint):
        layout = MMPROJ_LAYOUT
        weights = llama_cpp_vision.vision_tower_weights(checkpoint)
    else:
        layout = COMFYUI_VISION_LAYOUT
        identity = find_component(checkpoint, TEXT_ENCODER, families=("qwen25_vl",))
        names = vision_tower_names(checkpoint)
        if not names:
            raise _without_vision_tower(checkpoint, identity)
        shapes = {name: tuple(checkpoint.shape(key)) for key, name in names.items()}
        weights = LayoutStateDict({name: Take(key) for key, name in names.items()}, shapes, checkpoint.tensor)
    try:
        config = qwen25vl_vision.config_from_shapes(weights.shapes)
    except (KeyError, ValueError, IndexError) as e:
        what = "is a Qwen2.5-VL mmproj file" if layout == MMPROJ_LAYOUT else "has visual.* tensors"
        raise ModelFileError(checkpoint.path, f"{what}, but the vision tower's configuration cannot be read "
                             "from its tensors", found=f"{type(e).__name__}: {e}",
                             hint="The file is incomplete or damaged; re-download it.") from None
    if layout == MMPROJ_LAYOUT:
        llama_cpp_vision.check_metadata(checkpoint, config)
    checked = VisionTowerFile(checkpoint, weights, config, layout)
    check_shapes(checkpoint.path, checked.description, weights.shapes,
                 module_shapes(qwen25vl_vision.build_vision_model(config)))
    return checked


def _without_vision_tower(checkpoint: Checkpoint, identity: Identity) -> ModelFileError:
    gguf = checkpoint.format == "gguf"
    return ModelFileError(
        checkpoint.path, "has no vision tower: this text encoder file holds only the language model, and "
        "Qwen-Image-Edit needs the vision tower to read its reference images",
        found=f"a {identity.description} without visual.* tensors",
        expected=("Qwen2.5-VL's mmproj GGUF (llama.cpp keeps the vision tower in that separate file)" if gguf else
                  "the full Qwen2.5-VL file (qwen_2.5_vl_7b*.safetensors, also FP8), a Hugging Face folder, or "
                  "Qwen2.5-VL's llama.cpp mmproj GGUF"),
        hint=(f"Put the mmproj file published with this GGUF beside it ({MMPROJ_EXAMPLES}); it is found there "
              "by its content." if gguf else
              "Use the complete qwen_2.5_vl_7b text encoder (it holds model.* and visual.* tensors)."),
    )


def _vision_tensor(tensor: torch.Tensor, name: str, dtype) -> torch.Tensor:
    """Plain FP8 norm weights (torch has no fp8 arithmetic; transformers' RMSNorm multiplies by its weight)
    become fp32 when no weight dtype was asked for; everything else as stored (layers cast at use)."""
    fp8 = tensor.dtype in (torch.float8_e4m3fn, torch.float8_e5m2)
    if dtype is None and fp8 and tensor.ndim == 1 and not name.endswith(".bias"):  # norm1, norm2, merger.ln_q
        return tensor.to(torch.float32)
    return tensor


def build_vision_tower(checked: VisionTowerFile, dtype: torch.dtype | None = None, device="cpu",
                       operations=None) -> LoadedVisionTower:
    """The tower with the checked file's tensors assigned (dtype: weight dtype, None keeps the stored one:
    a GGUF's Q8_0 matrices stay quantized and are dequantized per layer)."""
    checkpoint = checked.checkpoint
    state_dict = {name: _vision_tensor(checked.weights[name], name, dtype) for name in checked.weights}
    operations = operations or StandaloneOps
    if holds_quantized(state_dict):
        operations = quantized_ops(operations)
    model = qwen25vl_vision.build_vision_model(checked.config, operations, dtype=dtype)
    assign_state_dict(model, state_dict, checkpoint.path, checked.description, dtype=dtype, device=device)
    model.rotary_pos_emb.to(device)
    return LoadedVisionTower(model, checked.config, str(checkpoint.path), checked.description)


def load_vision_tower(path, dtype: torch.dtype | None = None, device="cpu", operations=None) -> LoadedVisionTower:
    """read_vision_tower + build_vision_tower: the vision tower in the Qwen2.5-VL file or folder `path`, or in
    a llama.cpp mmproj GGUF (for a GGUF text encoder, `locate_vision_tower` finds that file first)."""
    return build_vision_tower(read_vision_tower(path), dtype=dtype, device=device, operations=operations)


# --- finding the vision tower for a text encoder ---------------------------------------------------------------
MMPROJ_MARK = "mmproj"  # in the name of every mmproj file llama.cpp's users publish
MMPROJ_EXAMPLES = ("mmproj-Qwen2.5-VL-7B-Instruct-f16.gguf, Qwen2.5-VL-7B-Instruct-mmproj-F16.gguf or "
                   "mmproj-F16.gguf")
# Quantization tags in a file name, removed before comparing model names: Q8_0, Q4_K_M, IQ4_XS, UD-Q4_K_XL,
# F16, BF16, ...
_QUANT_TAG = re.compile(r"(?:^|[-_. ])(?:ud[-_])?(?:i?q\d(?:_[a-z0-9]+)*|bf16|fp16|fp32|f16|f32)(?=$|[-_. ])")


@dataclass(frozen=True)
class VisionTowerChoice:
    """Where the vision tower for a text encoder is, and a sentence saying which file and why."""

    path: Path
    note: str


def model_name_tokens(file_name) -> frozenset[str]:
    """The words of a model file's name without its quantization tags and `mmproj`:
    'mmproj-Qwen2.5-VL-7B-Instruct-f16.gguf' and 'Qwen2.5-VL-7B-Instruct-Q4_K_M.gguf' both give
    {qwen2, 5, vl, 7b, instruct}; 'mmproj-F16.gguf' gives nothing."""
    stem = Path(file_name).name.lower()
    for suffix in (".gguf", ".safetensors", ".sft"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    stem = _QUANT_TAG.sub(" ", stem.replace(MMPROJ_MARK, " "))
    stem = _QUANT_TAG.sub(" ", stem)  # a tag that followed a removed one
    return frozenset(word for word in re.split(r"[-_. ]+", stem) if word)


def _name_similarity(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def _language_model_width(checkpoint: Checkpoint, identity: Identity) -> int | None:
    """The text encoder's hidden width (its token table's), which the vision tower's output must match."""
    for key, name in language_model_names(checkpoint, identity.prefix, identity.layout).items():
        if name == "embed_tokens.weight":
            return tuple(checkpoint.shape(key))[-1]
    return None


def _gguf_files(folders, exclude: Path) -> list[Path]:
    seen, files = set(), []
    for folder in folders:
        try:
            entries = sorted(Path(folder).iterdir())
        except OSError:
            continue
        for file in entries:
            if file.name.lower().endswith(".gguf") and file.is_file():
                resolved = file.resolve()
                if resolved != exclude and resolved not in seen:
                    seen.add(resolved)
                    files.append(file)
    return files


def _mmproj_candidates(files: list[Path], width: int | None):
    """([(file, VisionTowerFile)] that fit, [(file, why not)]) among `files`. Files that are no mmproj at
    all (the language model's other quantizations) are left out of both lists unless named like one."""
    accepted, rejected = [], []
    for file in files:
        named = MMPROJ_MARK in file.name.lower()
        try:
            checkpoint = open_checkpoint(file)
        except ModelFileError as e:
            if named:
                rejected.append((file, f"unreadable ({e.problem})"))
            continue
        if not llama_cpp_vision.is_mmproj(checkpoint):
            if named:
                rejected.append((file, f"not an mmproj file (general.architecture "
                                       f"{brief(getattr(checkpoint, 'architecture', None))})"))
            continue
        try:
            tower = _checked_vision_tower(checkpoint)
        except ModelFileError as e:
            rejected.append((file, e.problem if not e.found else f"{e.problem} ({e.found})"))
            continue
        if width is not None and tower.config.out_hidden_size != width:
            rejected.append((file, f"a Qwen2.5-VL vision tower for a {tower.config.out_hidden_size}-wide language "
                                   f"model, and this text encoder is {width} wide (another Qwen2.5-VL size)"))
            continue
        accepted.append((file, tower))
    return accepted, rejected


def find_vision_tower(text_encoder_path, folders=()) -> VisionTowerChoice:
    """Where the vision tower for the Qwen2.5-VL text encoder `text_encoder_path` is.

    * The file itself when it holds the tower: a ComfyUI single file, a Hugging Face folder, FP8, a GGUF
      converted by this pack (visual.* tensors), or an mmproj file given directly.
    * For a text encoder without it (a llama.cpp GGUF holds only the language model): a llama.cpp mmproj GGUF
      of Qwen2.5-VL in the same folder (then in `folders`), found by content: files named *mmproj*.gguf
      first, then any other .gguf there. It must be a Qwen2.5-VL tower ("qwen2.5vl_merger") that passes every
      check, with an output as wide as this text encoder (a 3B tower does not fit a 7B encoder). Among
      several, the one whose name shares the text encoder's model name (quantization tags aside) wins, then
      the first by name; the note names the pick and the others.

    ModelFileError when none is found, saying what was looked for, where, and what was found instead.
    """
    path = Path(text_encoder_path)
    checkpoint = open_checkpoint(_weights_location(path))
    if llama_cpp_vision.is_mmproj(checkpoint):
        _checked_vision_tower(checkpoint)  # refuses another model's projector or a damaged file
        return VisionTowerChoice(path, f"{path.name} is itself Qwen2.5-VL's vision tower (a llama.cpp mmproj file)")
    identity = find_component(checkpoint, TEXT_ENCODER, families=("qwen25_vl",))
    if vision_tower_names(checkpoint):
        return VisionTowerChoice(path, f"the vision tower is in {path.name} itself")

    home = checkpoint.path.parent
    places = [home, *(Path(f) for f in folders)]
    files = _gguf_files(places, checkpoint.path.resolve())
    width = _language_model_width(checkpoint, identity)
    named = [f for f in files if MMPROJ_MARK in f.name.lower()]
    accepted, rejected = _mmproj_candidates(named, width)
    if not accepted:  # a tower under another name (qwen2_vl_surgery.py wrote <model>-vision.gguf)
        more, more_rejected = _mmproj_candidates([f for f in files if f not in named], width)
        accepted, rejected = more, rejected + more_rejected
    if not accepted:
        raise _no_mmproj(checkpoint, identity, places, files, rejected)

    own = model_name_tokens(checkpoint.path.name)
    ranked = sorted(accepted, key=lambda item: (-_name_similarity(own, model_name_tokens(item[0].name)),
                                                item[0].name))
    chosen = ranked[0][0]
    similarity = _name_similarity(own, model_name_tokens(chosen.name))
    why = ("its name shares the text encoder's model name" if similarity == 1.0 else
           "its name is closest to the text encoder's" if similarity > 0 and len(accepted) > 1 else
           "the only Qwen2.5-VL mmproj file there" if len(accepted) == 1 else "the first by name")
    others = [f.name for f, _ in ranked[1:]]
    note = (f"vision tower for {path.name}: {chosen.name} in {chosen.parent} ({why}"
            + (f"; also found {', '.join(others)}" if others else "") + ")")
    return VisionTowerChoice(chosen, note)


def _no_mmproj(checkpoint, identity, places, files, rejected) -> ModelFileError:
    where = ", ".join(str(p) for p in places)
    if rejected:
        found = "; ".join(f"{file.name}: {why}" for file, why in rejected[:4])
        found += f" ({len(rejected)} in all)" if len(rejected) > 4 else ""
    else:
        found = (f"no .gguf file named *{MMPROJ_MARK}* and no mmproj file among the {len(files)} other .gguf "
                 "files" if files else "no other .gguf file")
    gguf = checkpoint.format == "gguf"
    return ModelFileError(
        checkpoint.path, f"holds only Qwen2.5-VL's language model ({identity.description}), and no vision tower "
        f"was found beside it; Qwen-Image-Edit needs the vision tower to read its reference images",
        found=f"in {where}: {found}",
        expected=f"a llama.cpp mmproj GGUF of Qwen2.5-VL in the same folder ({MMPROJ_EXAMPLES})",
        hint=("Download the mmproj file published with this Qwen2.5-VL-7B-Instruct GGUF and put it beside it, or "
              "use the complete qwen_2.5_vl_7b safetensors text encoder." if gguf else
              "Use the complete qwen_2.5_vl_7b text encoder (it holds model.* and visual.* tensors), or put "
              "Qwen2.5-VL's mmproj GGUF beside this file."),
    )


def locate_vision_tower(text_encoder_path, folders=()) -> Path:
    """find_vision_tower's path; which file was picked and why goes to the log."""
    choice = find_vision_tower(text_encoder_path, folders)
    log.info(choice.note)
    return choice.path
