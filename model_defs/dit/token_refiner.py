"""HunyuanVideo / HunyuanImage's text-token refiner (`txt_in`): a few self-attention blocks over the
text-encoder states, conditioned on the timestep and on the mean of the (real) text tokens.

    c = t_embedder(sinusoidal(timestep)) + c_embedder(masked mean of the text states)
    x = input_embedder(text)
    per block: x += gate_attn * proj(attention(qkv(norm1(x))))     (no RoPE, no q/k norm)
               x += gate_mlp * mlp(norm2(x))                        (Linear -> SiLU -> Linear)
               with (gate_attn, gate_mlp) = adaLN_modulation(c)

Masking follows diffusers' HunyuanImageTransformer2DModel (the reference for this model): the pooled
mean is taken over real tokens only; in attention a real token attends to the real tokens and to token 0
(diffusers forces key 0 visible so that no row is empty), and a padded token attends to token 0 alone,
so its attention output is token 0's value. That is done here with a key mask and a select, not an
[L, L] mask. It matters only when token 0 is itself padding (text padded at the front): token 0 then
carries a state into the second block that real tokens see. ComfyUI instead averages over all tokens,
padding included, and masks differently; diffusers is followed here.
"""

from __future__ import annotations

import torch

from ..attention import attention
from ..embeddings import MLPEmbedder, sinusoidal_embedding
from .layers import split_qkv
from .modulation import adaln_sequential, gated_residual, split_modulation


class RefinerAttention(torch.nn.Module):
    """`self_attn.qkv` (fused, biased) and `self_attn.proj`."""

    def __init__(self, dim: int, operations, dtype=None, device=None):
        super().__init__()
        self.qkv = operations.Linear(dim, 3 * dim, bias=True, dtype=dtype, device=device)
        self.proj = operations.Linear(dim, dim, bias=True, dtype=dtype, device=device)


class TokenRefinerBlock(torch.nn.Module):
    def __init__(self, dim: int, heads: int, operations, mlp_ratio: float = 4.0, dtype=None, device=None):
        super().__init__()
        self.heads = heads
        self.backend = "sdpa"
        hidden = int(dim * mlp_ratio)
        self.adaLN_modulation = adaln_sequential(dim, 2, operations, dtype=dtype, device=device)
        self.norm1 = operations.LayerNorm(dim, elementwise_affine=True, eps=1e-6, dtype=dtype, device=device)
        self.self_attn = RefinerAttention(dim, operations, dtype, device)
        self.norm2 = operations.LayerNorm(dim, elementwise_affine=True, eps=1e-6, dtype=dtype, device=device)
        self.mlp = torch.nn.Sequential(
            operations.Linear(dim, hidden, bias=True, dtype=dtype, device=device),
            torch.nn.SiLU(),
            operations.Linear(hidden, dim, bias=True, dtype=dtype, device=device),
        )

    def forward(self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None,
                key_mask: torch.Tensor | None) -> torch.Tensor:
        """mask: bool [B, L], True = real token, or None (all real); key_mask: refiner_key_mask(mask)."""
        gate_attn, gate_mlp = split_modulation(self.adaLN_modulation(c), 2)
        q, k, v = split_qkv(self.self_attn.qkv(self.norm1(x)), self.heads)
        out = attention(q, k, v, key_mask=key_mask, backend=self.backend)
        if mask is not None:  # padded tokens attend to token 0 alone: their output is its value
            out = torch.where(mask[..., None], out, v[:, :1].flatten(2))
        x = gated_residual(x, gate_attn, self.self_attn.proj(out))
        return gated_residual(x, gate_mlp, self.mlp(self.norm2(x)))


class IndividualTokenRefiner(torch.nn.Module):
    def __init__(self, dim: int, heads: int, depth: int, operations, dtype=None, device=None):
        super().__init__()
        self.blocks = torch.nn.ModuleList(
            [TokenRefinerBlock(dim, heads, operations, dtype=dtype, device=device) for _ in range(depth)]
        )

    def forward(self, x, c, mask):
        key_mask = refiner_key_mask(mask)
        for block in self.blocks:
            x = block(x, c, mask, key_mask)
        return x


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the token axis of x [B, L, D], over real tokens only when a bool mask [B, L] is given;
    computed in float32, returned in x's dtype. A sample with no real token gives zeros (diffusers: NaN)."""
    if mask is None:
        return x.float().mean(dim=1).to(x.dtype)
    weights = mask.to(torch.float32)[..., None]
    total = (x.float() * weights).sum(dim=1)
    return (total / weights.sum(dim=1).clamp(min=1.0)).to(x.dtype)


def refiner_key_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """The refiner's key mask: the text mask with token 0 always visible (see the module docstring)."""
    if mask is None:
        return None
    keys = mask.clone()
    keys[:, 0] = True
    return keys


class TokenRefiner(torch.nn.Module):
    """`txt_in`: input_embedder, t_embedder, c_embedder, individual_token_refiner.blocks.N."""

    def __init__(self, text_dim: int, dim: int, heads: int, depth: int, operations, dtype=None, device=None):
        super().__init__()
        self.input_embedder = operations.Linear(text_dim, dim, bias=True, dtype=dtype, device=device)
        self.t_embedder = MLPEmbedder(256, dim, operations, dtype=dtype, device=device)
        self.c_embedder = MLPEmbedder(text_dim, dim, operations, dtype=dtype, device=device)
        self.individual_token_refiner = IndividualTokenRefiner(dim, heads, depth, operations, dtype, device)

    def set_attention_backend(self, backend: str) -> None:
        for block in self.individual_token_refiner.blocks:
            block.backend = backend

    def forward(self, text: torch.Tensor, timestep: torch.Tensor, mask: torch.Tensor | None = None):
        """text [B, L, text_dim] in the compute dtype; timestep [B] in timestep units (0..1000);
        mask: bool [B, L] (True = real token) or None when every token is real. Returns [B, L, dim]."""
        features = sinusoidal_embedding(timestep, 256, flip_sin_to_cos=True, downscale_freq_shift=0)
        c = self.t_embedder(features.to(text.dtype)) + self.c_embedder(masked_mean(text, mask))
        x = self.input_embedder(text)
        return self.individual_token_refiner(x, c, mask)
