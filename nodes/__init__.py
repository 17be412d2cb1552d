"""The pack's ComfyUI nodes. Only this package talks to ComfyUI, through nodes/host.

Class names are stable: shared workflow files refer to them.
"""

from .latent import MMDiTEmptyLatent
from .model_loader import MMDiTModelLoader
from .prompt_enhancer import MMDiTPromptEnhancer
from .reference import MMDiTReferenceImages
from .refiner import MMDiTRefiner
from .sampler import MMDiTSampler
from .text import MMDiTTextEncode, MMDiTTextEncoderLoader
from .vae import MMDiTVAEDecode, MMDiTVAEEncode, MMDiTVAELoader
from .host import running_in_comfyui

if running_in_comfyui():
    from .host.routes import register_routes

    register_routes()

NODE_CLASS_MAPPINGS = {
    "MMDiTModelLoader": MMDiTModelLoader,
    "MMDiTTextEncoderLoader": MMDiTTextEncoderLoader,
    "MMDiTTextEncode": MMDiTTextEncode,
    "MMDiTPromptEnhancer": MMDiTPromptEnhancer,
    "MMDiTReferenceImages": MMDiTReferenceImages,
    "MMDiTEmptyLatent": MMDiTEmptyLatent,
    "MMDiTSampler": MMDiTSampler,
    "MMDiTRefiner": MMDiTRefiner,
    "MMDiTVAELoader": MMDiTVAELoader,
    "MMDiTVAEDecode": MMDiTVAEDecode,
    "MMDiTVAEEncode": MMDiTVAEEncode,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "MMDiTModelLoader": "MMDiT Load Diffusion Model",
    "MMDiTTextEncoderLoader": "MMDiT Load Text Encoder",
    "MMDiTTextEncode": "MMDiT Text Encode",
    "MMDiTPromptEnhancer": "MMDiT Prompt Enhancer",
    "MMDiTReferenceImages": "MMDiT Reference Images",
    "MMDiTEmptyLatent": "MMDiT Empty Latent",
    "MMDiTSampler": "MMDiT Sampler",
    "MMDiTRefiner": "MMDiT Refiner",
    "MMDiTVAELoader": "MMDiT Load VAE",
    "MMDiTVAEDecode": "MMDiT VAE Decode",
    "MMDiTVAEEncode": "MMDiT VAE Encode",
}
