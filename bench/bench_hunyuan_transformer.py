"""HunyuanImage 2.1 transformer forward: ours vs diffusers' HunyuanImageTransformer2DModel, same weights and inputs.

Config: hidden 512 (4 heads x 128), 2 double + 4 single blocks, 2 token-refiner blocks, text width 512, ByT5
width 128, a 48x48 latent (2304 image tokens at patch 1), 128 text + 32 glyph tokens, batch 1, fp32 on the CPU.
The diffusers model is randomised (seeded) and its state dict converted to ours through the production
`diffusers` key layout (loaders/layouts), so both compute with the same weights; the bench prints the max abs
difference of the outputs as a sanity check.

Cases:
* base, masked: a realistic prompt, 48 of 128 text tokens and 12 of 32 glyph tokens real (padding at the end);
* base, unmasked: every token real. diffusers has no mask-free path (its forward takes a mask and always
  passes it to attention, all-true here); ours drops an all-true mask once per forward;
* distilled, masked: as "base, masked" plus embedded guidance and the MeanFlow end time.

Reports the median forward time of each model (interleaved runs) and their ratio, and the peak resident
memory above the level before one forward, measured in a fresh process per model and case.

    .venv/bin/python bench/bench_hunyuan_transformer.py [CASE ...]
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace

import torch

from common import MEMORY_ENV, import_pack, interleaved_times, main_or_memory_child, run_child

import_pack()

from comfyui_mmdit.loaders.layouts import LayoutStateDict, diffusion_model_layout  # noqa: E402
from comfyui_mmdit.loaders.layouts.base import plan_shapes  # noqa: E402
from comfyui_mmdit.model_defs.hunyuan_image.transformer import (  # noqa: E402
    HunyuanImageConfig, HunyuanImageTransformer, config_from_shapes,
)
from comfyui_mmdit.model_defs.ops import StandaloneOps  # noqa: E402

BASE = HunyuanImageConfig(hidden_size=512, num_heads=4, depth_double=2, depth_single=4, refiner_depth=2,
                          context_dim=512, byt5_in_dim=128, axes_dims=(64, 64))
DISTILLED = replace(BASE, guidance_embed=True, meanflow=True)
LATENT = (1, 64, 48, 48)
TEXT_TOKENS, TEXT_REAL = 128, 48
GLYPH_TOKENS, GLYPH_REAL = 32, 12
CASES = {  # name: (config, padded text)
    "base_masked": (BASE, True),
    "base_unmasked": (BASE, False),
    "distilled_masked": (DISTILLED, True),
}


def diffusers_model(config: HunyuanImageConfig, seed: int):
    """diffusers' model at `config`, every parameter randomised (matrices ~ N(0, 1/fan_in), norm scales near 1,
    other vectors ~ 0.1 N(0, 1)) so no layer is the zero or identity it may be initialised to."""
    from diffusers import HunyuanImageTransformer2DModel

    torch.manual_seed(seed)
    model = HunyuanImageTransformer2DModel(
        in_channels=config.in_channels, out_channels=config.out_channels, num_attention_heads=config.num_heads,
        attention_head_dim=config.head_dim, num_layers=config.depth_double, num_single_layers=config.depth_single,
        num_refiner_layers=config.refiner_depth, mlp_ratio=config.mlp_ratio, patch_size=config.patch_size,
        guidance_embeds=config.guidance_embed, text_embed_dim=config.context_dim,
        text_embed_2_dim=config.byt5_in_dim if config.byt5 else None, rope_theta=config.rope_theta,
        rope_axes_dim=config.axes_dims, use_meanflow=config.meanflow,
    ).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(math.prod(p.shape[1:])))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def ours_from_diffusers(reference, config: HunyuanImageConfig) -> HunyuanImageTransformer:
    """Our network with the reference's weights, converted through the production diffusers key layout."""
    state = reference.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    plan = diffusion_model_layout("hunyuan_image", "diffusers").plan(shapes)
    converted = LayoutStateDict(plan, plan_shapes(plan, shapes), state.__getitem__)
    if config_from_shapes(converted.shapes) != config:
        raise RuntimeError(f"the converted weights read as {config_from_shapes(converted.shapes)}, not {config}")
    ours = HunyuanImageTransformer(config, StandaloneOps, device="meta")
    ours.load_state_dict({k: converted[k].clone() for k in converted}, assign=True, strict=True)
    return ours.eval()


def inputs(config: HunyuanImageConfig, padded: bool) -> dict:
    g = torch.Generator().manual_seed(1)
    text_mask = torch.ones(1, TEXT_TOKENS, dtype=torch.long)
    glyph_mask = torch.ones(1, GLYPH_TOKENS, dtype=torch.long)
    if padded:
        text_mask[:, TEXT_REAL:] = 0
        glyph_mask[:, GLYPH_REAL:] = 0
    out = dict(
        x=torch.randn(LATENT, generator=g),
        timestep=torch.tensor([600.0]),
        context=torch.randn(1, TEXT_TOKENS, config.context_dim, generator=g),
        txt_byt5=torch.randn(1, GLYPH_TOKENS, config.byt5_in_dim, generator=g),
        text_mask=text_mask, glyph_mask=glyph_mask, padded=padded,
    )
    if config.guidance_embed:
        out["guidance"] = torch.tensor([3.25])
    if config.meanflow:
        out["timestep_r"] = torch.tensor([450.0])
    return out


def forward_of(which: str, model, config: HunyuanImageConfig, i: dict):
    if which == "ours":
        masks = dict(attention_mask=i["text_mask"], txt_byt5_mask=i["glyph_mask"]) if i["padded"] else {}

        @torch.no_grad()
        def forward():
            return model(i["x"], i["timestep"], i["context"], txt_byt5=i["txt_byt5"], guidance=i.get("guidance"),
                         timestep_r=i.get("timestep_r"), **masks)
    else:
        guidance = i["guidance"] * 1000 if "guidance" in i else None  # the diffusers pipeline scales it

        @torch.no_grad()
        def forward():
            return model(hidden_states=i["x"], timestep=i["timestep"], encoder_hidden_states=i["context"],
                         encoder_attention_mask=i["text_mask"], encoder_hidden_states_2=i["txt_byt5"],
                         encoder_attention_mask_2=i["glyph_mask"], guidance=guidance,
                         timestep_r=i.get("timestep_r"), return_dict=False)[0]
    return forward


def build_pair(case: str) -> dict:
    config, padded = CASES[case]
    reference = diffusers_model(config, seed=0)
    ours = ours_from_diffusers(reference, config)
    i = inputs(config, padded)
    return {"ours": forward_of("ours", ours, config, i), "diffusers": forward_of("diffusers", reference, config, i)}


def build(which_case: str):
    """`ours:CASE` or `diffusers:CASE` -> the forward callable (the memory child builds only what it needs)."""
    which, case = which_case.split(":")
    config, padded = CASES[case]
    reference = diffusers_model(config, seed=0)
    model = ours_from_diffusers(reference, config) if which == "ours" else reference
    del reference
    return forward_of(which, model, config, inputs(config, padded))


def main() -> None:
    torch.set_num_threads(2)
    cases = sys.argv[1:] or list(CASES)
    print(f"latent {LATENT}, text tokens {TEXT_TOKENS} ({TEXT_REAL} real when masked), glyph tokens "
          f"{GLYPH_TOKENS} ({GLYPH_REAL} real when masked), fp32 CPU, {torch.get_num_threads()} threads")
    print(f"base config: {BASE}")
    for case in cases:
        pair = build_pair(case)
        difference = (pair["ours"]() - pair["diffusers"]()).abs().max().item()
        times = interleaved_times(pair, repeats=7)
        memory = {which: run_child(__file__, "--memory", f"{which}:{case}", env=MEMORY_ENV)["peak_extra_mb"]
                  for which in ("ours", "diffusers")}
        print(f"--- {case} (outputs differ by max abs {difference:.2e})")
        for which in ("ours", "diffusers"):
            print(f"{which:10s} forward {times[which] * 1000:8.1f} ms   "
                  f"peak extra RSS during forward {memory[which]:7.1f} MB")
        print(f"time ratio ours/diffusers: {times['ours'] / times['diffusers']:.3f}")
        print(f"peak-memory ratio ours/diffusers: {memory['ours'] / memory['diffusers']:.3f}")


if __name__ == "__main__":
    main_or_memory_child(main, build)
