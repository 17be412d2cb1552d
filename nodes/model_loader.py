"""MMDiTModelLoader: a diffusion model file -> a native MODEL."""

from __future__ import annotations

from ..loaders.check_cache import check_once
from ..loaders.diffusion_model import read_diffusion_model
from ..model_defs.attention import BACKENDS, available_backends
from .common import CATEGORY, files_or_placeholder, log
from .file_inputs import validate_model_file
from .host import get_host

WEIGHT_DTYPE_CHOICES = ["default", "bf16", "fp16", "fp8_e4m3fn", "fp8_e5m2", "fp32"]


class MMDiTModelLoader:
    DESCRIPTION = ("Loads a Qwen-Image or HunyuanImage 2.1 (base or distilled) diffusion model from "
                   "models/diffusion_models (or models/unet): the ComfyUI, diffusers or official layout, in "
                   "bf16/fp16, FP8 (plain, scaled or the official release's) or GGUF, all recognised from the "
                   "file. Quantized weights stay quantized in memory and are expanded one layer at a time as it runs. Returns a native MODEL, so the core KSampler, LoRA loaders "
                   "and ModelSampling nodes work with it.")
    CATEGORY = f"{CATEGORY}/loaders"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    FILE_INPUTS = {"model_name": "diffusion_models"}  # input -> models folder (for workflow checks and the demo)

    @classmethod
    def INPUT_TYPES(cls):
        host = get_host()
        return {"required": {
            "model_name": (files_or_placeholder(host.folder_files("diffusion_models"), "diffusion_models"),
                           {"tooltip": "The diffusion model file (.safetensors, .gguf, or an official .pt with its _map.pt "
                                       "scales). Family, layout, size and quantization are read from the file."}),
            "weight_dtype": (WEIGHT_DTYPE_CHOICES, {
                "default": "default",
                "tooltip": "How weights are kept in memory. default: as ComfyUI decides for your GPU (usually "
                           "as stored). fp8 halves memory of a bf16 file at a small quality cost. GGUF and FP8 "
                           "files keep their own quantization under default; another choice expands them.",
            }),
            "attention": (list(BACKENDS), {
                "default": "auto",
                "tooltip": "Attention kernel. auto: flash-attn when installed and usable, else PyTorch SDPA. "
                           "A choice not available on this machine falls back to auto.",
            }),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, model_name):
        return validate_model_file("diffusion_models", model_name, lambda path: read_diffusion_model(path).description)

    def load(self, model_name, weight_dtype="default", attention="auto"):
        host = get_host()
        if attention not in available_backends():
            log.warning("attention backend %s is not available here; using auto", attention)
            attention = "auto"
        model_file = read_diffusion_model(host.full_path("diffusion_models", model_name))
        note = model_file.memory_note()
        if note:
            log.warning("%s", note)
        return (host.load_diffusion_model(model_file, weight_dtype=weight_dtype, attention_backend=attention),)


def sampling_defaults(model_name: str) -> dict:
    """The official sampling of the model a file holds, for the editor to prefill MMDiT Sampler when a model
    is picked: {"family", "variant", "steps", "cfg", "guidance"}. Read from the file's tensor shapes (no
    weights), remembered per file version. Raises ModelFileError / FileNotFoundError as the loader would."""
    host = get_host()
    if model_name not in host.folder_files("diffusion_models"):  # only what the loader lists, nothing else
        raise FileNotFoundError(f"{model_name!r} is not in the diffusion_models folders")

    def summary(path):
        model_file = read_diffusion_model(path)
        official = model_file.family.sampling_for(model_file.config)
        return {"family": model_file.family.display_name, "variant": model_file.family.variant_of(model_file.config),
                "steps": official.steps, "cfg": official.guidance_scale, "guidance": official.guidance_name}

    return dict(check_once("diffusion_models:sampling", host.full_path("diffusion_models", model_name), summary))
