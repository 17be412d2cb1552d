"""GGUF dequantization in torch, on whatever device the bytes are (so a layer dequantizes on the GPU).

Every function takes the raw bytes of a tensor viewed as blocks, [n_blocks, type_size] uint8, and returns
[n_blocks, block_size] float32 computed with the same operations, in the same order, as the gguf
package's numpy reference (gguf/quants.py), so results are bit-identical to it. Block layouts are
described at each function; "fp16" means 2 little-endian bytes read as IEEE half, "QK_K" is 256.
"""

from __future__ import annotations

import functools
import math

import torch

QK_K = 256
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = 0, 1, 2, 3, 6, 7, 8
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K = 10, 11, 12, 13, 14
IQ4_NL, IQ4_XS, BF16 = 20, 23, 30
NAMES = {F32: "F32", F16: "F16", BF16: "BF16", Q4_0: "Q4_0", Q4_1: "Q4_1", Q5_0: "Q5_0", Q5_1: "Q5_1",
         Q8_0: "Q8_0", Q2_K: "Q2_K", Q3_K: "Q3_K", Q4_K: "Q4_K", Q5_K: "Q5_K", Q6_K: "Q6_K",
         IQ4_NL: "IQ4_NL", IQ4_XS: "IQ4_XS"}
# (values per block, bytes per block)
BLOCKS = {F32: (1, 4), F16: (1, 2), BF16: (1, 2), Q4_0: (32, 18), Q4_1: (32, 20), Q5_0: (32, 22),
          Q5_1: (32, 24), Q8_0: (32, 34), Q2_K: (256, 84), Q3_K: (256, 110), Q4_K: (256, 144),
          Q5_K: (256, 176), Q6_K: (256, 210), IQ4_NL: (32, 18), IQ4_XS: (256, 136)}
SUPPORTED_TYPES = set(BLOCKS)
PLAIN_DTYPES = {F32: torch.float32, F16: torch.float16, BF16: torch.bfloat16}  # stored as plain values
# Byte offsets of the fp16 scale fields inside one block of each quantized type (all other bytes are
# packed integers, for which any value is legal).
FP16_SCALE_OFFSETS = {Q4_0: (0,), Q4_1: (0, 2), Q5_0: (0,), Q5_1: (0, 2), Q8_0: (0,), IQ4_NL: (0,),
                      Q2_K: (80, 82), Q3_K: (108,), Q4_K: (0, 2), Q5_K: (0, 2), Q6_K: (208,), IQ4_XS: (0,)}
IQ4_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)


def block_layout(qtype: int) -> tuple[int, int]:
    return BLOCKS[int(qtype)]


def quantized_nbytes(qtype: int, shape) -> int:
    values, size = block_layout(qtype)
    count = math.prod(shape)
    if count % values:
        raise ValueError(f"{count} values do not fill whole {NAMES[int(qtype)]} blocks of {values}")
    return count // values * size


# --- helpers ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _constant(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small lookup table or shift list on `device`, made once: layers dequantize on every step, and a
    fresh host-to-device copy per layer per step would cost a synchronisation each time."""
    return torch.tensor(values, dtype=dtype, device=device)


def _fp16(b: torch.Tensor) -> torch.Tensor:
    """[n, 2] bytes -> [n, 1] float32."""
    return b.contiguous().view(torch.float16).to(torch.float32)


def _nibbles(qs: torch.Tensor, n: int, width: int) -> torch.Tensor:
    """Bytes [n, k*width] -> [n, k, 2, width]: low nibbles first, then high nibbles, per group of `width`."""
    q = qs.reshape(n, -1, 1, width)
    return torch.cat([q & 0x0F, q >> 4], dim=2)


def _bits(b: torch.Tensor) -> torch.Tensor:
    """Bytes [n, k] -> their 8*k bits as [n, 8*k] uint8, little-endian (bit i of byte j at column 8*j+i)."""
    shifts = torch.arange(8, dtype=torch.uint8, device=b.device)
    return ((b.unsqueeze(-1) >> shifts) & 1).reshape(b.shape[0], -1)


def _shift(q: torch.Tensor, shifts) -> torch.Tensor:
    return q >> _constant(tuple(shifts), q.dtype, q.device).view(1, 1, -1, 1)


# --- 32-value formats ------------------------------------------------------------------------------------
def _q4_0(b):  # fp16 d | 16 bytes of 4-bit q (low nibbles: values 0-15, high: 16-31); x = d * (q - 8)
    n = b.shape[0]
    d = _fp16(b[:, :2])
    q = _nibbles(b[:, 2:], n, 16).reshape(n, -1).to(torch.int8) - 8
    return d * q.to(torch.float32)


def _q4_1(b):  # fp16 d | fp16 m | 16 bytes of 4-bit q; x = d * q + m
    n = b.shape[0]
    d, m = _fp16(b[:, :2]), _fp16(b[:, 2:4])
    q = _nibbles(b[:, 4:], n, 16).reshape(n, -1).to(torch.float32)
    return (d * q) + m


def _q5_0(b):  # fp16 d | 4 bytes: 5th bit of each value | 16 bytes of low 4 bits; x = d * (q - 16)
    n = b.shape[0]
    d = _fp16(b[:, :2])
    high = _bits(b[:, 2:6])
    low = _nibbles(b[:, 6:], n, 16).reshape(n, -1)
    q = (low | (high << 4)).to(torch.int8) - 16
    return d * q.to(torch.float32)


def _q5_1(b):  # fp16 d | fp16 m | 4 bytes of 5th bits | 16 bytes of low 4 bits; x = d * q + m
    n = b.shape[0]
    d, m = _fp16(b[:, :2]), _fp16(b[:, 2:4])
    high = _bits(b[:, 4:8])
    low = _nibbles(b[:, 8:], n, 16).reshape(n, -1)
    return (d * (low | (high << 4)).to(torch.float32)) + m


def _q8_0(b):  # fp16 d | 32 int8 q; x = q * d
    return b[:, 2:].contiguous().view(torch.int8).to(torch.float32) * _fp16(b[:, :2])


def _iq4_nl(b):  # fp16 d | 16 bytes of 4-bit indices into a fixed non-linear table; x = d * table[q]
    n = b.shape[0]
    d = _fp16(b[:, :2])
    q = _nibbles(b[:, 2:], n, 16).reshape(n, -1).to(torch.int64)
    table = _constant(IQ4_VALUES, torch.int8, b.device)
    return d * table[q].to(torch.float32)


# --- 256-value "K" formats (super-blocks of 16 or 8 sub-blocks with their own scales) --------------------
def _q2_k(b):
    # 16 bytes: 4-bit scale | 4-bit min per 16-value sub-block | 64 bytes of 2-bit q | fp16 d | fp16 dmin
    # x = d * scale * q - dmin * min
    n = b.shape[0]
    scales, qs = b[:, :16], b[:, 16:80]
    d, dmin = _fp16(b[:, 80:82]), _fp16(b[:, 82:84])
    dl = (d * (scales & 0xF).to(torch.float32)).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).to(torch.float32)).reshape(n, 16, 1)
    q = _shift(qs.reshape(n, -1, 1, 32), [0, 2, 4, 6]) & 3
    q = q.reshape(n, 16, 16).to(torch.float32)
    return (dl * q - ml).reshape(n, -1)


def _q3_k(b):
    # 32 bytes: 3rd (high) bit of each value, inverted | 64 bytes of low 2 bits | 12 bytes of 6-bit
    # signed scales (low 4 bits in bytes 0-7, high 2 bits packed in bytes 8-11) | fp16 d
    # x = d * (scale - 32) * (low - 4 * (1 - high))
    n = b.shape[0]
    hmask, qs, packed, d = b[:, :32], b[:, 32:96], b[:, 96:108], _fp16(b[:, 108:110])
    low = packed[:, :8].reshape(n, 1, 8) >> _constant((0, 4), torch.uint8, b.device).view(1, 2, 1)
    high = packed[:, 8:].reshape(n, 1, 4) >> _constant((0, 2, 4, 6), torch.uint8, b.device).view(1, 4, 1)
    scales = (low.reshape(n, 16) & 0x0F) | ((high.reshape(n, 16) & 0x03) << 4)
    scales = (scales.to(torch.int8) - 32).to(torch.float32)
    dl = (d * scales).reshape(n, 16, 1)
    ql = _shift(qs.reshape(n, -1, 1, 32), [0, 2, 4, 6]).reshape(n, 16, 16) & 3
    qh = _shift(hmask.reshape(n, -1, 1, 32), list(range(8))).reshape(n, 16, 16) & 1
    qh = qh ^ 1  # a set high bit means no offset
    q = (ql.to(torch.int8) - (qh << 2).to(torch.int8)).to(torch.float32)
    return (dl * q).reshape(n, QK_K)


def _k_scale_min(packed: torch.Tensor):
    """Q4_K/Q5_K: 12 bytes holding eight 6-bit scales and eight 6-bit mins.
    Bytes 0-3: scales 0-3 (low 6 bits); 4-7: mins 0-3 (low 6 bits); 8-11: low nibble = low 4 bits of
    scales 4-7, high nibble = low 4 bits of mins 4-7; the top 2 bits of bytes 0-7 are the top bits of
    scales/mins 4-7."""
    n = packed.shape[0]
    d, m, md = packed.reshape(n, 3, 4).unbind(1)
    scale = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    minimum = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return scale, minimum


def _q4_k(b):  # fp16 d | fp16 dmin | 12 bytes of scales/mins | 128 bytes of 4-bit q (per 32: low then high)
    n = b.shape[0]
    d, dmin = _fp16(b[:, :2]), _fp16(b[:, 2:4])
    sc, mn = _k_scale_min(b[:, 4:16])
    d = (d * sc.to(torch.float32)).reshape(n, -1, 1)
    dm = (dmin * mn.to(torch.float32)).reshape(n, -1, 1)
    q = _nibbles(b[:, 16:], n, 32).reshape(n, -1, 32).to(torch.float32)
    return (d * q - dm).reshape(n, QK_K)


def _q5_k(b):  # as Q4_K, plus 32 bytes holding each value's 5th bit before the 4-bit values
    n = b.shape[0]
    d, dmin = _fp16(b[:, :2]), _fp16(b[:, 2:4])
    sc, mn = _k_scale_min(b[:, 4:16])
    d = (d * sc.to(torch.float32)).reshape(n, -1, 1)
    dm = (dmin * mn.to(torch.float32)).reshape(n, -1, 1)
    ql = _nibbles(b[:, 48:], n, 32).reshape(n, -1, 32)
    qh = (_shift(b[:, 16:48].reshape(n, -1, 1, 32), list(range(8))) & 1).reshape(n, -1, 32)
    q = (ql | (qh << 4)).to(torch.float32)
    return (d * q - dm).reshape(n, QK_K)


def _q6_k(b):
    # 128 bytes of low 4 bits | 64 bytes of high 2 bits | 16 int8 scales | fp16 d; x = d * scale * (q - 32)
    n = b.shape[0]
    ql, qh, scales = b[:, :128], b[:, 128:192], b[:, 192:208]
    d = _fp16(b[:, 208:210])
    d = (d * scales.contiguous().view(torch.int8).to(torch.float32)).reshape(n, 16, 1)
    low = _nibbles(ql, n, 64).reshape(n, -1, 32)
    high = (_shift(qh.reshape(n, -1, 1, 32), [0, 2, 4, 6]) & 3).reshape(n, -1, 32)
    q = (low | (high << 4)).to(torch.int8) - 32
    return (d * q.reshape(n, 16, -1).to(torch.float32)).reshape(n, QK_K)


def _iq4_xs(b):
    # fp16 d | 2 bytes: high 2 bits of eight 6-bit scales | 4 bytes: their low 4 bits | 128 bytes of
    # 4-bit table indices (per 32 values: 16 bytes, low nibbles then high); x = d * (scale - 32) * table[q]
    n = b.shape[0]
    d = _fp16(b[:, :2])
    scales_h = b[:, 2:4].to(torch.int64)
    scales_h = scales_h[:, :1] | (scales_h[:, 1:2] << 8)
    scales_h = (scales_h >> torch.arange(0, 16, 2, device=b.device)) & 3
    scales_l = b[:, 4:8].reshape(n, -1, 1) >> _constant((0, 4), torch.uint8, b.device).view(1, 1, 2)
    scales_l = scales_l.reshape(n, -1) & 0x0F
    scales = (scales_l | (scales_h.to(torch.uint8) << 4)).to(torch.int8) - 32
    dl = (d * scales.to(torch.float32)).reshape(n, -1, 1)
    q = _nibbles(b[:, 8:], n, 16).reshape(n, -1, 32).to(torch.int64)
    table = _constant(IQ4_VALUES, torch.int8, b.device)
    return (dl * table[q].to(torch.float32)).reshape(n, -1)


KERNELS = {Q4_0: _q4_0, Q4_1: _q4_1, Q5_0: _q5_0, Q5_1: _q5_1, Q8_0: _q8_0, Q2_K: _q2_k, Q3_K: _q3_k,
           Q4_K: _q4_k, Q5_K: _q5_k, Q6_K: _q6_k, IQ4_NL: _iq4_nl, IQ4_XS: _iq4_xs}


def dequantize(data: torch.Tensor, qtype, shape, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Raw GGUF bytes (uint8, any shape) -> a `dtype` tensor of `shape`, computed on data's device."""
    qtype = int(qtype)
    if qtype not in SUPPORTED_TYPES:
        raise ValueError(f"GGUF type {qtype} is not supported (supported: {', '.join(NAMES.values())})")
    shape = tuple(int(s) for s in shape)
    expected = quantized_nbytes(qtype, shape)
    raw = data.reshape(-1)
    if raw.dtype != torch.uint8:
        raw = raw.view(torch.uint8)
    if raw.numel() != expected:
        raise ValueError(f"{NAMES[qtype]} tensor of shape {list(shape)} needs {expected} bytes, got {raw.numel()}")
    if qtype in PLAIN_DTYPES:
        return raw.view(PLAIN_DTYPES[qtype]).reshape(shape).to(dtype)
    _, size = BLOCKS[qtype]
    return KERNELS[qtype](raw.reshape(-1, size)).reshape(shape).to(dtype)
