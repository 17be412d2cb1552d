"""Timestep embeddings shared by the diffusion transformers."""

from __future__ import annotations

import math

import torch


def sinusoidal_embedding(
    timesteps: torch.Tensor,
    dim: int,
    flip_sin_to_cos: bool = True,
    downscale_freq_shift: float = 0.0,
    scale: float = 1.0,
    max_period: float = 10000.0,
) -> torch.Tensor:
    """[N] timesteps -> [N, dim] float32 sinusoidal features (the DDPM / diffusers formula).

    Frequencies are exp(-log(max_period) * i / (half - downscale_freq_shift)); the angle is
    scale * t * frequency. Output is [sin, cos], or [cos, sin] when flip_sin_to_cos.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - downscale_freq_shift))
    angles = scale * (timesteps[:, None].float() * freqs[None, :])
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class TimestepMLP(torch.nn.Module):
    """linear_1 -> SiLU -> linear_2: the MLP that lifts sinusoidal features to the model width."""

    def __init__(self, in_dim: int, dim: int, operations, dtype=None, device=None):
        super().__init__()
        self.linear_1 = operations.Linear(in_dim, dim, bias=True, dtype=dtype, device=device)
        self.linear_2 = operations.Linear(dim, dim, bias=True, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(torch.nn.functional.silu(self.linear_1(x)))


class MLPEmbedder(torch.nn.Module):
    """in_layer -> SiLU -> out_layer: the same lift under the FLUX / HunyuanVideo names (`time_in`,
    `guidance_in`, `time_r_in`, the token refiner's `t_embedder` / `c_embedder`). FLUX.2 has no biases."""

    def __init__(self, in_dim: int, dim: int, operations, bias: bool = True, dtype=None, device=None):
        super().__init__()
        self.in_layer = operations.Linear(in_dim, dim, bias=bias, dtype=dtype, device=device)
        self.out_layer = operations.Linear(dim, dim, bias=bias, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(torch.nn.functional.silu(self.in_layer(x)))
