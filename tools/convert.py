"""Convert a bf16/fp16 checkpoint (any layout the pack reads) into GGUF, scaled FP8, or bf16 in the
network's own names.

    python cli.py convert qwen_image_bf16.safetensors qwen_image-Q4_0.gguf --type Q4_0
    python cli.py convert qwen_image_bf16.safetensors qwen_image_fp8_scaled.safetensors --type fp8_scaled
    python cli.py convert hunyuanimage2.1.safetensors hunyuanimage2.1_bf16.safetensors --type bf16

bf16 quantizes nothing: it writes an official split-q/k/v (or diffusers) file once in the fused layout,
which then loads memory-mapped instead of being fused in memory at every load.

Tensor names in the output are the pack's own (the ComfyUI layout), so ComfyUI's native loaders and
ComfyUI-GGUF read the files too. What stays precise: 1-D tensors, rows too short for GGUF blocks, every
table the network looks up by row rather than multiplies (its Embedding layers' weights: a text encoder's
token table, T5's relative-position table; found from the network itself, so the rule holds for every
family), and the family's choice (model_defs: input embeddings, modulation of the whole model and the
final layer at full precision, per-block modulation at 8 bits at least); everything else in the requested
type. The family is recorded in the file's metadata (GGUF: general.architecture; safetensors:
"mmdit.family"). The source is checked against the network before anything is written.

Empty marker tensors (Qwen-Image-Edit-2511's `__index_timestep_zero__`, also when a diffusers config.json
states it as `"zero_cond_t": true`) are written as they are: zero-element tensors, F32 in GGUF, which the
format holds (gguf-py writes and reads them, ggml accepts dimensions of 0) and ComfyUI-GGUF keeps.

Tensors are read memory-mapped and written one at a time, so converting needs about one tensor's memory,
not the model's.
"""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..loaders.checkpoints import SAFETENSORS_DTYPES, open_checkpoint
from ..loaders.detection import DIFFUSION_MODEL, TEXT_ENCODER, find_component, identify_all
from ..loaders.errors import ModelFileError
from ..loaders.formats.open import MODEL_FILE_SUFFIXES
from ..loaders.layouts import diffusion_model_weights
from ..loaders.quant.fp8 import FP8_DTYPES
from ..loaders.quant.requant import fp8_with_scale
from ..loaders.quant.tensor import is_quantized
from ..model_defs.families import FAMILIES
from .kquants import QK_K, QUANTIZERS as K_QUANTIZERS

WEIGHT_FILE_SUFFIXES = MODEL_FILE_SUFFIXES + (".safetensors.index.json",)

GGUF_TYPES = ("Q8_0", "Q6_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0")
FP8_SCALED = "fp8_scaled"
BF16 = "bf16"  # no quantization: the file rewritten in the network's own names (fused), every float in bf16
TYPES = GGUF_TYPES + (FP8_SCALED, BF16)
GGUF_BLOCK = 32  # the block width of the legacy types; K types need rows of 256 (else they fall to Q8_0)
# general.architecture per family: ComfyUI-GGUF loads only the architectures it lists, and files HunyuanImage
# 2.1 share HunyuanVideo's ("hyvid"); our reader recognises files by their tensors, whatever the tag.
GGUF_ARCHITECTURES = {"hunyuan_image": "hyvid", "byt5": "t5encoder"}


@dataclass
class Plan:
    name: str  # output name (the network's own: the ComfyUI layout)
    shape: tuple[int, ...]
    dtype: torch.dtype  # as stored in the source
    read: Callable[[], torch.Tensor]  # the tensor, made from the source on demand
    storage: str  # "precise", "q8" (8 bits at least) or "target"


def source_tensors(checkpoint, identity) -> dict[str, tuple[tuple[int, ...], torch.dtype, Callable]]:
    """{output name: (shape, stored dtype, read)}. A diffusion model goes through its layout, so an official
    or diffusers file is written in the network's own names (split q/k/v fused, halves swapped); a text
    encoder keeps its names."""
    prefix = identity.prefix
    if identity.component == DIFFUSION_MODEL:
        weights = diffusion_model_weights(checkpoint, identity)

        def stored_dtype(name):  # a marker a diffusers config.json states reads no file tensor: its own dtype
            keys = weights.plan[name].keys()
            return checkpoint.dtype(prefix + keys[0]) if keys else weights[name].dtype

        return {name: (tuple(shape), stored_dtype(name), lambda name=name: weights[name])
                for name, shape in weights.shapes.items()}
    return {key[len(prefix):]: (tuple(checkpoint.shape(key)), checkpoint.dtype(key), lambda key=key: checkpoint.tensor(key))
            for key in checkpoint.keys() if key.startswith(prefix)}


def lookup_tables(checkpoint, identity) -> set[str]:
    """Output names of the tensors the network reads by row (the weights of its Embedding layers), found by
    building the network on the meta device from the file's shapes (checked against it on the way).

    They stay precise whatever the family: a looked-up row reaches the network as it is stored, so its
    quantization error is not averaged over a dot product as a matrix's is, and every token carries it
    (a Q4 token table shifts each input by several percent). The tables are a small share of an encoder
    (ByT5: 2.2M of 219M values; Qwen2.5-VL: 545M of 7.7B, kept precise before this rule by its name)."""
    prefix = identity.prefix
    if identity.component == DIFFUSION_MODEL:
        from ..loaders.diffusion_model import read_diffusion_model
        from ..model_defs.ops import StandaloneOps

        if FAMILIES.get(identity.family) is None:
            return set()
        model_file = read_diffusion_model(checkpoint.path, checkpoint)  # the network check, nothing read
        return _embedding_weights(model_file.family.network_class(model_file.config, StandaloneOps, device="meta"))
    kind = _text_encoder_kind(identity.family)
    if kind is None:
        return set()
    from ..loaders.text_encoder import checked_tensors

    names, config = checked_tensors(checkpoint, identity)
    tables = _embedding_weights(kind.spec.build(config))
    return {key[len(prefix):] for key, name in names.items() if name in tables}


def _embedding_weights(network: torch.nn.Module) -> set[str]:
    return {f"{name}.weight" if name else "weight" for name, module in network.named_modules()
            if isinstance(module, torch.nn.Embedding)}


def _text_encoder_kind(family: str):
    """The text-encoder loader's record for an encoder kind (its file names, network and tokenizer search),
    None for a kind it does not run."""
    from ..loaders.text_encoder import encoder_kind

    return encoder_kind(family)


def plan_tensors(checkpoint, identity, family_spec) -> list[Plan]:
    precise = family_spec.quant.precise_tensors if family_spec else ()
    eight_bit = family_spec.quant.eight_bit_tensors if family_spec else ()
    if family_spec is None and _text_encoder_kind(identity.family) is not None:
        eight_bit = _text_encoder_kind(identity.family).spec.eight_bit_tensors
    tables = lookup_tables(checkpoint, identity)
    plans = []
    for name, (shape, dtype, read) in source_tensors(checkpoint, identity).items():
        if len(shape) < 2 or shape[-1] % GGUF_BLOCK or name in tables or any(p in name for p in precise):
            storage = "precise"
        elif any(p in name for p in eight_bit):
            storage = "q8"
        else:
            storage = "target"
        plans.append(Plan(name, shape, dtype, read, storage))
    return plans


def _source(path):
    checkpoint = open_checkpoint(path)
    parts = [p for p in identify_all(checkpoint) if p.supported and p.component in (DIFFUSION_MODEL, TEXT_ENCODER)]
    if not parts:
        find_component(checkpoint, DIFFUSION_MODEL)  # raises the detailed "what is this file" error
    identity = parts[0]
    quantized = [k for k in checkpoint.keys() if checkpoint.dtype(k) in FP8_DTYPES or is_quantized(checkpoint.tensor(k))]
    if quantized:
        raise ModelFileError(checkpoint.path, "is already quantized; convert from the bf16/fp16 file",
                             found=f"{len(quantized)} quantized tensors")
    return checkpoint, identity, FAMILIES.get(identity.family)


def convert(source, target, qtype: str, progress=None) -> Path:
    if qtype not in TYPES:
        raise ValueError(f"unknown target type {qtype!r}; choose one of {', '.join(TYPES)}")
    suffix = ".safetensors" if qtype in (FP8_SCALED, BF16) else ".gguf"
    if Path(target).suffix.lower() != suffix:
        raise ValueError(f"{qtype} is written as a {suffix} file; the output name {Path(target).name!r} "
                         f"ends in {Path(target).suffix or 'no extension'}")
    checkpoint, identity, family_spec = _source(source)
    plans = plan_tensors(checkpoint, identity, family_spec)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"mmdit.family": identity.family, "mmdit.component": identity.component,
                "mmdit.quantization": qtype, "mmdit.converted_from": Path(source).name}
    if qtype == FP8_SCALED:
        _write_fp8(checkpoint, plans, target, metadata, progress)
    elif qtype == BF16:
        _write_bf16(plans, target, metadata, progress)
    else:
        _write_gguf(checkpoint, plans, target, qtype, identity.family, metadata, progress)
    return target


def source_component(source) -> str:
    """What a convertible source holds: DIFFUSION_MODEL or TEXT_ENCODER."""
    return _source(source)[1].component


def copy_tokenizer(source, target) -> Path | None:
    """Copy the tokenizer beside a text-encoder source to `<target stem>_tokenizer/` beside the target, where
    the loader looks first; returns the copy, or None when the source has none beside it. The tokenizer is
    found as the loader finds it for the source's kind (a ByT5 file's is the one naming ByT5Tokenizer: in a
    diffusers repo, tokenizer_2/, not the Qwen2.5 tokenizer/ beside it)."""
    from ..loaders.tokenizers import holds_tokenizer, places_beside
    from ..loaders.tokenizers import BUILTIN_BYT5

    checkpoint, identity, _ = _source(source)
    kind = _text_encoder_kind(identity.family)
    if kind is None:
        found = next((p.folder for p in places_beside(Path(source)) if holds_tokenizer(p.folder)), None)
    else:
        from ..loaders.text_encoder import checked_tensors

        _, config = checked_tensors(checkpoint, identity)
        try:
            _, place = kind.tokenizer(Path(source), None, [], config)
        except ModelFileError:  # none beside the source
            place = None
        found = None if place is None or place == BUILTIN_BYT5 else place.folder
    if found is None:
        return None
    copy = Path(target).parent / f"{Path(target).stem}_tokenizer"
    copy.mkdir(parents=True, exist_ok=True)
    for file in found.iterdir():
        if file.is_file() and not file.name.lower().endswith(WEIGHT_FILE_SUFFIXES):  # a model folder holds weights too
            shutil.copy2(file, copy / file.name)
    return copy



# --- GGUF ------------------------------------------------------------------------------------------------
def _write_gguf(checkpoint, plans, target, qtype, family, metadata, progress):
    import gguf

    types = gguf.GGMLQuantizationType
    writer = gguf.GGUFWriter(str(target), arch=GGUF_ARCHITECTURES.get(family, family), use_temp_file=True)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value in metadata.items():
        writer.add_string(key, value)
    for i, plan in enumerate(plans):
        data = plan.read().float().numpy()
        if plan.storage == "precise":
            if data.ndim < 2:
                writer.add_tensor(plan.name, data.astype(np.float32))
            else:
                writer.add_tensor(plan.name, gguf.quants.quantize(data, types.BF16),
                                  raw_dtype=types.BF16)
        else:
            chosen = types.Q8_0 if plan.storage == "q8" else types[qtype]
            if chosen.name in K_QUANTIZERS and data.shape[-1] % QK_K:
                chosen = types.Q8_0  # rows too short for 256-value super-blocks: keep 8 bits
            quantize = K_QUANTIZERS.get(chosen.name) or (lambda a, t=chosen: gguf.quants.quantize(a, t))
            writer.add_tensor(plan.name, quantize(data), raw_dtype=chosen)
        if progress:
            progress(i + 1, len(plans))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# --- scaled FP8 (ComfyUI's "scaled_fp8" layout: one scalar scale_weight per layer) ---------------------
def _write_fp8(checkpoint, plans, target, metadata, progress):
    last = {}  # the weight and its scale are written one after the other: quantize once

    def parts(plan):
        if last.get("name") != plan.name:
            last.update(name=plan.name, parts=fp8_with_scale(plan.read()))
        return last["parts"]

    entries = [("scaled_fp8", torch.float8_e4m3fn, (0,), lambda: torch.empty(0, dtype=torch.float8_e4m3fn))]
    for plan in plans:
        if plan.storage == "precise":
            entries.append((plan.name, plan.dtype, plan.shape, plan.read))
            continue
        layer = plan.name[: -len(".weight")] if plan.name.endswith(".weight") else plan.name
        entries.append((plan.name, torch.float8_e4m3fn, plan.shape, lambda plan=plan: parts(plan)[0]))
        entries.append((layer + ".scale_weight", torch.float32, (), lambda plan=plan: parts(plan)[1]))
    write_safetensors_streaming(target, entries, metadata, progress)


# --- bf16 (a re-layout: an official split-q/k/v file written fused, so it loads memory-mapped) -----------
def _write_bf16(plans, target, metadata, progress):
    def stored(plan):
        return torch.bfloat16 if plan.dtype.is_floating_point else plan.dtype

    entries = [(plan.name, stored(plan), plan.shape, plan.read) for plan in plans]
    write_safetensors_streaming(target, entries, metadata, progress)


SAFETENSORS_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}


def write_safetensors_streaming(path, entries, metadata=None, progress=None) -> None:
    """Write a safetensors file tensor by tensor: entries are (name, dtype, shape, make_tensor)."""
    header, offset = {}, 0
    for name, dtype, shape, _ in entries:
        size = int(np.prod(shape, dtype=np.int64)) * torch.empty(0, dtype=dtype).element_size()
        header[name] = {"dtype": SAFETENSORS_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for i, (name, dtype, shape, make) in enumerate(entries):
            tensor = make().to(dtype).contiguous().reshape(-1)
            f.write(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
            if progress:
                progress(i + 1, len(entries))
