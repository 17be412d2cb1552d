"""Classifier-free guidance rules without state: plain CFG, and CFG with a per-token norm rescale.

Both are homogeneous of degree 1 in their inputs (scaling cond and uncond by the same factor scales the
result by it), so they give the same answer on velocities (flow models' output) and on noise units
(sigma * velocity, what ComfyUI's sampler_cfg_function receives).
"""

from __future__ import annotations

import math

import torch


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """uncond + scale * (cond - uncond), in that order of operations: bit-identical to diffusers'
    ClassifierFreeGuidance (use_original_formulation=False) and to the official HunyuanImage CFG branch."""
    return uncond + scale * (cond - uncond)


class ClassifierFreeGuidance:
    """Plain CFG with the per-run interface of the stateful guidance objects (see apg_mix.py), so a host
    drives either the same way. No state: one object may serve any number of runs.

    scale 1 (within float tolerance) means no guidance: the conditional prediction is returned and a host
    may skip the unconditional pass (needs_uncond), as diffusers' guider does.
    """

    kind = "cfg"

    def __init__(self, scale: float):
        self.scale = float(scale)

    def needs_uncond(self, step_index: int, num_steps: int) -> bool:
        return not math.isclose(self.scale, 1.0)

    def combine(self, cond: torch.Tensor, uncond: torch.Tensor | None, step_index: int = 0, num_steps: int = 1,
                sigma=None) -> torch.Tensor:
        """The guided prediction; step_index, num_steps and sigma are accepted for the common interface."""
        if uncond is None or not self.needs_uncond(step_index, num_steps):
            return cond
        return cfg_combine(cond, uncond, self.scale)


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
