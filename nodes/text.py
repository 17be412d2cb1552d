"""MMDiTTextEncoderLoader and MMDiTTextEncode: prompts -> native CONDITIONING, with every text encoder
the family's prompts go through (Qwen-Image: Qwen2.5-VL; HunyuanImage 2.1: Qwen2.5-VL and the ByT5
glyph encoder)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..loaders.finite import check_finite, is_finite, nonfinite_tensors
from ..loaders.text_encoder import (
    LoadedTextEncoder, build_text_encoder, build_vision_tower, locate_vision_tower, read_text_encoder,
    read_vision_tower,
)
from ..model_defs.families import FAMILIES, family_by_display_name
from .common import CATEGORY, NO_FILE, files_or_placeholder, log
from .conditioning import FAMILY_KEY
from .file_inputs import validate_model_file
from .host import get_host


@dataclass
class TextEncoderHandle:
    """The MMDIT_TEXT_ENCODER value: the family, its encoders by kind ({"qwen25_vl": ..., "byt5": ...}),
    and the host's handles that move each to its device."""

    family: object  # FamilySpec
    encoders: dict  # kind -> LoadedTextEncoder
    managed: dict  # kind -> host handle
    vision: dict = field(default_factory=dict)  # kind -> (LoadedVisionTower, host handle), loaded when first asked

    def load(self) -> tuple[torch.device, torch.dtype]:
        """Every encoder on its device; returns the device and compute dtype (the first encoder's)."""
        placed = [handle.load() for handle in self.managed.values()]
        return placed[0], next(iter(self.managed.values())).dtype

    def vision_tower(self, kind: str):
        """The vision tower belonging to the `kind` encoder (Qwen2.5-VL's, for reading reference images), on
        its device. Loaded from the encoder's file, or the file beside it that holds it (a llama.cpp mmproj
        next to a GGUF), the first time it is needed: text-to-image never pays for it."""
        if kind not in self.vision:
            host = get_host()
            path = locate_vision_tower(self.encoders[kind].path, folders=host.model_folders("text_encoders"))
            loaded = build_vision_tower(read_vision_tower(path), operations=host.operations("text_encoder"))
            log.info("vision tower: %s from %s", loaded.description, path)
            self.vision[kind] = (loaded, host.manage(loaded.model, "text_encoder", host.module_dtype("text_encoder")))
        loaded, managed = self.vision[kind]
        managed.load()
        return loaded.model


def _encoder_list() -> str:
    return "; ".join(f"{spec.display_name}: " + " + ".join(slot.label for slot in spec.text.encoders)
                     for spec in FAMILIES.values())


def check_encoders_fit(spec, found: dict[str, str]) -> None:
    """found: {kind: file name}. Every encoder the family needs is there and none it does not use."""
    wanted = {slot.kind: slot for slot in spec.text.encoders}
    foreign = [f"{name} ({kind})" for kind, name in found.items() if kind not in wanted]
    if foreign:
        raise ValueError(
            f"{', '.join(foreign)} is not a text encoder {spec.display_name} uses; it takes "
            f"{' + '.join(slot.label for slot in spec.text.encoders)}. Pick the family the encoder belongs to, "
            f"or load the right encoder.")
    missing = [slot.label for slot in spec.text.encoders if slot.required and slot.kind not in found]
    if missing:
        raise ValueError(f"{spec.display_name} also needs {' and '.join(missing)}: choose it as "
                         f"{'text_encoder_2_name' if found else 'text_encoder_name'}.")


class MMDiTTextEncoderLoader:
    DESCRIPTION = ("Loads the text encoders a family needs from models/text_encoders: single files (e.g. "
                   "qwen_2.5_vl_7b.safetensors, byt5_small_glyphxl_fp16.safetensors) or Hugging Face / diffusers "
                   "folders, bf16, FP8 or GGUF. Which encoder a file holds is read from it. " + _encoder_list() + ".")
    CATEGORY = f"{CATEGORY}/loaders"
    RETURN_TYPES = ("MMDIT_TEXT_ENCODER",)
    FUNCTION = "load"
    FILE_INPUTS = {"text_encoder_name": "text_encoders", "text_encoder_2_name": "text_encoders"}

    @classmethod
    def INPUT_TYPES(cls):
        names = files_or_placeholder(get_host().folder_files("text_encoders"), "text_encoders")
        families = [spec.display_name for spec in FAMILIES.values()]
        return {"required": {
            "text_encoder_name": (names, {"tooltip": "The family's main text encoder: Qwen2.5-VL-7B for Qwen-Image "
                                                     "and HunyuanImage 2.1 (qwen_2.5_vl_7b*.safetensors, FP8, or a "
                                                     "GGUF such as Qwen2.5-VL-7B-Instruct-Q8_0.gguf)."}),
            "family": (families, {"default": families[0],
                                  "tooltip": "The model family the prompts are for (template, layer, encoders)."}),
        }, "optional": {
            "text_encoder_2_name": ([NO_FILE] + names, {
                "default": NO_FILE,
                "tooltip": "The family's second encoder: for HunyuanImage 2.1 the ByT5 glyph encoder "
                           "(byt5_small_glyphxl_fp16.safetensors), which renders the text in quotes. "
                           "none for Qwen-Image."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, text_encoder_name, text_encoder_2_name=NO_FILE):
        first = validate_model_file("text_encoders", text_encoder_name, lambda path: _read(path).description)
        if first is not True or text_encoder_2_name in (NO_FILE, None):
            return first
        return validate_model_file("text_encoders", text_encoder_2_name, lambda path: _read(path).description)

    def load(self, text_encoder_name, family, text_encoder_2_name=NO_FILE):
        host = get_host()
        spec = family_by_display_name(family)
        names = [n for n in (text_encoder_name, text_encoder_2_name) if n not in (NO_FILE, None, "")]
        checked = {}
        for name in names:
            file = _read(host.full_path("text_encoders", name))
            if file.encoder_kind in checked:
                raise ValueError(f"{names[0]} and {name} are both {file.description}s; {spec.display_name} takes "
                                 f"{' + '.join(slot.label for slot in spec.text.encoders)}")
            checked[file.encoder_kind] = (name, file)
        check_encoders_fit(spec, {kind: name for kind, (name, _) in checked.items()})

        encoders, managed = {}, {}
        dtype = host.module_dtype("text_encoder")
        for kind, (name, file) in checked.items():
            place = file.tokenizer_source
            log.info("%s: tokenizer from %s (%s)", name, place.folder.absolute(), place.origin)
            # Weights stay as stored (no full-precision copy); layers cast to the compute dtype at use.
            loaded: LoadedTextEncoder = build_text_encoder(file, operations=host.operations("text_encoder"))
            encoders[kind] = loaded
            managed[kind] = host.manage(loaded.model, "text_encoder", dtype)
        return (TextEncoderHandle(spec, encoders, managed),)


def _to_host(value, device):
    """A conditioning tensor on the host's intermediate device, floats in float32 (masks keep their type)."""
    if not isinstance(value, torch.Tensor):
        return value
    return value.to(device, torch.float32) if value.is_floating_point() else value.to(device)


def _explain_nonfinite(value, encoders, where: str) -> None:
    """Raise for a NaN/Inf text output: naming the encoder whose weights hold NaN/Inf if one does (a
    damaged file), else the overflow."""
    encoders = list(encoders)
    culprit = next((e for e in encoders if nonfinite_tensors(e.model)), encoders[0])
    check_finite(value, culprit.model, culprit.path, "text encoder", where,
                 "If it ran in float16, run the text encoder in bf16 or fp32.")


def _read(path):
    return read_text_encoder(path, tokenizer_places=get_host().tokenizer_places)


class MMDiTTextEncode:
    DESCRIPTION = ("Encodes a prompt with the family's template and encoders (HunyuanImage 2.1: text in quotes "
                   "also goes to the ByT5 glyph encoder, to be drawn in the image). Prompts longer than the "
                   "family's limit are refused rather than silently cut.")
    CATEGORY = f"{CATEGORY}/conditioning"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder": ("MMDIT_TEXT_ENCODER",),
            "text": ("STRING", {"multiline": True, "dynamicPrompts": True,
                                "tooltip": "The prompt. Text to draw goes in quotes (\"OPEN\", 'OPEN', “OPEN”). "
                                           "For a negative prompt, a single space is a good default."}),
        }}

    def encode(self, text_encoder: TextEncoderHandle, text: str):
        host = get_host()
        spec = text_encoder.family
        device, dtype = text_encoder.load()
        with torch.no_grad():
            context, extras = spec.text.encode(text_encoder.encoders, text, device, dtype)
        for name, value in {"context": context, **extras}.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not is_finite(value):
                _explain_nonfinite(value, text_encoder.encoders.values(), f"({name}, {dtype})")
        out = host.intermediate_device()
        extras = {name: _to_host(value, out) for name, value in extras.items()}
        extras[FAMILY_KEY] = spec.name
        return ([[_to_host(context, out), extras]],)
