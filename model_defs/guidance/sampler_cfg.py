"""Running a per-run, velocity-space guidance object inside a k-diffusion style sampler.

Samplers in the k-diffusion style (ComfyUI's) do not number their steps for the model: each model call
sees only x and sigma, and a custom guidance rule is a function of one dict per call (ComfyUI's
sampler_cfg_function protocol):

    args["cond"], args["uncond"]  x - denoised: noise units, sigma * velocity for flow models
    args["sigma"]                 the current sigma, one per sample ([B])
    args["cond_scale"]            the sampler's CFG scale
    args["input"]                 x
    args["model_options"]["transformer_options"]["sample_sigmas"]   the run's schedule (when the host sets it)

and returns the guided value in the same units (the host computes denoised = x - result).

SamplerCfgFunction turns such a call into guidance.combine(cond_v, uncond_v, step_index, num_steps, sigma):

* velocity = noise / sigma per sample, and back (guided * sigma). At sigma = 0 both inputs are 0 (denoised
  equals x): the division uses 1 instead and the result is 0 again.
* step_index = the index i of the smallest schedule sigma with sigmas[i] >= sigma (to a relative 1e-5),
  clamped to 0 .. num_steps - 1: with Euler (one call per step, at sigmas[i]) this is the step number the
  official pipeline gives its guider, so the whole run equals the velocity-space run (tested).
* Samplers with several model calls per step: every call is one combine() (momentum updates once per call,
  as diffusers updates it once per guider call), with the index of its sigma: Heun's second call, at
  sigmas[i + 1], counts as step i + 1 (its noise level); DPM-2's midpoint, between sigmas[i + 1] and
  sigmas[i], as step i. Sigmas above sigmas[0] (churn) count as step 0. This is our choice: the official
  pipeline only samples with Euler.
* A new run starts (a fresh guidance object from the factory, with that run's cond_scale) on the first
  call and whenever the schedule object changes (ComfyUI sets sample_sigmas anew for every sampling run),
  unless a fixed schedule was given.
"""

from __future__ import annotations

from typing import Callable

import torch

# Relative tolerance of the sigma -> schedule-index match (schedule sigmas are float32; a sigma may have
# gone through another float32 computation on its way to the model call).
SIGMA_MATCH_RTOL = 1e-5


def schedule_step_index(sigmas: torch.Tensor, sigma: float) -> int:
    """Index of the smallest of sigmas[0 .. n-1] that is >= sigma (n = len(sigmas) - 1 steps), clamped
    to 0 .. n-1. sigmas run from high to low."""
    steps = len(sigmas) - 1
    if steps < 1:
        raise ValueError(f"a schedule needs at least 2 sigmas, got {len(sigmas)}")
    levels = sigmas[:steps].detach().to(device="cpu", dtype=torch.float64)
    reached = levels >= sigma * (1 - SIGMA_MATCH_RTOL)
    count = int(reached.sum())
    return min(max(count - 1, 0), steps - 1)


def _per_sample(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, device=like.device, dtype=like.dtype).reshape(-1)
    return sigma.reshape(-1, *([1] * (like.ndim - 1)))


class SamplerCfgFunction:
    """A sampler_cfg_function: noise units in and out, a velocity-space guidance object inside.

    guidance_factory(cond_scale) -> an object with combine(cond, uncond, step_index, num_steps, sigma)
    (AdaptiveProjectedMixGuidance, ClassifierFreeGuidance, ...), made once per run. sigmas: the run's
    schedule if known when this is made; None reads it from each call's model_options (see module doc).
    """

    def __init__(self, guidance_factory: Callable[[float], object], sigmas: torch.Tensor | None = None):
        self.guidance_factory = guidance_factory
        self.fixed_sigmas = sigmas
        self._run_sigmas = None
        self.guidance = None  # the current run's guidance object

    def _schedule(self, args: dict) -> torch.Tensor:
        if self.fixed_sigmas is not None:
            return self.fixed_sigmas
        sigmas = args.get("model_options", {}).get("transformer_options", {}).get("sample_sigmas")
        if sigmas is None:
            raise ValueError("the guidance needs the sampling schedule: pass sigmas when making the cfg function, "
                             "or run it where the sampler sets transformer_options['sample_sigmas']")
        return sigmas

    def _start_run_if_new(self, sigmas: torch.Tensor, cond_scale: float) -> None:
        if self.guidance is None or sigmas is not self._run_sigmas:
            self._run_sigmas = sigmas  # kept referenced, so an identity check cannot match a freed tensor
            self.guidance = self.guidance_factory(cond_scale)

    def __call__(self, args: dict) -> torch.Tensor:
        cond, uncond = args["cond"], args["uncond"]
        sigmas = self._schedule(args)
        self._start_run_if_new(sigmas, float(args.get("cond_scale", 1.0)))
        sigma = _per_sample(args["sigma"], cond)
        step_index = schedule_step_index(sigmas, float(sigma.max()))
        divisor = torch.where(sigma == 0, torch.ones_like(sigma), sigma)
        uncond_v = None if uncond is None else uncond / divisor
        guided = self.guidance.combine(cond / divisor, uncond_v, step_index, len(sigmas) - 1, sigma.reshape(-1))
        return guided * sigma


def as_sampler_cfg_function(guidance_factory: Callable[[float], object],
                            sigmas: torch.Tensor | None = None) -> SamplerCfgFunction:
    """A sampler_cfg_function (ComfyUI's protocol) running guidance_factory's per-run guidance in velocity
    space; see SamplerCfgFunction."""
    return SamplerCfgFunction(guidance_factory, sigmas)
