"""Prompt-enhancer files -> a transformers causal language model and its tokenizer, never downloading.

What is read:
* a Hugging Face model folder: config.json, tokenizer files, weights (one .safetensors, a sharded index, or
  one .gguf);
* a single weights file (.safetensors, also FP8; .gguf) with its config.json and tokenizer in a folder
  beside it: `<file stem>/`, `<file stem>_tokenizer/` or the file's own folder (searched in that order);
* a llama.cpp GGUF alone: its configuration and tokenizer then come from the GGUF's own metadata, read by
  transformers (the architectures transformers reads GGUF metadata of: qwen2, qwen3, llama, mistral, ...;
  HunyuanImage 2.1's reprompt model, hunyuan-dense, needs its config.json and tokenizer beside the file).

How the network is made: the architecture is transformers' own class for the config
(`AutoModelForCausalLM.from_config`), built on the meta device (no memory), with every Linear and Embedding
replaced by the host's `operations` layers (inside ComfyUI, comfy.ops.manual_cast: the memory manager can
stream them; standalone, model_defs/ops.py), then the file's memory-mapped tensors are checked against it
(names and shapes) and assigned (loaders/assign.py). So the maths is transformers' own, and:
* FP8 (this pack's FP8 formats: plain FP8, ComfyUI's scaled FP8 and comfy_quant files, loaders/quant/fp8.py)
  and GGUF weights stay quantized in memory and are dequantized one layer at a time as it runs
  (loaders/quant/ops.py), instead of transformers' way of expanding the whole model to full precision;
* a bf16 file is never copied on the CPU: its weights stay memory-mapped until the host moves them.
Norm weights and other small parameters become the compute dtype; Linear and Embedding weights stay as
stored and are cast per use (the embedding's output is cast to the compute dtype).

GGUF tensor names (llama.cpp's token_embd, blk.N.attn_q, ...) are matched to the model's through the gguf
package's own name table for the file's architecture (gguf.get_tensor_name_map), as transformers does.
Architectures whose llama.cpp conversion permutes the q/k rows (llama, mistral) are refused by name, as the
pack's text-encoder GGUF reader does: undoing that permutation is not implemented.

Nothing is downloaded and no code from a model folder runs: configs and tokenizers are read from local
folders only (`local_files_only=True`, and only existing local paths are ever passed); a tokenizer that is
custom code (`auto_map` in tokenizer_config.json, such as Hunyuan-7B's tiktoken-based HYTokenizer) is
refused unless `allow_tokenizer_code=True`, which runs that folder's tokenizer code as the official
pipeline does (`trust_remote_code=True`), from the folder, offline. The model class is always transformers'
own (an `auto_map` in config.json is not followed).

Refused with a ModelFileError naming the file: no config.json anywhere, a config that is not a causal
language model, no tokenizer, a tokenizer without a chat template, weights that do not fit the config,
a tokenizer with more tokens than the model's embedding has rows.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...loaders.assign import assign_state_dict, check_shapes, module_shapes
from ...loaders.checkpoints import Checkpoint, open_checkpoint
from ...loaders.errors import ModelFileError, brief
from ...loaders.layouts.llama_cpp import PERMUTED_QK_ARCHITECTURES
from ...loaders.quant.ops import quantized_ops
from ...loaders.quant.tensor import holds_quantized, is_quantized
from ...loaders.tokenizers import TOKENIZER_FILES
from ..ops import StandaloneOps

log = logging.getLogger("ComfyUI-MMDiT")

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"


@dataclass
class EnhancerFile:
    """A checked prompt-enhancer model: weights (not loaded), config, tokenizer; see read_enhancer."""

    path: Path
    checkpoint: Checkpoint
    names: dict  # {key in the file: model parameter name}
    config: object  # transformers PretrainedConfig
    tokenizer: object
    config_source: str
    tokenizer_source: str
    generation_config: dict = field(default_factory=dict)  # generation_config.json, when there is one

    @property
    def architecture(self) -> str:
        return architecture_name(self.config)

    @property
    def context_length(self) -> int | None:
        return getattr(self.config.get_text_config(), "max_position_embeddings", None)

    @property
    def quantized(self) -> str:
        if self.checkpoint.format == "gguf":
            return "GGUF"
        dtypes = {self.checkpoint.dtype(k) for k in self.names}
        return "FP8" if dtypes & {torch.float8_e4m3fn, torch.float8_e5m2} else ""

    @property
    def description(self) -> str:
        text = self.config.get_text_config()
        parts = [f"{getattr(text, 'num_hidden_layers', '?')} layers", f"hidden {getattr(text, 'hidden_size', '?')}",
                 f"{getattr(text, 'vocab_size', '?')} tokens"]
        if self.quantized:
            parts.append(self.quantized)
        return f"{self.architecture} ({', '.join(parts)})"

    def stop_token_ids(self) -> tuple[int, ...]:
        """Every id that ends the answer: generation_config.json's eos, config.json's and the tokenizer's."""
        ids = []
        for value in (self.generation_config.get("eos_token_id"), getattr(self.config, "eos_token_id", None),
                      getattr(self.config.get_text_config(), "eos_token_id", None), self.tokenizer.eos_token_id):
            values = value if isinstance(value, (list, tuple)) else [value]
            ids += [int(v) for v in values if isinstance(v, int) and not isinstance(v, bool) and v >= 0]
        return tuple(dict.fromkeys(ids))


@dataclass
class LoadedEnhancer:
    model: torch.nn.Module
    tokenizer: object
    file: EnhancerFile
    dtype: torch.dtype

    @property
    def path(self) -> str:
        return str(self.file.path)

    @property
    def description(self) -> str:
        return self.file.description


def architecture_name(config) -> str:
    """The class named in config.json ("Qwen2ForCausalLM"), or the model type of a config read from GGUF."""
    return (getattr(config, "architectures", None) or [f"{getattr(config, 'model_type', '?')} language model"])[0]


# --- finding the parts ----------------------------------------------------------------------------------------
def companion_folders(weights: Path) -> list[Path]:
    """Where the config and tokenizer of a single weights file may be, in search order."""
    return [weights.parent / weights.stem, weights.parent / f"{weights.stem}_tokenizer", weights.parent]


def _holds_tokenizer(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).is_file() for name in TOKENIZER_FILES + ("tokenizer.model",))


def _weights_in_folder(folder: Path) -> Path:
    """The weights of a model folder: a sharded index, one safetensors file, or one GGUF file."""
    if sorted(folder.glob("*.safetensors.index.json")) or sorted(folder.glob("*.safetensors")):
        return folder
    ggufs = sorted(folder.glob("*.gguf"))
    if len(ggufs) == 1:
        return ggufs[0]
    raise ModelFileError(folder, "is a model folder without weights",
                         found=f"no .safetensors file or index, {len(ggufs)} .gguf files",
                         expected="model.safetensors, a sharded model.safetensors.index.json, or one .gguf file",
                         hint="If this folder holds the config and tokenizer of a single weights file beside it, "
                              "choose that file instead.")


@dataclass
class _Parts:
    weights: Path  # a file, or a folder open_checkpoint reads
    config_dir: Path | None
    tokenizer_dir: Path | None
    searched: list[Path]


def locate_parts(path: Path) -> _Parts:
    if path.is_dir():
        weights = _weights_in_folder(path)
        config_dir = path if (path / CONFIG_FILE).is_file() else None
        tokenizer_dir = path if _holds_tokenizer(path) else None
        return _Parts(weights, config_dir, tokenizer_dir, [path])
    if not path.exists():
        raise ModelFileError(path, "does not exist")
    places = companion_folders(path)
    config_dir = next((p for p in places if (p / CONFIG_FILE).is_file()), None)
    tokenizer_dir = next((p for p in places if _holds_tokenizer(p)), None)
    return _Parts(path, config_dir, tokenizer_dir, places)


# --- config and tokenizer -------------------------------------------------------------------------------------
def _error_text(error: Exception, limit: int = 300) -> str:
    """An exception as one short line for a message."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelFileError(path, "could not be read as JSON", found=f"{type(e).__name__}: {e}") from None
    if not isinstance(value, dict):
        raise ModelFileError(path, "is not a JSON object", found=brief(value))
    return value


def read_config(parts: _Parts, checkpoint: Checkpoint):
    """(config, where it came from): config.json from a local folder, else a GGUF's own metadata."""
    from transformers import AutoConfig

    if parts.config_dir is not None:
        _read_json(parts.config_dir / CONFIG_FILE)  # a readable JSON object, before transformers sees it
        try:
            config = AutoConfig.from_pretrained(str(parts.config_dir), local_files_only=True, trust_remote_code=False)
        except Exception as e:  # transformers' and huggingface_hub's validation errors are of many kinds
            raise ModelFileError(parts.config_dir / CONFIG_FILE, "is not a configuration transformers can read",
                                 found=_error_text(e),
                                 expected="the config.json of a chat language model (model_type qwen2, qwen3, "
                                          "llama, hunyuan_v1_dense, ...)") from None
        return config, f"{parts.config_dir / CONFIG_FILE}"
    if checkpoint.format == "gguf":
        try:
            config = AutoConfig.from_pretrained(str(parts.weights.parent), gguf_file=parts.weights.name,
                                                local_files_only=True)
        except Exception as e:  # whatever transformers' GGUF reader raises for metadata it does not take
            raise _no_config(parts, f"its GGUF metadata cannot be read by transformers ({_error_text(e)})") from None
        return config, f"the GGUF metadata of {parts.weights.name}"
    raise _no_config(parts, "no config.json was found")


def _no_config(parts: _Parts, why: str) -> ModelFileError:
    searched = ", ".join(str(p) for p in parts.searched)
    return ModelFileError(parts.weights, f"has no model configuration: {why}",
                          found=f"no {CONFIG_FILE} in {searched}",
                          expected=f"the model's {CONFIG_FILE} (and tokenizer files) in {parts.searched[0]}",
                          hint="A single weights file needs the config.json and tokenizer of its Hugging Face "
                               "release beside it, in a folder named like the file (without its extension).")


def _tokenizer_code(folder: Path) -> str | None:
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return None
    auto_map = _read_json(config).get("auto_map")
    if not auto_map:
        return None
    entry = auto_map.get("AutoTokenizer") if isinstance(auto_map, dict) else auto_map
    return brief(entry)


def read_tokenizer(parts: _Parts, checkpoint: Checkpoint, allow_code: bool = False):
    """(tokenizer, where it came from), from a local folder or a GGUF's metadata; it must have a chat template."""
    from transformers import AutoTokenizer

    if parts.tokenizer_dir is not None:
        folder = parts.tokenizer_dir
        code = _tokenizer_code(folder)
        if code and not allow_code:
            raise ModelFileError(folder / "tokenizer_config.json", "names a tokenizer that is custom code shipped "
                                 "with the model", found=f"auto_map {code}",
                                 hint="The pack runs no code from model folders unless asked: switch on "
                                      "allow_tokenizer_code to run this folder's tokenizer code (as the "
                                      "official pipeline does), or put a tokenizer.json of the same "
                                      "vocabulary beside the model.")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True,
                                                      trust_remote_code=bool(code and allow_code))
        except (ValueError, OSError, ImportError, KeyError) as e:
            raise ModelFileError(folder, "holds a tokenizer transformers cannot read",
                                 found=_error_text(e)) from None
        source = str(folder)
    elif checkpoint.format == "gguf" and parts.config_dir is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(parts.weights.parent), gguf_file=parts.weights.name,
                                                      local_files_only=True)
        except (ValueError, OSError, KeyError, RuntimeError) as e:
            raise ModelFileError(parts.weights, "has no tokenizer transformers can read from its metadata",
                                 found=_error_text(e),
                                 hint=f"Put the model's tokenizer files in {parts.searched[0]}.") from None
        source = f"the GGUF metadata of {parts.weights.name}"
    else:
        searched = ", ".join(str(p) for p in parts.searched)
        raise ModelFileError(parts.weights, "needs a tokenizer, and none was found",
                             found=f"no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {searched}",
                             expected="the model's tokenizer files beside its config.json")
    if not getattr(tokenizer, "chat_template", None):
        raise ModelFileError(parts.weights, "has a tokenizer without a chat template, so it is not an "
                             "instruction-tuned chat model the enhancer can instruct",
                             found=f"tokenizer from {source} with no chat_template",
                             expected="an instruct/chat model (its tokenizer_config.json or chat_template.jinja "
                                      "holds the chat template)")
    return tokenizer, source


def _generation_defaults(parts: _Parts) -> dict:
    if parts.config_dir is None or not (parts.config_dir / GENERATION_CONFIG_FILE).is_file():
        return {}
    return _read_json(parts.config_dir / GENERATION_CONFIG_FILE)


# --- the network ----------------------------------------------------------------------------------------------
def build_on_meta(config, operations=StandaloneOps) -> torch.nn.Module:
    """transformers' causal LM for `config` on the meta device, its Linear and Embedding layers replaced by
    `operations`' (ModelFileError if transformers has no causal LM for it)."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except (ValueError, KeyError) as e:
        raise ValueError(f"{type(config).__name__} (model_type {getattr(config, 'model_type', None)!r}) is not a "
                         f"causal language model transformers can build ({_error_text(e)})") from None
    replace_layers(model, operations)
    return model.eval().requires_grad_(False)


def replace_layers(model: torch.nn.Module, operations) -> None:
    """Every torch Linear / Embedding becomes `operations.Linear` / `.Embedding` of the same shape (meta)."""
    for name, module in list(model.named_modules()):
        if type(module) is torch.nn.Linear:
            new = operations.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                                    device="meta")
        elif type(module) is torch.nn.Embedding:
            new = operations.Embedding(module.num_embeddings, module.embedding_dim, padding_idx=module.padding_idx,
                                       device="meta")
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def tied_output(model) -> tuple[str, str] | None:
    """(output weight name, input embedding weight name) when the config ties them, else None."""
    text = model.config.get_text_config()
    if not getattr(text, "tie_word_embeddings", getattr(model.config, "tie_word_embeddings", False)):
        return None
    names = {id(m): n for n, m in model.named_modules()}
    output, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    if output is None or embedding is None:
        return None
    return f"{names[id(output)]}.weight", f"{names[id(embedding)]}.weight"


def expected_shapes(model) -> dict[str, tuple[int, ...]]:
    """What the file must hold: the model's tensors, without a tied output weight."""
    shapes = module_shapes(model)
    tied = tied_output(model)
    if tied is not None:
        shapes.pop(tied[0], None)
    return shapes


def gguf_names(checkpoint: Checkpoint, model_names) -> dict[str, str]:
    """{GGUF name: model name} through the gguf package's name table for the file's architecture."""
    import gguf

    architecture = checkpoint.metadata.get("general.architecture")
    if architecture in PERMUTED_QK_ARCHITECTURES:
        raise ModelFileError(checkpoint.path, f"is a llama.cpp GGUF of architecture {brief(architecture)}, whose "
                             "attention weights llama.cpp stores permuted; reading those is not supported yet",
                             expected="a GGUF of Qwen2/Qwen3, HunyuanImage 2.1's reprompt model (hunyuan-dense) "
                                      "or another architecture stored unpermuted, or the model's safetensors")
    arch = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}.get(architecture)
    if arch is None:
        raise ModelFileError(checkpoint.path, f"is a GGUF of an architecture the gguf package does not know "
                             f"({brief(architecture)})")
    blocks = max((int(n.split(".")[1]) + 1 for n in checkpoint.keys() if n.startswith("blk.")), default=0)
    table = gguf.get_tensor_name_map(arch, blocks)
    out = {}
    for name in model_names:
        base, dot, suffix = name.rpartition(".")
        mapped = table.get_name(base)
        if mapped is not None:
            out[f"{mapped}{dot}{suffix}"] = name
    return out


def file_names(checkpoint: Checkpoint, model) -> dict[str, str]:
    """{file key: model name} for every tensor of the file (unknown ones keep their key and are reported)."""
    if checkpoint.format == "gguf":
        mapping = gguf_names(checkpoint, module_shapes(model))
        return {key: mapping.get(key, key) for key in checkpoint.keys()}
    return {key: key for key in checkpoint.keys()}


def read_enhancer(path, allow_tokenizer_code: bool = False) -> EnhancerFile:
    """Open and check a prompt-enhancer model without loading a weight (see the module docstring)."""
    parts = locate_parts(Path(path))
    checkpoint = open_checkpoint(parts.weights)
    config, config_source = read_config(parts, checkpoint)
    try:
        model = build_on_meta(config)
    except ValueError as e:
        raise ModelFileError(parts.weights, "is not a causal language model the enhancer can run",
                             found=str(e), expected="a chat language model (Qwen2/2.5, Qwen3, Llama, Mistral, "
                                                    "Hunyuan dense, ...)") from None
    names = file_names(checkpoint, model)
    shapes = {name: tuple(checkpoint.shape(key)) for key, name in names.items()}
    description = f"{architecture_name(config)} language model"
    check_shapes(checkpoint.path, description, shapes, expected_shapes(model))
    tokenizer, tokenizer_source = read_tokenizer(parts, checkpoint, allow_tokenizer_code)
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ModelFileError(checkpoint.path, "has fewer token embeddings than its tokenizer has tokens",
                             found=f"{rows} embedding rows; the tokenizer from {tokenizer_source} has "
                                   f"{len(tokenizer)} tokens",
                             hint="The tokenizer belongs to another model.")
    return EnhancerFile(Path(path), checkpoint, names, config, tokenizer, config_source, tokenizer_source,
                        _generation_defaults(parts))


def _materialize_buffers(model: torch.nn.Module) -> None:
    """Modules whose non-persistent buffers (rotary inverse frequencies) are still on the meta device are
    built again on the CPU from their config, so the buffers hold their computed values."""
    for name, module in list(model.named_modules()):
        if not any(b.is_meta for b in module.buffers(recurse=False)):
            continue
        config = getattr(module, "config", None)
        if config is None:
            raise RuntimeError(f"{name} ({type(module).__name__}) has buffers that are not in the file and no "
                               "config to compute them from")
        with torch.device("cpu"):
            fresh = type(module)(config)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, fresh)


def _cast_output(dtype: torch.dtype):
    def hook(module, args, output):
        return output.to(dtype) if output.is_floating_point() and output.dtype != dtype else output
    return hook


def build_enhancer(checked: EnhancerFile, operations=None, dtype: torch.dtype = torch.float32,
                   device="cpu") -> LoadedEnhancer:
    """The checked model with its file's tensors assigned: Linear / Embedding weights as stored (FP8 and
    GGUF stay quantized), other floating-point tensors in `dtype` (the compute dtype)."""
    checkpoint = checked.checkpoint
    state_dict = {name: checkpoint.tensor(key) for key, name in checked.names.items()}
    operations = operations or StandaloneOps
    if holds_quantized(state_dict):
        operations = quantized_ops(operations)
    model = build_on_meta(checked.config, operations)
    layer_weights = {f"{n}.{p}" for n, m in model.named_modules()
                     if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)) for p in ("weight", "bias")}
    for name, tensor in state_dict.items():
        if name not in layer_weights and tensor.is_floating_point() and not is_quantized(tensor):
            state_dict[name] = tensor.to(dtype)
    tied = tied_output(model)
    if tied is not None and tied[0] not in state_dict:
        state_dict[tied[0]] = state_dict[tied[1]]
    _materialize_buffers(model)
    assign_state_dict(model, state_dict, checkpoint.path, checked.description, device=device)
    if tied is not None:  # one parameter for both, so moving the model moves (and counts) it once
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    model.to(device)
    model.get_input_embeddings().register_forward_hook(_cast_output(dtype))
    model.eval().requires_grad_(False)
    return LoadedEnhancer(model, checked.tokenizer, checked, dtype)


def load_enhancer(path, operations=None, dtype: torch.dtype = torch.float32, device="cpu",
                  allow_tokenizer_code: bool = False) -> LoadedEnhancer:
    """read_enhancer + build_enhancer."""
    return build_enhancer(read_enhancer(path, allow_tokenizer_code), operations, dtype, device)

