"""Qwen-Image transformer forward: ours vs diffusers' QwenImageTransformer2DModel, same weights and inputs.

Config: 4 blocks, hidden 512 (4 heads x 128), 1024 image tokens (a 64x64 latent), 128 text tokens, fp32 on
the CPU. Reports the median forward time of each (interleaved runs) and their ratio, and the peak resident
memory of one forward in a fresh process for each.

    .venv/bin/python bench/bench_qwen_transformer.py
"""

from __future__ import annotations

import torch

from common import MEMORY_ENV, import_pack, interleaved_times, main_or_memory_child, run_child

import_pack()

from comfyui_mmdit.model_defs.ops import StandaloneOps  # noqa: E402
from comfyui_mmdit.model_defs.qwen_image.transformer import QwenImageConfig, QwenImageTransformer  # noqa: E402
from comfyui_mmdit.tools.tiny_models import random_state_dict  # noqa: E402

CONFIG = QwenImageConfig(num_layers=4, attention_head_dim=128, num_attention_heads=4, joint_attention_dim=512,
                         axes_dims_rope=(16, 56, 56))
LATENT = (1, 16, 64, 64)
TEXT_TOKENS = 128


def build(which: str):
    from diffusers import QwenImageTransformer2DModel

    ours = QwenImageTransformer(CONFIG, StandaloneOps, device="meta")
    state = random_state_dict(ours, seed=0)
    if which == "ours":
        ours.load_state_dict(state, assign=True)
        model = ours.eval()
    else:
        model = QwenImageTransformer2DModel(
            num_layers=CONFIG.num_layers, attention_head_dim=CONFIG.attention_head_dim,
            num_attention_heads=CONFIG.num_attention_heads, joint_attention_dim=CONFIG.joint_attention_dim,
            axes_dims_rope=CONFIG.axes_dims_rope).eval()
        model.load_state_dict(state)

    g = torch.Generator().manual_seed(1)
    latent = torch.randn(LATENT, generator=g)
    context = torch.randn(1, TEXT_TOKENS, CONFIG.joint_attention_dim, generator=g)
    sigma = torch.tensor([0.6])
    b, c, h, w = LATENT
    packed = latent.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)

    @torch.no_grad()
    def forward():
        if which == "ours":
            return model(latent, sigma, context)
        return model(hidden_states=packed, encoder_hidden_states=context, timestep=sigma,
                     img_shapes=[[(1, h // 2, w // 2)]], return_dict=False)[0]

    return forward


def main() -> None:
    torch.set_num_threads(2)
    times = interleaved_times({"ours": build("ours"), "diffusers": build("diffusers")}, repeats=7)
    memory = {which: run_child(__file__, "--memory", which, env=MEMORY_ENV)["peak_extra_mb"]
              for which in ("ours", "diffusers")}
    print(f"config: {CONFIG}, latent {LATENT}, text tokens {TEXT_TOKENS}, fp32 CPU, {torch.get_num_threads()} threads")
    for which in ("ours", "diffusers"):
        print(f"{which:10s} forward {times[which] * 1000:8.1f} ms   peak extra RSS during forward {memory[which]:7.1f} MB")
    print(f"time ratio ours/diffusers: {times['ours'] / times['diffusers']:.3f}")
    print(f"peak-memory ratio ours/diffusers: {memory['ours'] / memory['diffusers']:.3f}")


if __name__ == "__main__":
    main_or_memory_child(main, build)
