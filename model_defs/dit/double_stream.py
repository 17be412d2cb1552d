"""The double-stream block: image and text tokens keep their own weights and meet in one joint attention.

Per stream: LayerNorm (no affine, eps 1e-6) -> modulate(shift1, scale1) -> fused qkv -> per-head q/k RMS
norm; the two streams' q/k/v are concatenated (image first, or text first: `image_first`), RoPE is applied
to the joint q/k with one table for the joint sequence, and one attention runs over it with an optional
key mask. Then per stream: x += gate1 * proj(attention), x += gate2 * mlp(modulate(norm(x), shift2, scale2)).

The layout (FLUX.1 / HunyuanVideo / HunyuanImage 2.1 names): img_mod.lin, img_attn.{qkv, norm.query_norm
.scale, norm.key_norm.scale, proj}, img_mlp.{0,2}, and the same with txt_. Parameters a family chooses:
`qkv_bias`, `bias` (all other Linears), `mlp_kind`, and `modulation`: with False the block owns no
modulation layers and takes the (image 6-tuple, text 6-tuple) of parameter vectors in place of `vec`
(FLUX.2 computes one modulation for all blocks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attention import attention
from ..rope import RotaryTable, apply_rope
from .layers import AttentionProjections, build_mlp, clamp_fp16
from .modulation import Modulation, gated_residual, modulate


class DoubleStreamBlock(torch.nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, operations, mlp_ratio: float = 4.0, *,
                 qkv_bias: bool = True, bias: bool = True, mlp_kind: str = "gelu_tanh", modulation: bool = True,
                 image_first: bool = True, dtype=None, device=None):
        super().__init__()
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.image_first = image_first
        self.backend = "sdpa"
        mlp_hidden = int(hidden_size * mlp_ratio)
        for stream in ("img", "txt"):
            if modulation:
                setattr(self, f"{stream}_mod", Modulation(hidden_size, 6, operations, bias, dtype, device))
            setattr(self, f"{stream}_attn", AttentionProjections(
                hidden_size, num_heads, operations, qkv_bias=qkv_bias, proj_bias=bias, dtype=dtype, device=device))
            setattr(self, f"{stream}_mlp", build_mlp(
                hidden_size, mlp_hidden, mlp_kind, operations, bias=bias, dtype=dtype, device=device))
        self.has_modulation = modulation

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.hidden_size,), eps=1e-6)

    def forward(self, img: torch.Tensor, txt: torch.Tensor, vec, pe: RotaryTable | None,
                key_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """img [B, N, D], txt [B, L, D]; vec [B, D] (or the two 6-tuples, see the module docstring);
        pe: rotary table for the joint sequence in this block's order (None: no RoPE);
        key_mask: bool [B, N + L] in the same order, True = may be attended to (None: all)."""
        if self.has_modulation:
            img_mod, txt_mod = self.img_mod(vec), self.txt_mod(vec)
        else:
            img_mod, txt_mod = vec
        img_shift1, img_scale1, img_gate1, img_shift2, img_scale2, img_gate2 = img_mod
        txt_shift1, txt_scale1, txt_gate1, txt_shift2, txt_scale2, txt_gate2 = txt_mod

        img_q, img_k, img_v = self.img_attn.qkv_heads(modulate(self._norm(img), img_shift1, img_scale1))
        txt_q, txt_k, txt_v = self.txt_attn.qkv_heads(modulate(self._norm(txt), txt_shift1, txt_scale1))

        def joint(img_part, txt_part):
            return torch.cat((img_part, txt_part) if self.image_first else (txt_part, img_part), dim=1)

        q, k, v = joint(img_q, txt_q), joint(img_k, txt_k), joint(img_v, txt_v)
        del img_q, img_k, img_v, txt_q, txt_k, txt_v
        if pe is not None:
            q, k = apply_rope(q, pe), apply_rope(k, pe)
        out = attention(q, k, v, key_mask=key_mask, backend=self.backend)
        del q, k, v

        n_img = img.shape[1]
        if self.image_first:
            img_attn, txt_attn = out[:, :n_img], out[:, n_img:]
        else:
            txt_attn, img_attn = out[:, : txt.shape[1]], out[:, txt.shape[1]:]

        img = gated_residual(img, img_gate1, self.img_attn.proj(img_attn))
        img = gated_residual(img, img_gate2, self.img_mlp(modulate(self._norm(img), img_shift2, img_scale2)))
        txt = gated_residual(txt, txt_gate1, self.txt_attn.proj(txt_attn))
        txt = gated_residual(txt, txt_gate2, self.txt_mlp(modulate(self._norm(txt), txt_shift2, txt_scale2)))
        return clamp_fp16(img), clamp_fp16(txt)
