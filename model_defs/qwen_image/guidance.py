"""Qwen-Image's classifier-free guidance: the official pipeline's "true CFG" with per-token norm rescale."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..guidance.cfg import ClassifierFreeGuidance, norm_rescaled_cfg
from .family import PATCH_SIZE
from .transformer import pack_latent, unpack_tokens


def true_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Combine conditional and unconditional predictions ([B, C, H, W] or [B, C, 1, H, W] latents).

    The rescale norm runs over each 2x2 patch token (C * 4 values), the unit the official pipeline works
    in; odd latent sizes are zero-padded to whole patches for the norm and cropped back.
    """
    five_d = cond.ndim == 5
    if five_d:
        cond, uncond = cond[:, :, 0], uncond[:, :, 0]
    height, width = cond.shape[-2:]
    pad = (0, (-width) % PATCH_SIZE, 0, (-height) % PATCH_SIZE)
    padded_h, padded_w = height + pad[3], width + pad[1]

    def to_tokens(t):
        return pack_latent(F.pad(t, pad), PATCH_SIZE)

    def from_tokens(tokens):
        return unpack_tokens(tokens, padded_h, padded_w, PATCH_SIZE)[:, :, :height, :width]

    out = norm_rescaled_cfg(cond, uncond, scale, to_tokens, from_tokens)
    return out.unsqueeze(2) if five_d else out


class TrueCFG(ClassifierFreeGuidance):
    """true_cfg with the per-run interface of model_defs/guidance (stateless: the same rule every step)."""

    kind = "true_cfg"

    def combine(self, cond, uncond, step_index=0, num_steps=1, sigma=None):
        if uncond is None or not self.needs_uncond(step_index, num_steps):
            return cond
        return true_cfg(cond, uncond, self.scale)


def true_cfg_rule(scale: float, positive_extras=None) -> TrueCFG:
    """The family's guidance rule (model_defs/spec.py GuidanceRule)."""
    return TrueCFG(scale)
