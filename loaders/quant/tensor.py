"""QuantizedTensor: a weight kept in its stored, quantized form until a layer uses it.

The tensor's own storage is the stored data (float8 values, or GGUF's raw block bytes); the attributes say
how to turn it into real numbers. Moving it (`.to(device)`, which ComfyUI's memory manager does layer by
layer) keeps it quantized; asking for a floating dtype (`.to(torch.bfloat16)`, or `dequantize()`) gives a
plain tensor in the layer's logical shape. So the memory manager moves and counts the quantized bytes,
and only the layer being computed ever holds a full-precision copy.
"""

from __future__ import annotations

import torch

from ..gguf_dequant import dequantize as gguf_dequantize

FP8_SCALED = "fp8_scaled"
GGUF = "gguf"


class QuantizedTensor(torch.Tensor):
    """Stored data plus what dequantization needs.

    qformat: FP8_SCALED (value = fp8 * scale, or the fp8 number itself when there is no scale) or GGUF
        (value = gguf_dequant(bytes, qtype)).
    qtype: the GGML quantization type (GGUF), unused for FP8.
    logical_shape: the weight's shape as the network sees it (GGUF bytes are 1-D).
    scale: float32 tensor (FP8): a scalar, one value per output row, or None (plain FP8 files).
    """

    # Operations on the tensor return plain tensors; only the methods below keep the subclass.
    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, data: torch.Tensor, qformat: str, logical_shape, qtype=None, scale=None):
        return torch.Tensor._make_subclass(cls, data, False)

    def __init__(self, data, qformat, logical_shape, qtype=None, scale=None):
        self.qformat = qformat
        self.qtype = qtype
        self.logical_shape = torch.Size(logical_shape)
        self.scale = scale

    def raw(self) -> torch.Tensor:
        """The stored data as a plain tensor (no copy)."""
        return self.as_subclass(torch.Tensor)

    def _rewrap(self, data: torch.Tensor, scale=None) -> "QuantizedTensor":
        return QuantizedTensor(data, self.qformat, self.logical_shape, self.qtype,
                               self.scale if scale is None else scale)

    def dequantize(self, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """The weight as a plain `dtype` tensor of logical_shape, computed on `device` (default: where it is)."""
        data = self.raw()
        if device is not None:
            data = data.to(device, non_blocking=True)
        if self.qformat == FP8_SCALED:
            if self.scale is None:
                return data.to(dtype)  # exact for any wider float (fp8 values fit bf16/fp16): no fp32 detour
            scale = self.scale.to(data.device, non_blocking=True)
            if scale.ndim == 1:
                scale = scale.view(-1, *([1] * (data.ndim - 1)))
            return (data.to(torch.float32) * scale).to(dtype)
        if self.qformat == GGUF:
            return gguf_dequantize(data, self.qtype, self.logical_shape, dtype=dtype)
        raise ValueError(f"unknown quantization format {self.qformat!r}")

    def dequantize_rows(self, rows: torch.Tensor, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """Rows `rows` of a 2-D weight (an embedding lookup), dequantizing only those rows."""
        if len(self.logical_shape) != 2:
            raise ValueError(f"row lookup needs a 2-D weight, this one is {tuple(self.logical_shape)}")
        count, width = self.logical_shape
        data = self.raw()
        rows = rows.to(data.device)
        if self.qformat == FP8_SCALED:
            picked = data.index_select(0, rows)
            scale = self.scale
            if scale is not None and scale.ndim == 1:
                scale = scale.index_select(0, rows)
            part = QuantizedTensor(picked, FP8_SCALED, (rows.numel(), width), scale=scale)
        else:
            picked = data.reshape(count, -1).index_select(0, rows)  # whole blocks per row
            part = QuantizedTensor(picked, GGUF, (rows.numel(), width), qtype=self.qtype)
        return part.dequantize(dtype, device)

    # --- what modules, state dicts and ComfyUI's memory manager do with parameters ----------------
    def to(self, *args, **kwargs):
        copy = kwargs.pop("copy", False)  # ComfyUI's cast_to passes it; torch's argument parser refuses it
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        if dtype is not None and dtype.is_floating_point and dtype != self.dtype:
            return self.dequantize(dtype, device)  # a floating dtype asks for the values
        if device is None or torch.device(device) == self.device:
            return self.clone() if copy else self
        scale = None if self.scale is None else self.scale.to(device, non_blocking=non_blocking)
        return self._rewrap(self.raw().to(device, non_blocking=non_blocking), scale)

    def cuda(self, device=None, non_blocking=False):
        if device is None:
            device = "cuda"
        elif isinstance(device, int):
            device = torch.device("cuda", device)
        return self.to(device, non_blocking=non_blocking)

    def cpu(self):
        return self.to("cpu")

    def detach(self):
        return self._rewrap(self.raw().detach())

    def clone(self, *args, **kwargs):
        scale = None if self.scale is None else self.scale.clone()
        return self._rewrap(self.raw().clone(*args, **kwargs), scale)

    def __deepcopy__(self, memo):
        return self.clone()

    def __reduce_ex__(self, protocol):
        return (QuantizedTensor, (self.raw().clone(), self.qformat, tuple(self.logical_shape), self.qtype,
                                  None if self.scale is None else self.scale.clone()))

    def __repr__(self):
        if self.qformat == GGUF:
            kind = f"GGUF type {self.qtype}"
        else:
            kind = f"{self.dtype}" if self.scale is None else f"{self.dtype} x scale"
        return f"QuantizedTensor({kind}, shape {tuple(self.logical_shape)}, {self.nbytes} bytes, {self.device})"


def logical_shape(tensor: torch.Tensor) -> tuple[int, ...]:
    """The shape a layer sees: the logical shape of a quantized weight, else the tensor's shape."""
    return tuple(getattr(tensor, "logical_shape", tensor.shape))


def is_quantized(tensor) -> bool:
    return isinstance(tensor, QuantizedTensor)


def holds_quantized(state_dict: dict) -> bool:
    """Whether any weight is quantized: the network then needs layers that dequantize (quant/ops.py)."""
    return any(is_quantized(t) for t in state_dict.values())
