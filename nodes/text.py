"""MMDiTTextEncoderLoader and MMDiTTextEncode: prompts -> native CONDITIONING."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..loaders.finite import check_finite
from ..loaders.text_encoder import LoadedTextEncoder, build_text_encoder, read_text_encoder
from ..model_defs.families import FAMILIES
from ..model_defs.text_encoders.qwen25vl import encode_prompts
from .common import CATEGORY, files_or_placeholder, log
from .file_inputs import validate_model_file
from .host import get_host

TOKENIZER = "qwen25"  # the tokenizer the hosts know by name (ComfyUI ships it as qwen25_tokenizer/)


@dataclass
class TextEncoderHandle:
    """The MMDIT_TEXT_ENCODER value: encoder + tokenizer, the family whose template it applies, and the
    host's handle that moves it to its device."""

    loaded: LoadedTextEncoder
    family: object  # FamilySpec
    managed: object


def _family_named(display_name: str):
    for spec in FAMILIES.values():
        if spec.display_name == display_name:
            return spec
    raise ValueError(f"unknown family {display_name!r}")


class MMDiTTextEncoderLoader:
    DESCRIPTION = ("Loads the text encoder a family needs from models/text_encoders: a single file "
                   "(e.g. qwen_2.5_vl_7b.safetensors) or a Hugging Face / diffusers folder. The family sets "
                   "the prompt template and the hidden state used.")
    CATEGORY = f"{CATEGORY}/loaders"
    RETURN_TYPES = ("MMDIT_TEXT_ENCODER",)
    FUNCTION = "load"
    FILE_INPUTS = {"text_encoder_name": "text_encoders"}

    @classmethod
    def INPUT_TYPES(cls):
        names = files_or_placeholder(get_host().folder_files("text_encoders"), "text_encoders")
        families = [spec.display_name for spec in FAMILIES.values()]
        return {"required": {
            "text_encoder_name": (names, {"tooltip": "Qwen-Image: Qwen2.5-VL-7B (qwen_2.5_vl_7b*.safetensors, FP8 "
                                                  "safetensors or a GGUF such as Qwen2.5-VL-7B-Instruct-Q8_0.gguf)."}),
            "family": (families, {"default": families[0],
                                  "tooltip": "The model family the prompts are for (template and layer)."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, text_encoder_name):
        return validate_model_file("text_encoders", text_encoder_name, lambda path: _read(path).description)

    def load(self, text_encoder_name, family):
        host = get_host()
        spec = _family_named(family)
        checked = _read(host.full_path("text_encoders", text_encoder_name))
        place = checked.tokenizer_source
        log.info("%s: tokenizer from %s (%s)", text_encoder_name, place.folder.absolute(), place.origin)
        dtype = host.module_dtype("text_encoder")
        # Weights stay as stored (no full-precision copy); layers cast to the compute dtype at use.
        loaded = build_text_encoder(checked, operations=host.operations("text_encoder"))
        return (TextEncoderHandle(loaded, spec, host.manage(loaded.model, "text_encoder", dtype)),)


def _read(path):
    return read_text_encoder(path, tokenizer_search=get_host().tokenizer_places(TOKENIZER))


class MMDiTTextEncode:
    DESCRIPTION = ("Encodes a prompt with the family's chat template. Prompts longer than the family's limit "
                   "(Qwen-Image: 1024 tokens) are refused rather than silently cut.")
    CATEGORY = f"{CATEGORY}/conditioning"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder": ("MMDIT_TEXT_ENCODER",),
            "text": ("STRING", {"multiline": True, "dynamicPrompts": True,
                                "tooltip": "The prompt. For a negative prompt, a single space is a good default."}),
        }}

    def encode(self, text_encoder: TextEncoderHandle, text: str):
        host = get_host()
        spec = text_encoder.family
        device = text_encoder.managed.load()
        loaded = text_encoder.loaded
        with torch.no_grad():
            embeds, mask = encode_prompts(loaded.model, loaded.tokenizer, [text], spec.prompt_template,
                                          max_tokens=spec.max_prompt_tokens, device=device,
                                          dtype=text_encoder.managed.dtype)
        check_finite(embeds, loaded.model, loaded.path, "text encoder", f"({text_encoder.managed.dtype})",
                     "If it ran in float16, run the text encoder in bf16 or fp32.")
        extras = {}
        if not bool(mask.all()):
            extras["attention_mask"] = mask.to(host.intermediate_device())
        return ([[embeds.to(host.intermediate_device(), torch.float32), extras]],)
