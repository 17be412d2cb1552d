"""The single-stream block: one joint token sequence, attention and MLP in parallel from one input.

pre-norm (LayerNorm, no affine, eps 1e-6) -> modulate(shift, scale) -> `linear1` produces q, k, v and the
MLP input in one matmul (rows: q, k, v, then MLP) -> per-head q/k RMS norm (`norm.query_norm.scale`,
`norm.key_norm.scale`) -> RoPE over the joint sequence -> attention with an optional key mask;
`linear2` maps [attention, activation(MLP input)] back: x += gate * linear2(...).

Parameters a family chooses: `bias`, `mlp_kind` (a gated MLP doubles the MLP rows of linear1) and
`modulation` (False: `vec` is the (shift, scale, gate) tuple computed outside, as FLUX.2 does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attention import attention
from ..rope import RotaryTable, apply_rope
from .layers import QKNorm, clamp_fp16, mlp_activation, mlp_input_width, split_qkv
from .modulation import Modulation, gated_residual, modulate


class SingleStreamBlock(torch.nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, operations, mlp_ratio: float = 4.0, *,
                 bias: bool = True, mlp_kind: str = "gelu_tanh", modulation: bool = True, dtype=None, device=None):
        super().__init__()
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.backend = "sdpa"
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.mlp_in_width = mlp_input_width(mlp_kind, mlp_hidden)
        self.linear1 = operations.Linear(hidden_size, 3 * hidden_size + self.mlp_in_width, bias=bias,
                                         dtype=dtype, device=device)
        self.linear2 = operations.Linear(hidden_size + mlp_hidden, hidden_size, bias=bias, dtype=dtype, device=device)
        self.norm = QKNorm(hidden_size // num_heads, dtype=dtype, device=device)
        self.mlp_act = mlp_activation(mlp_kind)
        if modulation:
            self.modulation = Modulation(hidden_size, 3, operations, bias, dtype, device)
        else:
            self.modulation = None

    def forward(self, x: torch.Tensor, vec, pe: RotaryTable | None, key_mask: torch.Tensor | None = None):
        """x [B, L, D] the joint sequence; vec [B, D] (or the (shift, scale, gate) tuple);
        pe: rotary table over the joint sequence (None: no RoPE); key_mask: bool [B, L] or None."""
        shift, scale, gate = self.modulation(vec) if self.modulation is not None else vec
        normed = modulate(F.layer_norm(x, (self.hidden_size,), eps=1e-6), shift, scale)
        qkv, mlp = self.linear1(normed).split([3 * self.hidden_size, self.mlp_in_width], dim=-1)
        del normed
        # The activation and a copy of v now, so no view keeps linear1's wide output alive through attention
        # (the block's peak: measured 12% of one forward's memory at hidden 512; same result to the bit).
        mlp = self.mlp_act(mlp)
        q, k, v = split_qkv(qkv, self.num_heads)
        q, k = self.norm(q, k)
        v = v.contiguous()
        del qkv
        if pe is not None:
            q, k = apply_rope(q, pe), apply_rope(k, pe)
        out = attention(q, k, v, key_mask=key_mask, backend=self.backend)
        del q, k, v
        out = self.linear2(torch.cat((out, mlp), dim=-1))
        return clamp_fp16(gated_residual(x, gate, out))
