"""HunyuanImage 2.1's official sampling settings: steps, guidance, shift, MeanFlow, per variant.

Sources: the official code (github.com/Tencent-Hunyuan/HunyuanImage-2.1, hyimage/diffusion/pipelines/
hunyuanimage_pipeline.py and its README table) and diffusers' HunyuanImagePipeline with the guider config of
hunyuanvideo-community/HunyuanImage-2.1-Diffusers (as printed in diffusers' docs). They agree on:

    variant     steps  guidance                    shift  MeanFlow
    base        50     3.5, CFG then APG ("mix")   5      no
    distilled   8      3.25, embedded (1 pass)     4      yes: timestep_r = next timestep, 0 at the end

Base loop (diffusers HunyuanImagePipeline.__call__; the official loop is the same math):
  1. Text: Qwen2.5-VL states + mask of the prompt; ByT5 glyph states [B, 128, 1472] + mask of the quoted text
     (all zeros when the prompt has none). Guider: the glyph ("ocr") guider when any glyph state is nonzero,
     else the general one; CFG needs the negative prompt (default "") encoded the same way.
  2. Noise: randn_tensor((B, 64, H // 32, W // 32), generator, dtype = the transformer's dtype). A CPU
     generator draws on the CPU, the whole batch at once (a list of generators: one draw per sample), then
     moves it to the device. The official code draws torch.randn(shape, generator=cpu generator(seed),
     dtype=bf16) for batch 1. In fp32 with a CPU generator this equals nodes/sampling_request.initial_noise.
     The latent is not scaled: the noise is the starting x at sigma 1.
  3. Schedule: sigmas = FlowMatchEulerDiscreteScheduler(shift=5) over numpy linspace(1, 0, 51)[:-1] (float32,
     shift applied, a final 0 appended): ConstantShiftSchedule(5).sigmas(50). timesteps = sigmas[:-1] * 1000.
  4. For step i with t = timesteps[i]: timestep = t expanded to [B] in the latent dtype (0..1000 units);
     guider.set_state(step=i, num_inference_steps=50); the transformer runs twice, separately (not batched):
     cond (prompt states) then uncond (negative states), same latents and timestep, no guidance input, no
     timestep_r; the guider combines the two velocity predictions (AdaptiveProjectedMixGuidance.combine with
     step_index=i; only the cond pass when CFG is off for the step); then Euler in float32:
     latents = latents.float() + (sigmas[i + 1] - sigmas[i]) * guided, cast back to the prediction's dtype.
  5. Decode: latents / vae scaling_factor (no shift factor) -> VAE decode -> images in [-1, 1].

Distilled loop: the same, but no guider and no negative prompt (one transformer pass per step), 8 steps with
shift 4, guidance = tensor([3.25] * B) * 1000 passed to the transformer (diffusers and the official code both
multiply by 1000 before the guidance embedder; our network takes 3.25 and multiplies itself, as ComfyUI
does), and timestep_r = timesteps[i + 1] (0 at the last step) expanded to [B].

Differences between the official code and diffusers, none of which matter for a batch-1 run with an
empty negative prompt:
  * official sigmas come from torch.linspace (float32): a few differ from diffusers' in the last bit; we
    follow diffusers.
  * the official "MIX_mode_0" picks the guider per sample from the glyph text of the LAST encoded prompt
    (the negative one when it is not empty); diffusers picks one guider for the batch from the positive
    prompts. We follow diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from ..guidance.apg_mix import AdaptiveProjectedMixGuidance, ApgMixParams
from ..sampling import ConstantShiftSchedule

TIMESTEP_SCALE = 1000.0  # network timestep = sigma * 1000 (diffusers num_train_timesteps, ComfyUI FLOW)


@dataclass(frozen=True)
class HunyuanSampling:
    """One variant's official sampling settings."""

    variant: str
    steps: int
    guidance_scale: float
    shift: float
    guidance_kind: str  # "apg_mix": CFG/APG over cond + uncond passes; "embedded": scale fed to the network
    meanflow: bool  # the network gets timestep_r = the next timestep

    @property
    def schedule(self) -> ConstantShiftSchedule:
        return ConstantShiftSchedule(self.shift)


BASE_SAMPLING = HunyuanSampling("base", steps=50, guidance_scale=3.5, shift=5.0, guidance_kind="apg_mix",
                                meanflow=False)
DISTILLED_SAMPLING = HunyuanSampling("distilled", steps=8, guidance_scale=3.25, shift=4.0,
                                     guidance_kind="embedded", meanflow=True)
OFFICIAL_SAMPLING = {s.variant: s for s in (BASE_SAMPLING, DISTILLED_SAMPLING)}

# The base model's guiders: official cfg_guider_general / cfg_guider_ocr (AdaptiveProjectedGuidance with
# guidance_scale=10, eta=0, rescale=10, momentum=-0.5; CFG with the user's scale while step <= start step)
# = diffusers' guider / ocr_guider. The general one is also diffusers' published guider_config.json. The
# ocr_guider's published config could not be read here: 38 is the official code's apg_start_step_ocr.
GENERAL_GUIDANCE = ApgMixParams(guidance_scale=3.5, apg_scale=10.0, momentum=-0.5, norm_threshold=10.0, eta=0.0,
                                apg_start_step=5)
GLYPH_GUIDANCE = replace(GENERAL_GUIDANCE, apg_start_step=38)


def official_sampling(variant: str) -> HunyuanSampling:
    try:
        return OFFICIAL_SAMPLING[variant]
    except KeyError:
        raise ValueError(f"no official sampling settings for HunyuanImage 2.1 variant {variant!r}; "
                         f"known: {', '.join(OFFICIAL_SAMPLING)}") from None


def official_guidance_params(has_glyph_text: bool, guidance_scale: float | None = None) -> ApgMixParams:
    """The base model's guidance rule: the glyph guider when the prompt has quoted (glyph) text, else the
    general one; guidance_scale replaces the CFG scale (3.5) if given."""
    params = GLYPH_GUIDANCE if has_glyph_text else GENERAL_GUIDANCE
    return params if guidance_scale is None else params.with_scale(guidance_scale)


def official_guidance(has_glyph_text: bool, guidance_scale: float | None = None) -> AdaptiveProjectedMixGuidance:
    """A fresh per-run guidance object for the base model."""
    return AdaptiveProjectedMixGuidance(official_guidance_params(has_glyph_text, guidance_scale))


def official_guidance_factory(has_glyph_text: bool) -> Callable[[float], AdaptiveProjectedMixGuidance]:
    """scale -> a fresh per-run guidance object: the factory guidance.sampler_cfg.as_sampler_cfg_function
    takes (the sampler's cfg becomes the CFG scale; the APG scale stays 10)."""
    return lambda scale: official_guidance(has_glyph_text, scale)


def timesteps(sigmas: torch.Tensor) -> torch.Tensor:
    """The network's timestep per step (sigmas without the final 0, times 1000, float32)."""
    return sigmas[:-1] * TIMESTEP_SCALE


def meanflow_timestep_r(sigmas: torch.Tensor, step_index: int) -> torch.Tensor:
    """The distilled model's timestep_r at step step_index: the next step's timestep, 0 after the last
    (sigmas end in 0, so this is sigmas[step_index + 1] * 1000 either way), a 0-d float32 tensor."""
    if not 0 <= step_index < len(sigmas) - 1:
        raise ValueError(f"step_index {step_index} outside a {len(sigmas) - 1}-step schedule")
    return sigmas[step_index + 1] * TIMESTEP_SCALE
