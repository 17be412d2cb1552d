"""Layers the double- and single-stream blocks share: q/k RMS norm, fused-qkv projections, MLP kinds.

MLP kinds (the choice a family makes, not a Hunyuan constant):
- "gelu_tanh": Linear(dim, hidden) -> GELU(tanh) -> Linear(hidden, dim)  (HunyuanImage/Video, FLUX.1)
- "silu_gated": Linear(dim, 2 * hidden) -> silu(first half) * second half -> Linear(hidden, dim)  (FLUX.2)
The Sequential layout puts the two Linears at `.0` and `.2`, the checkpoints' names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops import cast_like

MLP_KINDS = ("gelu_tanh", "silu_gated")


class ScaledRMSNorm(torch.nn.Module):
    """RMS norm over the last axis whose weight is named `scale` (FLUX's QKNorm layout), eps 1e-6."""

    def __init__(self, dim: int, eps: float = 1e-6, dtype=None, device=None):
        super().__init__()
        self.eps = eps
        self.scale = torch.nn.Parameter(torch.ones(dim, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.scale.shape, cast_like(self.scale, x), self.eps)


class QKNorm(torch.nn.Module):
    """Per-head RMS norms of queries and keys (`query_norm.scale`, `key_norm.scale`)."""

    def __init__(self, head_dim: int, dtype=None, device=None):
        super().__init__()
        self.query_norm = ScaledRMSNorm(head_dim, dtype=dtype, device=device)
        self.key_norm = ScaledRMSNorm(head_dim, dtype=dtype, device=device)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.query_norm(q), self.key_norm(k)


class AttentionProjections(torch.nn.Module):
    """One stream's `qkv` (fused), `norm` (q/k RMS) and output `proj`. Attention itself runs jointly
    in the block, so this module only holds the weights and splits heads."""

    def __init__(self, dim: int, heads: int, operations, qkv_bias: bool = True, proj_bias: bool = True,
                 dtype=None, device=None):
        super().__init__()
        self.heads = heads
        self.qkv = operations.Linear(dim, 3 * dim, bias=qkv_bias, dtype=dtype, device=device)
        self.norm = QKNorm(dim // heads, dtype=dtype, device=device)
        self.proj = operations.Linear(dim, dim, bias=proj_bias, dtype=dtype, device=device)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, L, dim] -> normed q, normed k, v, each [B, L, heads, head_dim]."""
        q, k, v = split_qkv(self.qkv(x), self.heads)
        q, k = self.norm(q, k)
        return q, k, v


def split_qkv(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, L, 3 * heads * head_dim] (q rows, then k, then v) -> three [B, L, heads, head_dim] views."""
    return qkv.unflatten(-1, (3, heads, -1)).unbind(dim=2)


class SiLUGate(torch.nn.Module):
    """silu(a) * b for x = [a, b] split in halves along the last axis."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=-1)
        return F.silu(a) * b


def mlp_activation(kind: str) -> torch.nn.Module:
    if kind == "gelu_tanh":
        return torch.nn.GELU(approximate="tanh")
    if kind == "silu_gated":
        return SiLUGate()
    raise ValueError(f"unknown MLP kind {kind!r}; expected one of {', '.join(MLP_KINDS)}")


def mlp_input_width(kind: str, hidden: int) -> int:
    """Width of the MLP's first Linear: gated MLPs project to both halves at once."""
    return 2 * hidden if kind == "silu_gated" else hidden


def build_mlp(dim: int, hidden: int, kind: str, operations, bias: bool = True, dtype=None, device=None):
    """Sequential(Linear `.0`, activation `.1`, Linear `.2`) of the given kind."""
    return torch.nn.Sequential(
        operations.Linear(dim, mlp_input_width(kind, hidden), bias=bias, dtype=dtype, device=device),
        mlp_activation(kind),
        operations.Linear(hidden, dim, bias=bias, dtype=dtype, device=device),
    )


def clamp_fp16(x: torch.Tensor) -> torch.Tensor:
    """fp16 activations overflow in deep blocks: keep them finite (as ComfyUI does); other dtypes pass."""
    if x.dtype == torch.float16:
        return torch.nan_to_num(x, nan=0.0, posinf=65504, neginf=-65504)
    return x
