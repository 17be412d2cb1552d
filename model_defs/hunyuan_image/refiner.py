"""HunyuanImage 2.1's refine stage: the math of the official refiner pipeline, as pure functions.

Sources: the official code (github.com/Tencent-Hunyuan/HunyuanImage-2.1, hyimage/diffusion/pipelines/
hunyuanimage_refiner_pipeline.py, called from hunyuanimage_pipeline.py with use_refiner=True) and diffusers'
HunyuanImageRefinerPipeline. The refine stage, for an image of W x H pixels (multiples of 16):

  1. Text: the prompt (the base stage's, after prompt enhancement) through Qwen2.5-VL with the refiner's own
     template (text.py: REFINER_PROMPT_TEMPLATE, a fixed 36-token drop, at most 256 tokens). No ByT5.
  2. Conditioning latent: the image in [-1, 1] as [B, 3, 1, H, W] through the refiner VAE (16x, 32 latent
     channels), a SAMPLE of its posterior (not the mean: both pipelines call latent_dist.sample()), then
     `pack_latent`: the frame axis gets the first frame prepended and every two frames are stacked on the
     channels ([B, 32, 1, h, w] -> [B, 64, 1, h, w]: the latent twice), times the VAE's scaling factor
     1.03682 (no shift factor). Then "condition augmentation": cond = 0.25 * noise + 0.75 * cond.
  3. Start: pure noise [B, 64, 1, h, w] at sigma 1. The refiner does not start from the input image (not an
     image-to-image denoise): the input reaches the network only as the conditioning latent.
  4. 4 Euler steps over sigmas linspace(1, 0, 5)[:-1] shifted by 4 (SD3 shift), ending in 0; at each step
     the network gets cat([latents, cond], channels) -> [B, 128, 1, h, w], timestep sigma * 1000, embedded
     guidance (the scale; the network multiplies by 1000) and no MeanFlow end time. One pass per step: no
     CFG, no negative prompt.
  5. Output: `unpack_latent` (divide by the scaling factor, undo the frame stacking, drop the prepended
     frame: channels 32..63 of the prediction) -> [B, 32, 1, h, w] for the refiner VAE's decoder.

Where the two references differ, and what this module follows:
  * shift: the official refiner's __call__ defaults to shift=4 and the base pipeline passes none (its
    config's `shift = 1` is only printed). diffusers passes the unshifted grid to the scheduler of the
    published repo, whose config could not be read here. We follow the official 4.
  * guidance: the official base pipeline hands its own guidance scale to the refiner (3.5 after the base
    model, 3.25 after the distilled one; 3.5 is also the refiner's own default); diffusers defaults to 3.25.
    REFINER_SAMPLING carries 3.5; `official_refiner_guidance` gives the per-base value.
  * randomness: diffusers draws, from one generator, the posterior sample (image input only), then the
    start noise, then the conditioning noise. The official code draws the start noise from a CPU generator
    seeded with the seed, and the posterior sample and the conditioning noise from the global (CUDA) RNG,
    which no CPU run reproduces. `refiner_noise` follows diffusers (a CPU generator, seeded), so a run is
    reproducible and matches diffusers for the same seed.
  * sigmas: the official code uses torch.linspace (float32), diffusers numpy (float64 then float32); they can
    differ in the last bit. We follow diffusers (model_defs/sampling.py).
  * between stages the official pipeline round-trips the base image through 8-bit PIL; a ComfyUI IMAGE
    stays float.

ComfyUI's native refiner (HunyuanRefinerLatent) mixes its noise_augmentation (default 0.10) as
a * noise + min(1 - a, 0.75) * cond: at the official 0.25 that is the official formula, at its default 0.10 a
darker, less noisy conditioning latent than the refiner was trained on.

The refiner network (transformer.py, variant "refiner") must not use its time_r_in: the official refiner
pipeline passes timesteps_r=None; our network never derives one for the refiner.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..sampling import ConstantShiftSchedule
from .family import REFINER_LATENT_FORMAT
from .sampling import TIMESTEP_SCALE

FAMILY = "hunyuan_image"
REFINER_VARIANT = "refiner"

# The refiner VAE (hyimage AutoencoderKLConv3D = diffusers AutoencoderKLHunyuanImageRefiner defaults, and
# ComfyUI's HunyuanImage21Refiner latent format): 32 latent channels, 16x spatial, scaling 1.03682, no shift.
VAE_LATENT_CHANNELS = REFINER_LATENT_FORMAT.channels
VAE_DOWNSCALE = REFINER_LATENT_FORMAT.downscale
VAE_SCALING_FACTOR = REFINER_LATENT_FORMAT.scale
MODEL_LATENT_CHANNELS = 2 * VAE_LATENT_CHANNELS  # after pack_latent; the network takes twice this (128)
SIZE_MULTIPLE = VAE_DOWNSCALE  # the refiner's patch is 1 cell


@dataclass(frozen=True)
class RefinerSampling:
    """The refine stage's official settings (see the module docstring for where each comes from)."""

    steps: int = 4
    guidance_scale: float = 3.5  # embedded: one network pass per step
    shift: float = 4.0
    condition_strength: float = 0.25  # noise share of the conditioning latent

    @property
    def schedule(self) -> ConstantShiftSchedule:
        return ConstantShiftSchedule(self.shift)


REFINER_SAMPLING = RefinerSampling()
# The official base pipeline passes its own guidance scale to the refiner.
OFFICIAL_REFINER_GUIDANCE = {"base": 3.5, "distilled": 3.25}


def official_refiner_guidance(base_variant: str | None) -> float:
    """The guidance the official pipeline gives the refiner after a base stage of this variant (the
    refiner's own default when the base is unknown)."""
    return OFFICIAL_REFINER_GUIDANCE.get(base_variant, REFINER_SAMPLING.guidance_scale)


# --- which model goes where --------------------------------------------------------------------------------
class WrongStageModel(ValueError):
    """A refiner where a generating model belongs, or the reverse."""


def model_variant(config) -> str | None:
    """"base", "distilled" or "refiner" for a HunyuanImage 2.1 network config; None for any other."""
    variant = getattr(config, "variant", None)
    return variant if variant in ("base", "distilled", REFINER_VARIANT) else None


def is_refiner(family: str, variant: str | None) -> bool:
    return family == FAMILY and variant == REFINER_VARIANT


def check_generating_model(family: str, variant: str | None, where: str = "MMDiT Sampler") -> None:
    """For the base sampling path: refuse the refiner (it only refines a finished image and needs a
    conditioning latent, 128 input channels)."""
    if is_refiner(family, variant):
        raise WrongStageModel(
            f"this is the HunyuanImage 2.1 refiner, which refines a finished image and cannot generate one in "
            f"{where}: use the MMDiT Refiner node for it, and load the HunyuanImage 2.1 base or distilled "
            f"diffusion model (hunyuanimage2.1*.safetensors) here")


def check_refiner_model(family: str, variant: str | None, display_name: str = "",
                        where: str = "MMDiT Refiner") -> None:
    """For the refine stage: refuse anything but the HunyuanImage 2.1 refiner."""
    if is_refiner(family, variant):
        return
    if family == FAMILY:
        what = f"the HunyuanImage 2.1 {variant} model" if variant else "a HunyuanImage 2.1 generating model"
    else:
        what = f"a {display_name or family} diffusion model"
    raise WrongStageModel(
        f"{where} needs the HunyuanImage 2.1 refiner diffusion model (hunyuanimage-refiner.safetensors, 3-D "
        f"patch, 128 input channels); this is {what}, which generates images: sample with it in MMDiT "
        f"Sampler and pass the result to {where} with the refiner loaded in its own model loader")


# --- latents ------------------------------------------------------------------------------------------------
def _five_d(latent: torch.Tensor, channels: int, what: str) -> torch.Tensor:
    if latent.ndim == 4:
        latent = latent[:, :, None]
    if latent.ndim != 5 or latent.shape[1] != channels:
        raise ValueError(f"{what} must be [B, {channels}, 1, H, W] (or [B, {channels}, H, W]); got shape "
                         f"{tuple(latent.shape)}")
    return latent


def pack_latent(vae_latent: torch.Tensor, scaling_factor: float = VAE_SCALING_FACTOR) -> torch.Tensor:
    """Refiner VAE latent [B, 32, T, h, w] (or [B, 32, h, w]) -> the network's latent space [B, 64, (T+1)/2,
    h, w]: the first frame prepended, pairs of frames stacked on the channels, times the scaling factor
    (official `reorg tokens` + mul_(scaling_factor); diffusers _reorder_image_tokens * scaling_factor). A
    single image ([B, 32, 1, h, w]) becomes its latent twice on the channels."""
    latent = _five_d(vae_latent, VAE_LATENT_CHANNELS, "a refiner VAE latent")
    latent = torch.cat((latent[:, :, :1], latent), dim=2)
    batch, channels, frames, height, width = latent.shape
    if frames % 2:
        raise ValueError(f"the refiner packs frames in pairs; {frames - 1} frames cannot be (an odd count is needed)")
    paired = latent.transpose(1, 2).reshape(batch, frames // 2, 2 * channels, height, width).transpose(1, 2)
    return paired.contiguous() * scaling_factor


def unpack_latent(model_latent: torch.Tensor, scaling_factor: float = VAE_SCALING_FACTOR) -> torch.Tensor:
    """The inverse of pack_latent for the decoder: divide by the scaling factor, split the channels back
    into frames, drop the prepended one ([B, 64, 1, h, w] -> [B, 32, 1, h, w]: channels 32..63)."""
    latent = _five_d(model_latent, MODEL_LATENT_CHANNELS, "a refiner latent") / scaling_factor
    batch, channels, frames, height, width = latent.shape
    split = latent.transpose(1, 2).reshape(batch, 2 * frames, channels // 2, height, width).transpose(1, 2)
    return split[:, :, 1:].contiguous()


def sample_posterior(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A sample of the VAE's diagonal Gaussian posterior, as both pipelines encode (diffusers
    DiagonalGaussianDistribution.sample: logvar clamped to [-30, 20], mean + exp(logvar / 2) * randn drawn
    from `generator` on its device in mean's dtype)."""
    std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))
    eps = torch.randn(mean.shape, generator=generator, device=generator.device, dtype=mean.dtype)
    return mean + std * eps.to(mean.device)


def refiner_generator(seed: int) -> torch.Generator:
    """The stage's random source: a CPU generator seeded with the seed (diffusers with a CPU generator)."""
    return torch.Generator("cpu").manual_seed(int(seed))


def refiner_noise(shape, generator: torch.Generator, dtype: torch.dtype = torch.float32,
                  device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(start noise, conditioning noise), both `shape` ([B, 64, 1, h, w]), drawn in this order from
    `generator` (diffusers' prepare_latents; with an image input the posterior sample comes first from the
    same generator)."""
    start = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=dtype)
    condition = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=dtype)
    return start.to(device or start.device), condition.to(device or condition.device)


def condition_latent(packed: torch.Tensor, noise: torch.Tensor,
                     strength: float = REFINER_SAMPLING.condition_strength) -> torch.Tensor:
    """The official condition augmentation: strength * noise + (1 - strength) * packed latent."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"the conditioning noise strength must be in [0, 1], got {strength}")
    if noise.shape != packed.shape:
        raise ValueError(f"noise {tuple(noise.shape)} does not match the conditioning latent {tuple(packed.shape)}")
    return strength * noise + (1 - strength) * packed


# --- the schedule and the loop ------------------------------------------------------------------------------
def refiner_sigmas(steps: int = REFINER_SAMPLING.steps, shift: float = REFINER_SAMPLING.shift) -> torch.Tensor:
    """steps + 1 float32 sigmas from 1 to 0 (diffusers FlowMatchEulerDiscreteScheduler(shift) over
    linspace(1, 0, steps + 1)[:-1]; the official torch.linspace grid may differ in the last bit).
    The conditioning noise strength does not enter: the refiner always starts from pure noise."""
    return ConstantShiftSchedule(shift).sigmas(steps)


def refiner_timesteps(sigmas: torch.Tensor) -> torch.Tensor:
    """The network's timestep per step: sigmas without the final 0, times 1000."""
    return sigmas[:-1] * TIMESTEP_SCALE


def refiner_inputs(latents: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    """The network's input: [latents; conditioning latent] on the channels ([B, 128, 1, h, w])."""
    latents = _five_d(latents, MODEL_LATENT_CHANNELS, "the refiner's latent")
    condition = _five_d(condition, MODEL_LATENT_CHANNELS, "the conditioning latent")
    if condition.shape[0] != latents.shape[0] and latents.shape[0] % condition.shape[0] == 0:
        condition = condition.repeat_interleave(latents.shape[0] // condition.shape[0], dim=0)
    if condition.shape != latents.shape:
        raise ValueError(f"the conditioning latent {tuple(condition.shape)} does not match the latent "
                         f"{tuple(latents.shape)}")
    return torch.cat((latents, condition.to(latents.dtype)), dim=1)


def euler_step(latents: torch.Tensor, velocity: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """One flow-matching Euler step in float32 (diffusers' scheduler and the official step), returned in
    the velocity's dtype."""
    step = latents.float() + (sigma_next - sigma) * velocity.float()
    return step.to(velocity.dtype)


def refine(network, condition: torch.Tensor, context: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor,
           guidance_scale: float = REFINER_SAMPLING.guidance_scale, attention_mask: torch.Tensor | None = None,
           on_step=None) -> torch.Tensor:
    """The refine loop on latents in the network's space: from `noise` (sigma 1) through `sigmas`, one
    pass per step with embedded guidance and no MeanFlow end time. on_step(i, latents) after each step (a
    progress bar, a preview, an interrupt check). Returns the refined latent [B, 64, 1, h, w]; unpack_latent
    makes the refiner VAE's latent of it."""
    latents = noise
    batch = latents.shape[0]
    guidance = torch.full((batch,), float(guidance_scale), dtype=torch.float32, device=latents.device)
    timesteps = refiner_timesteps(sigmas).to(latents.device)
    for i in range(len(sigmas) - 1):
        velocity = network(refiner_inputs(latents, condition), timesteps[i].expand(batch).to(latents.dtype),
                           context, attention_mask=attention_mask, guidance=guidance, disable_time_r=True)
        latents = euler_step(latents, velocity, sigmas[i], sigmas[i + 1])
        if on_step is not None:
            on_step(i, latents)
    return latents
