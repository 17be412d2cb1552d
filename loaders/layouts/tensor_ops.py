"""The four tensor operations a key layout needs, for plain tensors and for QuantizedTensor (FP8, GGUF).

All work along dim 0 (output rows of a weight, entries of a bias), which is how fused projections are laid
out (q|k|v, q|k|v|mlp, shift|scale). Quantized data stays quantized wherever that is exact:

* `rows(t, a, b)`: t[a:b]. Plain: a view. FP8: a view of the 1-byte data; a per-tensor scale is kept, a
  per-row scale is sliced with the rows. GGUF: the stored bytes are row-major blocks, so a dim-0 slice is
  a byte range whenever both ends fall on a block boundary (always for weights: the reader checks that
  each row fills whole blocks); otherwise (a 1-D quantized tensor cut mid-block) that one tensor is
  dequantized to float32.
* `cat_rows(parts)`: torch.cat(parts, 0), a copy. FP8 parts of one dtype stay FP8: equal per-tensor scales
  stay one scalar, different ones (the official split q/k/v each have their own) become one float32 scale
  per output row, which dequantizes exactly as each part did (value = fp8 * its part's scale; 4 bytes per
  row, 43 kB for a 3584-wide q|k|v). GGUF parts of one type are byte-concatenated (whole rows of blocks,
  exact). Any other mix (FP8 with plain, GGUF of different types, FP8 of different formats) is
  dequantized to the widest plain dtype among the parts, or float32 if all were quantized: exact, and
  only for that one tensor.
* `swap_halves(t)`: cat(t[n/2:], t[:n/2]) by the two above (AdaLN (scale, shift) <-> (shift, scale)).
* `reshape(t, shape)`: same element count. GGUF bytes are flat, so only the logical shape changes; FP8
  data is reshaped (a per-row scale only while dim 0 is unchanged, else dequantized).
"""

from __future__ import annotations

import math

import torch

from ..gguf_dequant import BLOCKS
from ..quant.tensor import FP8_SCALED, GGUF, QuantizedTensor, is_quantized, logical_shape


def rows(tensor: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """tensor[start:stop] along dim 0 (a view wherever the storage allows)."""
    if not is_quantized(tensor):
        return tensor[start:stop]
    shape = (stop - start, *tensor.logical_shape[1:])
    if tensor.qformat == FP8_SCALED:
        scale = tensor.scale
        if scale is not None and scale.ndim == 1:
            scale = scale[start:stop]
        return QuantizedTensor(tensor.raw()[start:stop], FP8_SCALED, shape, scale=scale)
    byte_range = _gguf_byte_range(tensor, start, stop)
    if byte_range is None:
        return tensor.dequantize(torch.float32)[start:stop]
    return QuantizedTensor(tensor.raw()[byte_range[0]:byte_range[1]], GGUF, shape, qtype=tensor.qtype)


def _gguf_byte_range(tensor: QuantizedTensor, start: int, stop: int) -> tuple[int, int] | None:
    values, size = BLOCKS[int(tensor.qtype)]
    per_row = math.prod(tensor.logical_shape[1:])
    first, last = start * per_row, stop * per_row
    if first % values or last % values:
        return None
    return first // values * size, last // values * size


def cat_rows(parts: list[torch.Tensor]) -> torch.Tensor:
    """torch.cat(parts, dim=0), keeping quantized data quantized where that is exact (see the module doc)."""
    if len(parts) == 1:
        return parts[0]
    if not any(is_quantized(p) for p in parts):
        return torch.cat(_same_dtype(parts), dim=0)
    first = parts[0]
    shape = (sum(logical_shape(p)[0] for p in parts), *logical_shape(first)[1:])
    if all(is_quantized(p) and p.qformat == FP8_SCALED and p.dtype == first.dtype for p in parts):
        data = torch.cat([p.raw() for p in parts], dim=0)
        return QuantizedTensor(data, FP8_SCALED, shape, scale=_merged_scales(parts))
    if all(is_quantized(p) and p.qformat == GGUF and p.qtype == first.qtype for p in parts):
        data = torch.cat([p.raw().reshape(-1) for p in parts])
        return QuantizedTensor(data, GGUF, shape, qtype=first.qtype)
    dtype = _widest([p.dtype for p in parts if not is_quantized(p)]) or torch.float32
    return torch.cat([p.dequantize(dtype) if is_quantized(p) else p.to(dtype) for p in parts], dim=0)


def _merged_scales(parts: list[QuantizedTensor]) -> torch.Tensor | None:
    """One scale for the concatenated FP8 rows: None if no part has one, one scalar if all parts share it,
    else one value per row (a part without a scale counts as scale 1)."""
    scales = [p.scale for p in parts]
    if all(s is None for s in scales):
        return None
    if all(s is not None and s.ndim == 0 for s in scales) and all(torch.equal(s, scales[0]) for s in scales):
        return scales[0]
    per_row = []
    for part, scale in zip(parts, scales):
        count = logical_shape(part)[0]
        if scale is None:
            scale = torch.ones((), dtype=torch.float32)
        per_row.append(scale.to(torch.float32).reshape(-1).expand(count) if scale.numel() == 1
                       else scale.to(torch.float32))
    return torch.cat(per_row)


def _widest(dtypes) -> torch.dtype | None:
    """The dtype every one of `dtypes` converts to exactly (torch's promotion: bf16 with fp16 gives
    float32); FP8 values fit any wider float, so FP8 only decides when nothing else is there."""
    dtypes = list(dtypes)
    wide = [d for d in dtypes if d not in (torch.float8_e4m3fn, torch.float8_e5m2)]
    if not wide:
        return dtypes[0] if len(set(dtypes)) == 1 else (torch.bfloat16 if dtypes else None)
    result = wide[0]
    for dtype in wide[1:]:
        result = torch.promote_types(result, dtype)
    return result


def _same_dtype(parts: list[torch.Tensor]) -> list[torch.Tensor]:
    dtypes = {p.dtype for p in parts}
    if len(dtypes) == 1:
        return parts
    dtype = _widest(dtypes)
    return [p.to(dtype) for p in parts]


def swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    """cat(t[n/2:], t[:n/2]) along dim 0: (shift, scale) <-> (scale, shift)."""
    half = logical_shape(tensor)[0] // 2
    return cat_rows([rows(tensor, half, 2 * half), rows(tensor, 0, half)])


def reshape(tensor: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The same values in `shape` (same element count)."""
    shape = tuple(shape)
    if not is_quantized(tensor):
        return tensor.reshape(shape)
    if tensor.qformat == GGUF:
        return QuantizedTensor(tensor.raw(), GGUF, shape, qtype=tensor.qtype)
    scale = tensor.scale
    if scale is not None and scale.ndim == 1 and shape[0] != tensor.logical_shape[0]:
        return tensor.dequantize(torch.float32).reshape(shape)  # per-row scales no longer match the rows
    return QuantizedTensor(tensor.raw().reshape(shape), FP8_SCALED, shape, scale=scale)
