"""Qwen-Image VAE at full size (random weights): ours vs diffusers' AutoencoderKLQwenImage, fp32 CPU.

Decode of a 32x32 latent (256x256 image) and encode of that image: median times (interleaved) and
their ratio, and the peak extra resident memory of one decode in a fresh process each. Ours runs the
single-frame path as 2-D convolutions over the same causal 3-D weights.

    .venv/bin/python bench/bench_qwen_vae.py
"""

from __future__ import annotations

import torch

from common import MEMORY_ENV, import_pack, interleaved_times, main_or_memory_child, run_child

import_pack()

from comfyui_mmdit.loaders.keymaps.qwen_image_vae import diffusers_to_comfyui  # noqa: E402
from comfyui_mmdit.model_defs.qwen_image.vae import QwenImageVAE  # noqa: E402
from comfyui_mmdit.tools.tiny_models import randomise_vae_  # noqa: E402

LATENT = (1, 16, 1, 32, 32)


def build(which: str):
    from diffusers import AutoencoderKLQwenImage

    reference = AutoencoderKLQwenImage().eval()
    randomise_vae_(reference, seed=0)
    latent = torch.randn(LATENT, generator=torch.Generator().manual_seed(1))
    image = torch.rand(1, 3, 1, 256, 256) * 2 - 1
    if which == "ours":
        names = diffusers_to_comfyui(reference.state_dict())
        ours = QwenImageVAE()
        ours.load_state_dict({names[k]: v for k, v in reference.state_dict().items()})
        del reference
        decode, encode = (lambda: ours.decode(latent)), (lambda: ours.encode(image))
    else:
        decode = lambda: reference.decode(latent).sample  # noqa: E731
        encode = lambda: reference.encode(image).latent_dist.mode()  # noqa: E731
    return torch.no_grad()(decode), torch.no_grad()(encode)


def main() -> None:
    torch.set_num_threads(2)
    ours_decode, ours_encode = build("ours")
    ref_decode, ref_encode = build("diffusers")
    times = interleaved_times({"ours decode": ours_decode, "diffusers decode": ref_decode,
                               "ours encode": ours_encode, "diffusers encode": ref_encode}, repeats=3)
    memory = {which: run_child(__file__, "--memory", which, env=MEMORY_ENV)["peak_extra_mb"]
              for which in ("ours", "diffusers")}
    print(f"full-size Qwen-Image VAE, latent {LATENT} -> 256x256, fp32 CPU, {torch.get_num_threads()} threads")
    for name, seconds in times.items():
        print(f"{name:18s} {seconds * 1000:8.0f} ms")
    print(f"decode time ratio ours/diffusers: {times['ours decode'] / times['diffusers decode']:.2f}")
    print(f"encode time ratio ours/diffusers: {times['ours encode'] / times['diffusers encode']:.2f}")
    print(f"decode peak extra RSS: ours {memory['ours']:.0f} MB, diffusers {memory['diffusers']:.0f} MB, "
          f"ratio {memory['ours'] / memory['diffusers']:.2f}")


def build_decode(which: str):
    return build(which)[0]


if __name__ == "__main__":
    main_or_memory_child(main, build_decode)
