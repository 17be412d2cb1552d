"""MMDiTRefiner: HunyuanImage 2.1's refine stage, as the official pipeline runs it after the base stage.

The finished image (an IMAGE, or the base stage's LATENT decoded with the base VAE) goes through the refiner
VAE (a posterior sample, as both official pipelines encode it), becomes the conditioning latent with the
official noise share, and the refiner network denoises pure noise in 4 Euler steps with embedded guidance,
reading the prompt through its own template. The math is model_defs/hunyuan_image/refiner.py; this node only
moves data between the host and it.

Random numbers come from one CPU generator seeded with the seed, in diffusers' order (posterior sample, start
noise, conditioning noise), so a run matches HunyuanImageRefinerPipeline for the same seed.
"""

from __future__ import annotations

import torch

from ..loaders.finite import check_finite, is_finite
from ..model_defs.hunyuan_image import refiner
from ..model_defs.hunyuan_image.text import encode_refiner
from .common import CATEGORY, log
from .conditioning import check_text_width
from .host import get_host
from .text import TextEncoderHandle, _explain_nonfinite
from .vae import VAE_OVERFLOW_REMEDY, MMDiTVAEDecode, VAEHandle

REFINER_VAE_FAMILY = "hunyuan_image_refiner"
OFFICIAL = refiner.REFINER_SAMPLING


class MMDiTRefiner:
    DESCRIPTION = ("HunyuanImage 2.1's refine stage, as the official pipeline runs it: the finished image through the "
                   f"refiner VAE, {OFFICIAL.steps} steps of the refiner model with embedded guidance, the prompt read "
                   "with the refiner's own template. Give it the base stage's IMAGE, or its LATENT with the base VAE. "
                   "Returns the refined image and its refiner latent.")
    CATEGORY = f"{CATEGORY}/sampling"
    RETURN_TYPES = ("IMAGE", "LATENT")
    RETURN_NAMES = ("image", "refiner_latent")
    FUNCTION = "refine"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The HunyuanImage 2.1 refiner (hunyuanimage-refiner*.safetensors), loaded "
                                           "with MMDiT Load Diffusion Model."}),
            "text_encoder": ("MMDIT_TEXT_ENCODER", {"tooltip": "HunyuanImage 2.1's text encoders (the refiner reads "
                                                               "Qwen2.5-VL only)."}),
            "refiner_vae": ("MMDIT_VAE", {"tooltip": "The refiner's own VAE (16x, 32 channels), not the base VAE."}),
            "prompt": ("STRING", {"multiline": True, "dynamicPrompts": True,
                                  "tooltip": "The base stage's prompt (after prompt enhancement, if any). Longer "
                                             "than 256 tokens is cut, as the official refiner does."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
            "steps": ("INT", {"default": OFFICIAL.steps, "min": 1, "max": 100,
                              "tooltip": f"Official: {OFFICIAL.steps}."}),
            "guidance": ("FLOAT", {"default": OFFICIAL.guidance_scale, "min": 0.0, "max": 30.0, "step": 0.05,
                                   "tooltip": "Embedded guidance (one pass per step). Official: 3.5 after the base "
                                              "model, 3.25 after the distilled one."}),
            "condition_noise": ("FLOAT", {"default": OFFICIAL.condition_strength, "min": 0.0, "max": 1.0,
                                          "step": 0.01,
                                          "tooltip": "Noise share of the image's conditioning latent (official "
                                                     f"{OFFICIAL.condition_strength}). Lower keeps more of the "
                                                     "input; the refiner was trained at the official value."}),
        }, "optional": {
            "image": ("IMAGE", {"tooltip": "The finished image to refine."}),
            "samples": ("LATENT", {"tooltip": "Or the base stage's latent, decoded with `vae` first."}),
            "vae": ("MMDIT_VAE", {"tooltip": "The base stage's VAE, to decode `samples`."}),
        }}

    def refine(self, model, text_encoder: TextEncoderHandle, refiner_vae: VAEHandle, prompt: str, seed: int,
               steps: int = OFFICIAL.steps, guidance: float = OFFICIAL.guidance_scale,
               condition_noise: float = OFFICIAL.condition_strength, image=None, samples=None, vae=None):
        host = get_host()
        spec = host.model_family(model)
        config = host.network_config(model)
        refiner.check_refiner_model(spec.name, refiner.model_variant(config), spec.display_name)
        if text_encoder.family.name != refiner.FAMILY:
            raise ValueError(f"the text encoder is loaded for {text_encoder.family.display_name}; the refiner reads "
                             f"prompts with HunyuanImage 2.1's: set the loader's family to HunyuanImage 2.1")
        if refiner_vae.loaded.family != REFINER_VAE_FAMILY:
            raise ValueError(f"refiner_vae is the {refiner_vae.loaded.description}; the refiner needs its own VAE "
                             f"(hunyuan_image_refiner_vae*.safetensors, 16x, 32 channels)")
        images = _input_images(image, samples, vae)

        generator = refiner.refiner_generator(seed)
        # The posterior sample first (diffusers' order), from the same generator as the noise that follows.
        batch, height, width = images.shape[:3]
        device = refiner_vae.managed.load(
            refiner_vae.module.encode_memory((batch, 3, height, width), refiner_vae.managed.dtype))
        pixels = images.movedim(-1, 1).to(device, refiner_vae.managed.dtype) * 2.0 - 1.0
        with torch.no_grad():
            vae_latent = refiner_vae.module.encode(pixels, generator=generator)
        check_finite(vae_latent, refiner_vae.module, refiner_vae.loaded.path, "VAE", "while encoding",
                     VAE_OVERFLOW_REMEDY)
        packed = refiner.pack_latent(vae_latent.float().cpu())
        start, noise = refiner.refiner_noise(packed.shape, generator)
        condition = refiner.condition_latent(packed, noise, condition_noise)

        text_device, text_dtype = text_encoder.load()
        with torch.no_grad():
            context, extras = encode_refiner(text_encoder.encoders, prompt, text_device, text_dtype)
        if not is_finite(context):
            _explain_nonfinite(context, text_encoder.encoders.values(), f"(refiner prompt, {text_dtype})")
        check_text_width(host, model, spec, prompt=[[context, extras]])

        network, device, dtype = host.loaded_network(model)
        batch = packed.shape[0]
        context = context.to(device, dtype).expand(batch, -1, -1)
        mask = extras.get("attention_mask")
        mask = mask.to(device).expand(batch, -1) if mask is not None else None
        sigmas = refiner.refiner_sigmas(steps, OFFICIAL.shift)
        progress = host.progress(steps, "refining")

        def on_step(index, latents):
            progress.update(1)
            host.throw_if_interrupted()

        log.info("HunyuanImage 2.1 refiner: %d steps, guidance %.2f, conditioning noise %.2f, %dx%d", steps, guidance,
                 condition_noise, images.shape[2], images.shape[1])
        with torch.no_grad():
            refined = refiner.refine(network, condition.to(device, dtype), context, start.to(device, dtype), sigmas,
                                     guidance, attention_mask=mask, on_step=on_step)
        check_finite(refined, network, host.model_path(model) or "the refiner", "diffusion model",
                     f"after {steps} refiner steps ({dtype})", "Run the refiner in bf16 or fp32.")
        latent = refiner.unpack_latent(refined.float().cpu()).to(host.intermediate_device())
        decoded, = MMDiTVAEDecode().decode({"samples": latent}, refiner_vae)
        return decoded, {"samples": latent}


def _input_images(image, samples, vae) -> torch.Tensor:
    """The image to refine as an IMAGE [B, H, W, 3]: given, or the base latent decoded with the base VAE."""
    if image is not None and samples is not None:
        raise ValueError("give the refiner either an image or the base stage's latent (samples), not both")
    if image is None and samples is None:
        raise ValueError("the refiner needs the finished image: connect `image`, or `samples` with the base `vae`")
    if samples is not None:
        if vae is None:
            raise ValueError("to refine a latent the refiner decodes it first: connect the base stage's VAE to `vae`")
        if vae.loaded.family == REFINER_VAE_FAMILY:
            raise ValueError("`vae` must be the base stage's VAE (it decodes `samples`); the refiner's own goes to "
                             "`refiner_vae`")
        image, = MMDiTVAEDecode().decode(samples, vae)
    if image.ndim != 4 or image.shape[-1] < 3:
        raise ValueError(f"expected an RGB IMAGE [batch, height, width, 3], got shape {list(image.shape)}")
    if min(image.shape[1:3]) < refiner.SIZE_MULTIPLE:
        raise ValueError(f"an image of {image.shape[2]}x{image.shape[1]} pixels is smaller than one refiner cell "
                         f"({refiner.SIZE_MULTIPLE} pixels)")
    return image[..., :3].float()
