"""Rotary position embeddings over several axes (2-D, 3-D and 4-D RoPE, and Qwen-Image's MSRoPE).

A token's position is a vector of integers, one per axis (frame, height, width, ...). Each axis owns a slice
of the head dimension; within it, consecutive channel pairs (2i, 2i+1) are rotated by the angle
position * theta^(-2i / axis_dim). The layouts of the networks differ only in how positions are assigned,
which each family module does; the rotation itself is shared here.
"""

from __future__ import annotations

import torch


def axis_frequencies(axis_dim: int, theta: float, device=None) -> torch.Tensor:
    """The axis_dim/2 inverse frequencies of one axis, float32."""
    exponents = torch.arange(0, axis_dim, 2, dtype=torch.float32, device=device) / axis_dim
    return 1.0 / torch.pow(torch.tensor(theta, dtype=torch.float32, device=device), exponents)


def rope_angles(positions: torch.Tensor, axes_dims: tuple[int, ...] | list[int], theta: float) -> torch.Tensor:
    """positions [..., n_axes] (integers) -> angles [..., head_dim / 2], float32.

    The angle of each channel pair is computed as float32(position) * float32(frequency), exactly as the
    reference implementations tabulate it, so the rotation matches theirs bit for bit in float32.
    """
    if positions.shape[-1] != len(axes_dims):
        raise ValueError(f"positions have {positions.shape[-1]} axes, RoPE has {len(axes_dims)}")
    parts = []
    for axis, axis_dim in enumerate(axes_dims):
        freqs = axis_frequencies(axis_dim, theta, device=positions.device)
        parts.append(positions[..., axis].to(torch.float32)[..., None] * freqs)
    return torch.cat(parts, dim=-1)


class RotaryTable:
    """cos/sin of the rotation angles for one sequence, ready to apply to queries and keys."""

    def __init__(self, angles: torch.Tensor):
        # angles: [tokens, head_dim/2] or [batch, tokens, head_dim/2]
        self.cos = torch.cos(angles)
        self.sin = torch.sin(angles)

    def slice(self, start: int, end: int) -> "RotaryTable":
        table = RotaryTable.__new__(RotaryTable)
        table.cos = self.cos[..., start:end, :]
        table.sin = self.sin[..., start:end, :]
        return table


def apply_rope(x: torch.Tensor, table: RotaryTable) -> torch.Tensor:
    """Rotate consecutive channel pairs of x [batch, tokens, heads, head_dim] (computed in float32)."""
    cos = table.cos
    sin = table.sin
    if cos.ndim == 2:  # [tokens, pairs] -> broadcast over batch and heads
        cos = cos[None, :, None, :]
        sin = sin[None, :, None, :]
    else:  # [batch, tokens, pairs]
        cos = cos[:, :, None, :]
        sin = sin[:, :, None, :]
    pairs = x.float().unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)
