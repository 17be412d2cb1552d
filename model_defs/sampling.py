"""Flow-matching sampling math shared by both hosts: sigma schedules (guidance rules: model_defs/guidance).

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
    """Rescale 1 - sigma so the last (non-zero) sigma lands exactly on `terminal`. A one-step schedule has
    nothing to stretch (its only sigma is 1, where the formula divides 0 by 0): it is returned as it is."""
    one_minus = 1 - sigmas
    if float(one_minus[-1]) == 0.0:
        return sigmas
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


def linear_sigmas_to_zero(steps: int) -> torch.Tensor:
    """linspace(1, 0, steps + 1)[:-1]: the unshifted grid the HunyuanImage pipelines pass (as `sigmas`) to
    their scheduler. Computed as numpy.linspace does (1 + i * (-1 / steps) in float64), then rounded to
    float32 like the scheduler does, so every value matches diffusers' exactly. (The official HunyuanImage
    code uses torch.linspace in float32, which differs in the last bit for some steps.)"""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    step = -1.0 / steps
    return torch.tensor([i * step + 1.0 for i in range(steps)], dtype=torch.float64).to(torch.float32)


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


@dataclass(frozen=True)
class ConstantShiftSchedule:
    """An official pipeline's schedule with a fixed shift (HunyuanImage 2.1: 5 base, 4 distilled): diffusers'
    FlowMatchEulerDiscreteScheduler(shift=shift) given sigmas = linspace(1, 0, steps + 1)[:-1].
    Same interface as DynamicShiftSchedule; the image size does not matter here."""

    shift: float

    def sigmas(self, steps: int, image_tokens: int | None = None) -> torch.Tensor:
        """steps + 1 float32 sigmas ending in 0 (timesteps = sigmas[:-1] * 1000)."""
        return torch.cat([constant_shift(linear_sigmas_to_zero(steps), self.shift), torch.zeros(1)])


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
