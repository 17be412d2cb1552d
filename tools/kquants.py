"""Quantizers for the GGUF "K" types Q4_K and Q6_K (the gguf package reads them but cannot write them).

Both work on super-blocks of 256 values along each row. They choose scales from each sub-block's range
(no iterative search as llama.cpp's quantizer does), so errors are a little above llama.cpp's for the
same type but the encoding is the standard one: loaders/gguf_dequant.py and the gguf package decode it.

Q4_K, 144 bytes: fp16 d | fp16 dmin | 12 bytes of eight 6-bit scales and mins | 128 bytes of 4-bit q;
    x = d * scale_j * q - dmin * min_j over 8 sub-blocks of 32.
Q6_K, 210 bytes: 128 bytes of low 4 bits | 64 bytes of high 2 bits | 16 int8 scales | fp16 d;
    x = d * scale_j * (q - 32) over 16 sub-blocks of 16.
"""

from __future__ import annotations

import numpy as np

from ..loaders.gguf_dequant import QK_K


def _super_blocks(x: np.ndarray) -> np.ndarray:
    if x.shape[-1] % QK_K:
        raise ValueError(f"K-quant rows must be a multiple of {QK_K} values, got {x.shape[-1]}")
    return np.ascontiguousarray(x, dtype=np.float32).reshape(-1, QK_K)


def _fp16_bytes(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16).reshape(-1, 1).view(np.uint8)


def _safe_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros(np.broadcast_shapes(a.shape, b.shape), np.float32), where=b > 0)


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """float rows of a multiple of 256 -> uint8 [rows, row_blocks * 144]."""
    blocks = _super_blocks(x)
    n = blocks.shape[0]
    sub = blocks.reshape(n, 8, 32)
    low = np.minimum(sub.min(-1), 0.0)  # the offset is subtracted, so it must be >= 0 as stored
    scale = (sub.max(-1) - low) / 15.0
    minimum = -low
    d = (scale.max(-1) / 63.0).astype(np.float16)
    dmin = (minimum.max(-1) / 63.0).astype(np.float16)
    sc = np.clip(np.round(_safe_divide(scale, d.astype(np.float32)[:, None])), 0, 63).astype(np.uint8)
    mn = np.clip(np.round(_safe_divide(minimum, dmin.astype(np.float32)[:, None])), 0, 63).astype(np.uint8)
    step = d.astype(np.float32)[:, None] * sc
    offset = dmin.astype(np.float32)[:, None] * mn
    q = np.clip(np.round(_safe_divide(sub + offset[..., None], step[..., None])), 0, 15).astype(np.uint8)

    packed = np.empty((n, 12), np.uint8)  # the layout loaders/gguf_dequant.py::_k_scale_min reads
    packed[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    packed[:, 4:8] = mn[:, :4] | ((mn[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    pairs = q.reshape(n, 4, 2, 32)  # sub-blocks 2g and 2g+1 share 32 bytes: low and high nibbles
    qs = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(n, 128)
    out = np.concatenate([_fp16_bytes(d), _fp16_bytes(dmin), packed, qs], axis=1)
    return out.reshape(*x.shape[:-1], -1)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """float rows of a multiple of 256 -> uint8 [rows, row_blocks * 210]."""
    blocks = _super_blocks(x)
    n = blocks.shape[0]
    sub = blocks.reshape(n, 16, 16)
    scale = np.abs(sub).max(-1) / 31.0  # symmetric: q - 32 in [-31, 31]
    d = (scale.max(-1) / 127.0).astype(np.float16)
    sc = np.clip(np.round(_safe_divide(scale, d.astype(np.float32)[:, None])), 0, 127).astype(np.int8)
    step = d.astype(np.float32)[:, None] * sc
    q = (np.clip(np.round(_safe_divide(sub, step[..., None])), -32, 31) + 32).astype(np.uint8).reshape(n, 2, 128)

    low, high = q & 0x0F, q >> 4
    # low 4 bits: per half of 128 values, values 0-63 in the low nibbles of 64 bytes, 64-127 in the high
    ql = (low[:, :, :64] | (low[:, :, 64:] << 4)).reshape(n, 128)
    # high 2 bits: per half, 32 bytes; value s*32 + i sits at bits 2s of byte i
    parts = high.reshape(n, 2, 4, 32)
    qh = (parts[:, :, 0] | (parts[:, :, 1] << 2) | (parts[:, :, 2] << 4) | (parts[:, :, 3] << 6)).reshape(n, 64)
    out = np.concatenate([ql, qh, sc.view(np.uint8), _fp16_bytes(d)], axis=1)
    return out.reshape(*x.shape[:-1], -1)


QUANTIZERS = {"Q4_K": quantize_q4_k, "Q6_K": quantize_q6_k}
