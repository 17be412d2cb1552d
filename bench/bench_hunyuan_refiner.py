"""HunyuanImage 2.1 refine stage: ours vs diffusers, same random weights, at 3 sizes (one non-square).

Four parts, each timed and measured on both sides:
* refine: the stage's loop in the network's latent space, the official 4 steps. Ours: refiner_noise,
  condition_latent and refine() (model_defs/hunyuan_image/refiner.py) on our HunyuanImageTransformer at the
  refiner variant; diffusers: HunyuanImageRefinerPipeline given the packed conditioning latent and the
  prompt embeddings (so it runs prepare_latents and its denoising loop only: no text encoder, no VAE),
  output_type="latent", on HunyuanImageTransformer2DModel at the refiner config (in 128, out 64, patch
  (1, 1, 1), embedded guidance, no MeanFlow time_r_in: the official pipeline never uses it). The text is
  what each side's text encode gives for one prompt of TEXT_TOKENS tokens: ours exactly those tokens with
  no mask (text.encode_refiner stops at the longest row), diffusers the same tokens padded to its fixed 256
  with a mask (its encode_prompt). Per-step time = loop time / 4. The printed difference of the refined
  latents checks that both sides computed the same thing (same seed, same noise draws).
* refine_same_text: the same, diffusers given the same TEXT_TOKENS tokens (an all-ones mask), so the
  ratio is of the implementations alone; "refine" adds diffusers' padding (176 padded tokens, 14-21% of
  its joint sequence at the CPU sizes, 1-4% at the CUDA ones).
* encode / decode: the refiner VAE, ours (model_defs/hunyuan_image/refiner_vae.py: HunyuanImageRefinerVAE,
  2-D convs with the three temporal taps summed) vs diffusers' AutoencoderKLHunyuanImageRefiner (3-D causal
  convs over the replicated frame), the posterior mean of an image in [-1, 1] and the decode of a latent,
  whole (no tiling on either side). Weights: diffusers' randomised (tools/tiny_models.randomise_refiner_vae_)
  and renamed into ours through the production key map (loaders/keymaps/hunyuan_image_refiner_vae.py).

CPU (the default): the DiT at hidden 512 (4 heads x 128, the published head width and RoPE split (16, 56,
56)), 2 double + 4 single blocks, 2 token-refiner blocks, text width 512; the VAE with the released
structure (five stages, 16x, two temporal samplers a side, 2 residual blocks) at a quarter of its widths
(32, 64, 128, 256, 256); images of 384 x 384, 512 x 512 and 384 x 640 px (latents 24 x 24, 32 x 32,
24 x 40: 576, 1024 and 960 image tokens); batch 1, fp32, 2 threads, OMP_WAIT_POLICY=PASSIVE. Time: ours and
diffusers run back to back (alternating order), and the ratio ours/diffusers is the median of those paired
ratios of process CPU time (common.paired_times; a shared machine's other jobs change it less than wall
time), next to the ratio of the fastest CPU times (interference only adds time) and the wall-time ratio.
Memory: the peak resident memory above the level before one call, in a fresh process per part, size and
side (common.run_child with MEMORY_ENV), weights not counted.

CUDA (--device cuda): the published widths (DiT hidden 3328, 26 heads x 128, text width 3584; VAE (128,
256, 512, 1024, 1024)), fewer DiT blocks (--layers N: N double + 2N single, default 2; every block of a kind
costs the same, so the ratio holds for the published 20 + 40), bf16, the refiner's own sizes: 1024 x 1024,
2048 x 2048 and 2560 x 1536 px (up to 16384 image tokens); weights drawn on the GPU; time: wall time between
CUDA syncs, paired as on the CPU; memory: torch.cuda.max_memory_allocated above the allocated level before
one call, in the same process. The CPU path never touches CUDA.

max |d| is the largest difference of the two sides' outputs (fp32 CPU: about 1e-6). In bf16 (CUDA) it is
mostly diffusers' own rounding: its refiner pipeline forms the embedded guidance in the model's dtype
(3.5 * 1000 = 3504 in bf16), ours in float32 (3500). Measured on the CPU at hidden 256, one bf16 forward
against diffusers' fp32 one: diffusers 0.34 rms (outputs of rms 1.1), ours 0.13, and diffusers given 3500
also 0.13.

Prints a table and, last, one JSON line with every figure. Never asserts on time.

    .venv/bin/python bench/bench_hunyuan_refiner.py [PART ...] [--repeats N]   # CPU, 9 minutes on 2 idle cores
    .venv/bin/python bench/bench_hunyuan_refiner.py --device cuda [--layers 2] [PART ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import asdict, dataclass, replace

import torch

from common import MEMORY_ENV, cuda_peak_extra_mb, import_pack, main_or_memory_child, paired_times, run_child

import_pack()

from comfyui_mmdit.loaders.keymaps.hunyuan_image_refiner_vae import diffusers_to_comfyui  # noqa: E402
from comfyui_mmdit.loaders.layouts import LayoutStateDict, diffusion_model_layout  # noqa: E402
from comfyui_mmdit.loaders.layouts.base import plan_shapes  # noqa: E402
from comfyui_mmdit.model_defs.hunyuan_image import refiner  # noqa: E402
from comfyui_mmdit.model_defs.hunyuan_image.refiner_vae import (  # noqa: E402
    HunyuanImageRefinerVAE, refiner_vae_config_from_shapes,
)
from comfyui_mmdit.model_defs.hunyuan_image.transformer import (  # noqa: E402
    HunyuanImageConfig, HunyuanImageTransformer, config_from_shapes,
)
from comfyui_mmdit.model_defs.ops import StandaloneOps  # noqa: E402
from comfyui_mmdit.tools.tiny_models import randomise_refiner_vae_  # noqa: E402

PARTS = ("refine", "refine_same_text", "encode", "decode")
REFINE_PARTS = ("refine", "refine_same_text")
SIDES = ("ours", "diffusers")
TEXT_TOKENS = 80  # a prompt of about 80 tokens after the refiner template's 36-token drop
DIFFUSERS_TEXT_TOKENS = 256  # diffusers' refiner pads every prompt to this (tokenizer_max_length)
SEED = 42

# The published refiner: hidden 3328 (26 heads x 128), 20 double + 40 single blocks, text width 3584.
PUBLISHED_DIT = HunyuanImageConfig(hidden_size=3328, num_heads=26, depth_double=20, depth_single=40,
                                   in_channels=128, out_channels=64, patch_size=(1, 1, 1), axes_dims=(16, 56, 56),
                                   context_dim=3584, byt5=False, guidance_embed=True, meanflow=False)
PUBLISHED_VAE_WIDTHS = (128, 256, 512, 1024, 1024)


@dataclass(frozen=True)
class Setting:
    device: str
    dtype: torch.dtype
    dit: HunyuanImageConfig
    vae_widths: tuple[int, ...]
    sizes: dict  # name: (height, width) in pixels


def cpu_setting() -> Setting:
    dit = replace(PUBLISHED_DIT, hidden_size=512, num_heads=4, depth_double=2, depth_single=4, context_dim=512)
    return Setting("cpu", torch.float32, dit, (32, 64, 128, 256, 256),
                   {"384x384": (384, 384), "512x512": (512, 512), "384x640": (384, 640)})


def cuda_setting(layers: int = 2) -> Setting:
    return Setting("cuda", torch.bfloat16, replace(PUBLISHED_DIT, depth_double=layers, depth_single=2 * layers),
                   PUBLISHED_VAE_WIDTHS,
                   {"1024x1024": (1024, 1024), "2048x2048": (2048, 2048), "1536x2560": (1536, 2560)})


def _randomise_(module: torch.nn.Module, seed: int) -> None:
    """Matrices ~ N(0, 1/fan_in), norm scales near 1, other vectors ~ 0.1 N(0, 1) (no layer the zero or
    identity it may be initialised to), drawn on the parameters' device."""
    device = next(module.parameters()).device
    g = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, device=device, dtype=torch.float32)
            if p.ndim >= 2:
                p.copy_(noise / math.sqrt(math.prod(p.shape[1:])))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)


# --- the DiT -----------------------------------------------------------------------------------------------
def diffusers_dit(setting: Setting):
    from diffusers import HunyuanImageTransformer2DModel

    config = setting.dit
    with torch.device(setting.device):
        model = HunyuanImageTransformer2DModel(
            in_channels=config.in_channels, out_channels=config.out_channels, num_attention_heads=config.num_heads,
            attention_head_dim=config.head_dim, num_layers=config.depth_double,
            num_single_layers=config.depth_single, num_refiner_layers=config.refiner_depth,
            mlp_ratio=config.mlp_ratio, patch_size=config.patch_size, guidance_embeds=True,
            text_embed_dim=config.context_dim, text_embed_2_dim=None, rope_theta=config.rope_theta,
            rope_axes_dim=config.axes_dims, use_meanflow=False)
    _randomise_(model, seed=0)
    return model.to(setting.dtype).eval()


def ours_dit(reference, setting: Setting) -> HunyuanImageTransformer:
    """Our network with the reference's weights, converted through the production diffusers key layout
    (which reads the refiner from the file: 3-D patch, 128 channels in)."""
    state = reference.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    plan = diffusion_model_layout("hunyuan_image", "diffusers").plan(shapes)
    converted = LayoutStateDict(plan, plan_shapes(plan, shapes), state.__getitem__)
    config = config_from_shapes(converted.shapes)
    if config != setting.dit or config.variant != "refiner":
        raise RuntimeError(f"the converted weights read as {config}, not the refiner {setting.dit}")
    ours = HunyuanImageTransformer(config, StandaloneOps, device="meta")
    ours.load_state_dict({k: converted[k].clone() for k in converted}, assign=True, strict=True)
    return ours.eval()


def refine_inputs(setting: Setting, size: str, part: str = "refine") -> dict:
    """The packed conditioning latent and the text of each side: for "refine" diffusers gets its own padded
    256 tokens with a mask, for "refine_same_text" the same TEXT_TOKENS tokens as ours (an all-ones mask)."""
    height, width = setting.sizes[size]
    g = torch.Generator().manual_seed(1)
    latent = torch.randn(1, refiner.VAE_LATENT_CHANNELS, 1, height // 16, width // 16, generator=g)
    context = torch.randn(1, TEXT_TOKENS, setting.dit.context_dim, generator=g)
    length = DIFFUSERS_TEXT_TOKENS if part == "refine" else TEXT_TOKENS
    padded = torch.zeros(1, length, setting.dit.context_dim)
    padded[:, :TEXT_TOKENS] = context
    mask = torch.zeros(1, length, dtype=torch.long)
    mask[:, :TEXT_TOKENS] = 1
    kw = dict(device=setting.device, dtype=setting.dtype)
    return dict(height=height, width=width, packed=refiner.pack_latent(latent).to(**kw), context=context.to(**kw),
                padded_context=padded.to(**kw), mask=mask.to(setting.device))


def refine_call(side: str, model, setting: Setting, i: dict):
    sampling = refiner.REFINER_SAMPLING
    sync = torch.cuda.synchronize if setting.device == "cuda" else (lambda: None)
    if side == "ours":
        sigmas = refiner.refiner_sigmas(sampling.steps, sampling.shift)

        @torch.no_grad()
        def run():
            start, noise = refiner.refiner_noise(i["packed"].shape, refiner.refiner_generator(SEED),
                                                 dtype=setting.dtype, device=setting.device)
            condition = refiner.condition_latent(i["packed"], noise, sampling.condition_strength)
            out = refiner.refine(model, condition, i["context"], start, sigmas, sampling.guidance_scale)
            sync()
            return out
        return run

    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanImageRefinerPipeline

    pipe = HunyuanImageRefinerPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=sampling.shift), vae=None,
                                       text_encoder=None, tokenizer=None, transformer=model)
    pipe.set_progress_bar_config(disable=True)

    @torch.no_grad()
    def run():
        out = pipe(image=i["packed"], prompt_embeds=i["padded_context"], prompt_embeds_mask=i["mask"],
                   height=i["height"], width=i["width"], num_inference_steps=sampling.steps,
                   distilled_guidance_scale=sampling.guidance_scale, generator=torch.Generator().manual_seed(SEED),
                   output_type="latent").images
        sync()
        return out
    return run


# --- the VAE -----------------------------------------------------------------------------------------------
def diffusers_vae(setting: Setting):
    from diffusers import AutoencoderKLHunyuanImageRefiner

    with torch.device(setting.device):
        vae = AutoencoderKLHunyuanImageRefiner(latent_channels=refiner.VAE_LATENT_CHANNELS,
                                               block_out_channels=setting.vae_widths, layers_per_block=2)
    if setting.device == "cpu":
        randomise_refiner_vae_(vae, seed=0)  # the values the parity tests use
    else:
        randomise_refiner_vae_on_device_(vae, seed=0)
    return vae.to(setting.dtype).eval()


def randomise_refiner_vae_on_device_(vae, seed: int) -> None:
    """randomise_refiner_vae_'s scales (gamma near 1, matrices ~ N(0, 1/fan_in), each residual branch's conv2
    and the decoder's conv_out at 0.3 gain) drawn on the parameters' device (a CPU generator would take a
    minute at the published width)."""
    device = next(vae.parameters()).device
    g = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            noise = torch.randn(p.shape, generator=g, device=device, dtype=torch.float32)
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.3 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)
                if ".conv2." in name:
                    p.mul_(0.3)
            if "decoder.conv_out" in name:
                p.mul_(0.3)


def ours_vae(reference) -> HunyuanImageRefinerVAE:
    state = reference.state_dict()
    ours_state = {name: state[key] for key, name in diffusers_to_comfyui(state).items()}
    config = refiner_vae_config_from_shapes({k: t.shape for k, t in ours_state.items()})
    ours = HunyuanImageRefinerVAE(config, device="meta")
    ours.load_state_dict({k: v.clone() for k, v in ours_state.items()}, assign=True, strict=True)
    return ours.eval()


def vae_call(side: str, part: str, model, setting: Setting, size: str):
    height, width = setting.sizes[size]
    g = torch.Generator().manual_seed(2)
    kw = dict(device=setting.device, dtype=setting.dtype)
    images = (torch.rand(1, 3, height, width, generator=g) * 2 - 1).to(**kw)
    latent = torch.randn(1, refiner.VAE_LATENT_CHANNELS, 1, height // 16, width // 16, generator=g).to(**kw)
    sync = torch.cuda.synchronize if setting.device == "cuda" else (lambda: None)

    @torch.no_grad()
    def run():
        if side == "ours":
            out = model.encode(images) if part == "encode" else model.decode(latent)
        elif part == "encode":
            out = model.encode(images[:, :, None]).latent_dist.mode()
        else:
            out = model.decode(latent).sample[:, :, 0].clamp(-1, 1)  # ours clamps as diffusers' postprocess does
        sync()
        return out
    return run


# --- building either side ----------------------------------------------------------------------------------
def build_side(side: str, part: str, setting: Setting, size: str):
    """The callable of one side of one part at one size (the memory child builds only this)."""
    if part in REFINE_PARTS:
        reference = diffusers_dit(setting)
        model = ours_dit(reference, setting) if side == "ours" else reference
        del reference
        return refine_call(side, model, setting, refine_inputs(setting, size, part))
    reference = diffusers_vae(setting)
    model = ours_vae(reference) if side == "ours" else reference
    del reference
    return vae_call(side, part, model, setting, size)


def build_pair(part: str, setting: Setting, sizes) -> dict:
    """{size: {side: callable}}, both sides holding the same weights (built once per part)."""
    if part in REFINE_PARTS:
        reference = diffusers_dit(setting)
        ours = ours_dit(reference, setting)
        made = {size: refine_inputs(setting, size, part) for size in sizes}
        return {size: {"ours": refine_call("ours", ours, setting, made[size]),
                       "diffusers": refine_call("diffusers", reference, setting, made[size])} for size in sizes}
    reference = diffusers_vae(setting)
    ours = ours_vae(reference)
    return {size: {"ours": vae_call("ours", part, ours, setting, size),
                   "diffusers": vae_call("diffusers", part, reference, setting, size)} for size in sizes}


def build(which: str):
    """The memory child's callable: `SIDE,PART,SIZE` on the CPU setting."""
    side, part, size = which.split(",")
    return build_side(side, part, cpu_setting(), size)


# --- the report --------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", metavar="PART", help=f"parts to run (default all): {', '.join(PARTS)}")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--layers", type=int, default=2, help="CUDA only: N double + 2N single DiT blocks (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed pairs per part and size (default 5)")
    args = parser.parse_args()
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # its per-call notes (experimental guider, dtype casts)
    unknown = [part for part in args.parts if part not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    parts = args.parts or list(PARTS)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: CUDA is not available here")
        setting = cuda_setting(args.layers)
    else:
        torch.set_num_threads(2)
        setting = cpu_setting()
    time_clock = "cpu" if setting.device == "cpu" else "wall"
    sizes = list(setting.sizes)

    rows = []
    load = [os.getloadavg()[0]]
    for part in parts:
        pairs = build_pair(part, setting, sizes)
        for size in sizes:
            pair = pairs[size]
            with torch.no_grad():
                difference = (pair["ours"]().float() - pair["diffusers"]().float()).abs().max().item()
            samples = {}
            timing = paired_times(pair, "diffusers", repeats=args.repeats, samples_out=samples)
            best = {side: min(samples[time_clock][side]) for side in SIDES}
            ratios = timing[time_clock][1]
            wall_times, wall_ratios = timing["wall"]
            if setting.device == "cuda":
                memory = {side: cuda_peak_extra_mb(pair[side]) for side in SIDES}
            else:
                memory = {side: run_child(__file__, "--memory", f"{side},{part},{size}",
                                          env=MEMORY_ENV)["peak_extra_mb"] for side in SIDES}
            height, width = setting.sizes[size]
            per = refiner.REFINER_SAMPLING.steps if part in REFINE_PARTS else 1
            rows.append(dict(part=part, size=size, height=height, width=width,
                             image_tokens=(height // 16) * (width // 16), max_abs_difference=difference,
                             ours_ms=wall_times["ours"] * 1000 / per, diffusers_ms=wall_times["diffusers"] * 1000 / per,
                             ours_cpu_ms=timing["cpu"][0]["ours"] * 1000 / per,
                             diffusers_cpu_ms=timing["cpu"][0]["diffusers"] * 1000 / per,
                             time_ratio=ratios["ours"], best_ratio=best["ours"] / best["diffusers"],
                             wall_ratio=wall_ratios["ours"],
                             ours_peak_mb=memory["ours"], diffusers_peak_mb=memory["diffusers"],
                             memory_ratio=memory["ours"] / memory["diffusers"]))
            print(f"{part} {size} done", flush=True)
        del pairs
        load.append(os.getloadavg()[0])

    where = (f"CUDA {torch.cuda.get_device_name()}" if setting.device == "cuda"
             else f"CPU, {torch.get_num_threads()} threads")
    print(f"\nDiT: {setting.dit}")
    print(f"VAE widths {setting.vae_widths}, 2 residual blocks a stage; {where}, "
          f"{str(setting.dtype).removeprefix('torch.')}; {args.repeats} pairs per row (ratios: medians of the "
          f"paired ratios of {time_clock} time); text {TEXT_TOKENS} tokens (diffusers: padded to "
          f"{DIFFUSERS_TEXT_TOKENS}, masked); load average {', '.join(f'{x:.1f}' for x in load)}")
    memory_name = "peak MB" if setting.device == "cpu" else "VRAM MB"
    header = (f"{'part':16s} {'size':>10s} {'tokens':>6s} {'ours ms':>9s} {'diff. ms':>9s} {'time x':>7s} "
              f"{'best x':>7s} {'wall x':>7s} {'ours ' + memory_name:>13s} {'diff. ' + memory_name:>14s} "
              f"{'mem x':>6s} {'max |d|':>8s}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['part']:16s} {r['size']:>10s} {r['image_tokens']:6d} {r['ours_ms']:9.1f} "
              f"{r['diffusers_ms']:9.1f} {r['time_ratio']:7.3f} {r['best_ratio']:7.3f} {r['wall_ratio']:7.3f} "
              f"{r['ours_peak_mb']:13.1f} {r['diffusers_peak_mb']:14.1f} {r['memory_ratio']:6.2f} "
              f"{r['max_abs_difference']:8.1e}")
    print(f"ms: median wall time per call (refine*: per step, the 4-step loop / 4); time x: ours/diffusers "
          f"({time_clock} time, median of paired ratios), best x: of the fastest {time_clock} times, wall x: the "
          f"wall-time ratio (median of paired ratios); peak: above the level before one call (refine*: the "
          f"4-step loop), weights not counted; max |d|: ours vs diffusers output")
    print(json.dumps(dict(bench="hunyuan_refiner", device=where, dtype=str(setting.dtype), time_clock=time_clock,
                          dit={k: list(v) if isinstance(v, tuple) else v for k, v in asdict(setting.dit).items()},
                          vae_widths=list(setting.vae_widths), text_tokens=TEXT_TOKENS, repeats=args.repeats,
                          steps=refiner.REFINER_SAMPLING.steps, load_average=load, rows=rows)))


if __name__ == "__main__":
    main_or_memory_child(main, build)
