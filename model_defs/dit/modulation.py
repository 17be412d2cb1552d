"""adaLN modulation: parameter vectors computed from the conditioning vector, applied to normed tokens.

A modulation layer maps silu(vec) [B, D] through one Linear to `chunks * D` numbers and splits them into
`chunks` vectors of [B, 1, D] (broadcast over tokens). The chunk order is the checkpoint's: FLUX-style
blocks store (shift, scale, gate) per sub-block, 6 for a double-stream stream, 3 for a single-stream block;
the final layer stores (shift, scale); the token refiner stores (attention gate, MLP gate).

`modulate` and `gated_residual` use fused multiply-adds (one kernel, no temporary for the product); in
float32 they differ from the unfused `x * (1 + scale) + shift` by at most one rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift."""
    return torch.addcmul(shift, x, 1 + scale)


def gated_residual(residual: torch.Tensor, gate: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """residual + gate * update."""
    return torch.addcmul(residual, gate, update)


def split_modulation(params: torch.Tensor, chunks: int) -> tuple[torch.Tensor, ...]:
    """[B, chunks * D] (or [B, 1, chunks * D]) -> `chunks` views of [B, 1, D]."""
    if params.ndim == 2:
        params = params[:, None, :]
    return params.chunk(chunks, dim=-1)


class Modulation(torch.nn.Module):
    """`lin`: silu(vec) -> `chunks` modulation vectors (FLUX's `img_mod`, `txt_mod`, `modulation`,
    FLUX.2's model-wide `double_stream_modulation_img` ...)."""

    def __init__(self, dim: int, chunks: int, operations, bias: bool = True, dtype=None, device=None):
        super().__init__()
        self.chunks = chunks
        self.lin = operations.Linear(dim, chunks * dim, bias=bias, dtype=dtype, device=device)

    def forward(self, vec: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return split_modulation(self.lin(F.silu(vec)), self.chunks)


def adaln_sequential(dim: int, chunks: int, operations, bias: bool = True, dtype=None, device=None):
    """nn.Sequential(SiLU, Linear(dim, chunks * dim)): the `adaLN_modulation` layout (its Linear is `.1`),
    used by the final layer and the token refiner. Split its output with `split_modulation`."""
    return torch.nn.Sequential(
        torch.nn.SiLU(), operations.Linear(dim, chunks * dim, bias=bias, dtype=dtype, device=device)
    )
