"""What MMDiTSampler asks a host to run: one sampling job, independent of the host."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

# What to change when the diffusion model's output overflows to NaN/Inf with finite weights.
OVERFLOW_REMEDY = ("If it ran in float16, choose bf16 or fp32 as the model loader's weight_dtype; otherwise "
                   "lower the CFG, or report the settings used.")


@dataclass
class SamplingRequest:
    latent: torch.Tensor  # raw VAE-space latent to start from (zeros for text-to-image)
    positive: list  # CONDITIONING: [[tensor [1, L, D], {"attention_mask": ...}], ...]
    negative: list
    seed: int
    sigmas: torch.Tensor  # steps + 1 values, descending, ending at 0 (or > 0 for a partial run)
    cfg: float
    sampler_name: str
    guidance: Callable | None = None  # a GuidanceRule (model_defs/spec.py); None = standard CFG
    noise_mask: torch.Tensor | None = None
    batch_index: list | None = None
    add_noise: bool = True


def initial_noise(latent: torch.Tensor, seed: int) -> torch.Tensor:
    """Noise drawn exactly as ComfyUI draws it (a CPU generator seeded with `seed`, the whole batch at
    once), which is also what the official diffusers pipelines draw with a CPU generator of that seed."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(latent.shape, dtype=torch.float32, generator=generator, device="cpu")
