"""MMDiTVAELoader, MMDiTVAEDecode, MMDiTVAEEncode: the family VAEs, tiled where memory demands it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..loaders.finite import check_finite
from ..loaders.vae import LoadedVAE, load_vae, read_vae
from ..model_defs.families import FAMILIES
from .common import CATEGORY, files_or_placeholder, log
from .file_inputs import validate_model_file
from .host import get_host

TILING = ["auto", "on", "off"]
VAE_OVERFLOW_REMEDY = "If it ran in float16 (ComfyUI's --fp16-vae), run the VAE in bf16 or fp32."


@dataclass
class VAEHandle:
    """The MMDIT_VAE value: the loaded VAE and the host's handle that moves it to its device."""

    loaded: LoadedVAE
    managed: object

    @property
    def module(self):
        return self.loaded.module


def _tiling_inputs():
    return {
        "tiling": (TILING, {"default": "auto", "tooltip": "auto: whole image when it fits in free memory, "
                                                         "tiles otherwise (and on out-of-memory)."}),
        "tile_size": ("INT", {"default": 512, "min": 128, "max": 4096, "step": 64,
                              "tooltip": "Tile size in pixels when tiling."}),
        "tile_overlap": ("INT", {"default": 128, "min": 32, "max": 1024, "step": 32,
                                 "tooltip": "Overlap between tiles in pixels, blended to hide seams."}),
    }


def _in_chunks(fn, batch: torch.Tensor, chunk: int) -> torch.Tensor:
    return torch.cat([fn(batch[i:i + chunk]) for i in range(0, batch.shape[0], chunk)])


def _run(handle: VAEHandle, x: torch.Tensor, memory_per_sample: int, whole, tiled, tiling: str):
    """Run `whole` (batch chunks that fit) or `tiled` per the tiling choice; out-of-memory falls back to tiles."""
    host = get_host()
    device = handle.managed.load(memory_required=memory_per_sample)
    x = x.to(device=device, dtype=handle.managed.dtype)
    fits = max(1, int(host.free_memory(device) // max(memory_per_sample, 1)))
    if tiling == "on" or (tiling == "auto" and host.free_memory(device) < memory_per_sample):
        return tiled(x)
    try:
        return _in_chunks(whole, x, fits if tiling == "auto" else x.shape[0])
    except Exception as error:  # out of memory: retry in tiles, as ComfyUI's own VAE does
        if tiling != "auto" or not host.is_out_of_memory(error):
            raise
        log.warning("VAE ran out of memory on the whole image; retrying in tiles")
    return tiled(x)


class MMDiTVAELoader:
    DESCRIPTION = "Loads a family VAE from models/vae (ComfyUI or diffusers layout, recognised from the file)."
    CATEGORY = f"{CATEGORY}/loaders"
    RETURN_TYPES = ("MMDIT_VAE",)
    FUNCTION = "load"
    FILE_INPUTS = {"vae_name": "vae"}

    @classmethod
    def INPUT_TYPES(cls):
        names = files_or_placeholder(get_host().folder_files("vae"), "vae")
        return {"required": {"vae_name": (names, {"tooltip": "e.g. qwen_image_vae.safetensors"})}}

    @classmethod
    def VALIDATE_INPUTS(cls, vae_name):
        return validate_model_file("vae", vae_name, lambda path: read_vae(path).description)

    def load(self, vae_name):
        host = get_host()
        dtype = host.module_dtype("vae")
        # Weights stay as stored; layers cast to the compute dtype at use.
        loaded = load_vae(host.full_path("vae", vae_name), operations=host.operations("vae"))
        return (VAEHandle(loaded, host.manage(loaded.module, "vae", dtype)),)


class MMDiTVAEDecode:
    DESCRIPTION = "Decodes a latent to images with the family VAE; large images are decoded in blended tiles."
    CATEGORY = f"{CATEGORY}/latent"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "vae": ("MMDIT_VAE",), **_tiling_inputs()}}

    def decode(self, samples, vae: VAEHandle, tiling="auto", tile_size=512, tile_overlap=128):
        module = vae.module
        latent = samples["samples"]
        if latent.shape[1] != module.latent_channels:
            raise ValueError(f"this latent has {latent.shape[1]} channels{_families_with(latent.shape[1])}; the "
                             f"{vae.loaded.description} decodes {module.latent_channels}-channel latents: load the "
                             f"VAE of the model family that made the latent")
        host = get_host()
        scale = module.downscale
        one = (1,) + tuple(latent.shape[1:])

        def tiled(x):
            progress = host.progress(1, "decoding tiles")
            out = module.decode_tiled(x, tile=tile_size // scale, overlap=tile_overlap // scale,
                                      output_device=host.intermediate_device(),
                                      progress=lambda done, total: _tick(progress, done, total))
            return out

        images = _run(vae, latent, module.decode_memory(one, vae.managed.dtype), module.decode, tiled, tiling)
        check_finite(images, module, vae.loaded.path, "VAE", f"while decoding ({vae.managed.dtype})",
                     VAE_OVERFLOW_REMEDY)
        images = images.to(host.intermediate_device(), torch.float32)
        return (((images + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1).contiguous(),)


class MMDiTVAEEncode:
    DESCRIPTION = ("Encodes images to a latent with the family VAE (for image-to-image). Sides that are not "
                   "multiples of the VAE's scale (8 or 32 pixels) are centre-cropped, as ComfyUI's VAE Encode does.")
    CATEGORY = f"{CATEGORY}/latent"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"pixels": ("IMAGE",), "vae": ("MMDIT_VAE",), **_tiling_inputs()}}

    def encode(self, pixels, vae: VAEHandle, tiling="auto", tile_size=512, tile_overlap=128):
        module = vae.module
        host = get_host()
        images = pixels[..., :3].movedim(-1, 1) * 2.0 - 1.0  # IMAGE [B, H, W, C] in 0..1 -> [B, 3, H, W]
        scale = module.downscale

        def tiled(x):
            progress = host.progress(1, "encoding tiles")
            return module.encode_tiled(x, tile=tile_size // scale, overlap=tile_overlap // scale,
                                       output_device=host.intermediate_device(),
                                       progress=lambda done, total: _tick(progress, done, total))

        one = (1,) + tuple(images.shape[1:])
        latent = _run(vae, images, module.encode_memory(one, vae.managed.dtype), module.encode, tiled, tiling)
        check_finite(latent, module, vae.loaded.path, "VAE", f"while encoding ({vae.managed.dtype})",
                     VAE_OVERFLOW_REMEDY)
        return ({"samples": latent.to(host.intermediate_device(), torch.float32)},)


def _families_with(channels: int) -> str:
    names = [spec.display_name for spec in FAMILIES.values() if spec.latent_format.channels == channels]
    return f" ({' or '.join(names)} latents)" if names else ""


def _tick(progress, done: int, total: int) -> None:
    progress.total = total
    progress.update(1)
