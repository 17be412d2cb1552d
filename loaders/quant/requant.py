"""Re-quantize a patched (e.g. LoRA-merged) weight to 8 bits, in torch, on its device.

Used when a LoRA is merged into a quantized layer: the merged weight is kept at 8 bits rather than at
full precision (memory stays near the quantized model's) or re-merged on every forward (time).
FP8 layers get FP8 with one scale per output row; GGUF layers get Q8_0 (blocks of 32 values sharing an
fp16 scale), the format the gguf package's reference code dequantizes bit for bit like ours.
"""

from __future__ import annotations

import torch

from ..gguf_dequant import BLOCKS, Q8_0
from .tensor import FP8_SCALED, GGUF, QuantizedTensor

Q8_0_BLOCK, _ = BLOCKS[Q8_0]


def fp8_with_scale(weight: torch.Tensor, dtype=torch.float8_e4m3fn, per_row: bool = False):
    """(fp8 data, float32 scale) with value = data * scale: the largest magnitude (of the tensor, or of
    each output row) maps to the format's largest value. An all-zero tensor or row gets scale 1."""
    w = weight.float()
    rows = w.reshape(w.shape[0], -1) if per_row else w.reshape(1, -1)
    scale = rows.abs().amax(dim=1) / torch.finfo(dtype).max
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    data = (rows / scale[:, None]).to(dtype).reshape(w.shape)
    return data, scale if per_row else scale.reshape(())


def quantize_fp8_rows(weight: torch.Tensor, dtype=torch.float8_e4m3fn) -> QuantizedTensor:
    """FP8 with one float32 scale per output row."""
    data, scale = fp8_with_scale(weight, dtype, per_row=True)
    return QuantizedTensor(data, FP8_SCALED, weight.shape, scale=scale)


def quantize_q8_0(weight: torch.Tensor) -> QuantizedTensor:
    """GGUF Q8_0 bytes for a weight whose last dimension is a multiple of 32, computed as the gguf
    package's reference quantizer does (scale = block max / 127 in float32, values rounded half away
    from zero, scale stored as float16)."""
    w = weight.float()
    if w.shape[-1] % Q8_0_BLOCK:
        raise ValueError(f"Q8_0 needs the last dimension to be a multiple of {Q8_0_BLOCK}, got {tuple(w.shape)}")
    blocks = w.reshape(-1, Q8_0_BLOCK)
    d = blocks.abs().amax(dim=1, keepdim=True) / 127
    inverse = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    scaled = blocks * inverse
    q = (scaled.sign() * torch.floor(scaled.abs() + 0.5)).to(torch.int8)
    packed = torch.cat([d.to(torch.float16).view(torch.uint8), q.view(torch.uint8)], dim=1)
    return QuantizedTensor(packed.reshape(-1), GGUF, w.shape, qtype=Q8_0)


def requantize_like(original: QuantizedTensor, weight: torch.Tensor) -> QuantizedTensor:
    """`weight` stored at 8 bits in the family of `original`'s format, on `weight`'s device."""
    if original.qformat == FP8_SCALED:
        return quantize_fp8_rows(weight, original.dtype)
    if weight.shape[-1] % Q8_0_BLOCK == 0:
        return quantize_q8_0(weight)
    return quantize_fp8_rows(weight)  # odd widths (rare): FP8 rows still beat keeping full precision
