"""Flow-matching sampling math shared by both hosts: sigma schedules and guidance combination.

Sigmas run from 1 (pure noise) to 0 (clean latent); x_sigma = sigma * noise + (1 - sigma) * x0 and the
networks predict the velocity v = noise - x0. Computations are done in float32, the precision the official
pipelines use, so schedules agree with them to the last bit that matters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def constant_shift(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3-style shift: shift * s / (1 + (shift - 1) * s). shift > 1 spends more steps at high noise."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def exponential_shift(sigmas: torch.Tensor, mu: float) -> torch.Tensor:
    """FLUX-style time shift: e^mu / (e^mu + (1/s - 1)), the same curve as constant_shift(e^mu)."""
    scale = torch.tensor(math.exp(mu), dtype=sigmas.dtype)  # a tensor, so the division is a true division
    return scale / (scale + (1 / sigmas - 1))


def stretch_to_terminal(sigmas: torch.Tensor, terminal: float) -> torch.Tensor:
    """Rescale 1 - sigma so the last (non-zero) sigma lands exactly on `terminal`."""
    one_minus = 1 - sigmas
    return 1 - one_minus / (one_minus[-1] / (1 - terminal))


def dynamic_mu(image_tokens: int, base_image_seq_len: int, max_image_seq_len: int,
               base_shift: float, max_shift: float) -> float:
    """The shift exponent, linear in the number of image tokens (larger images get more shift)."""
    slope = (max_shift - base_shift) / (max_image_seq_len - base_image_seq_len)
    return image_tokens * slope + (base_shift - slope * base_image_seq_len)


def linear_sigmas(steps: int) -> torch.Tensor:
    """linspace(1, 1/steps, steps): the unshifted grid of the official flow-matching pipelines.

    Computed as numpy.linspace does (start + i * step in float64, last point exact), then rounded to
    float32 like the pipelines do, so every sigma matches theirs exactly."""
    if steps == 1:
        return torch.ones(1)
    step = (1.0 / steps - 1.0) / (steps - 1)
    grid = [1.0 + i * step for i in range(steps - 1)] + [1.0 / steps]
    return torch.tensor(grid, dtype=torch.float64).to(torch.float32)


@dataclass(frozen=True)
class DynamicShiftSchedule:
    """An official pipeline's schedule: exponential shift with mu from the token count, optional terminal."""

    base_image_seq_len: int
    max_image_seq_len: int
    base_shift: float
    max_shift: float
    shift_terminal: float | None = None

    def sigmas(self, steps: int, image_tokens: int) -> torch.Tensor:
        """steps + 1 sigmas ending in 0."""
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        mu = dynamic_mu(image_tokens, self.base_image_seq_len, self.max_image_seq_len, self.base_shift, self.max_shift)
        sigmas = exponential_shift(linear_sigmas(steps), mu)
        if self.shift_terminal:
            sigmas = stretch_to_terminal(sigmas, self.shift_terminal)
        return torch.cat([sigmas.to(torch.float32), torch.zeros(1)])


def shifted_sigmas(steps: int, shift: float) -> torch.Tensor:
    """steps + 1 sigmas: the linear grid under a constant shift, ending in 0."""
    return torch.cat([constant_shift(linear_sigmas(steps), shift), torch.zeros(1)])


def partial_schedule(make_sigmas, steps: int, denoise: float) -> torch.Tensor:
    """Sigmas for partial denoising (image-to-image), as ComfyUI does it: build the schedule for
    steps / denoise steps and run only its last `steps`. make_sigmas(n) returns n + 1 sigmas."""
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1], got {denoise}")
    if denoise >= 1.0:
        return make_sigmas(steps)
    total = max(steps, int(steps / denoise))
    return make_sigmas(total)[-(steps + 1):]


def norm_rescaled_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float, to_tokens, from_tokens) -> torch.Tensor:
    """True CFG as the Qwen-Image pipeline does it: combine, then rescale every token's prediction to the
    norm of the conditional one (keeps high CFG from inflating the latent's magnitude).

    to_tokens(t) -> [batch, tokens, features] and from_tokens(tokens) -> t's layout: the norm is taken over
    the features of one patch token (16 channels x 2 x 2 for Qwen-Image), as the pipeline does on its
    packed latents.
    """
    cond_tokens = to_tokens(cond)
    uncond_tokens = to_tokens(uncond)
    combined = uncond_tokens + scale * (cond_tokens - uncond_tokens)
    cond_norm = torch.linalg.vector_norm(cond_tokens, dim=-1, keepdim=True)
    combined_norm = torch.linalg.vector_norm(combined, dim=-1, keepdim=True)
    ratio = torch.where(combined_norm > 0, cond_norm / combined_norm, torch.ones_like(combined_norm))
    return from_tokens(combined * ratio)
