"""Layers that hold quantized weights and dequantize them at forward time, on the compute device.

`quantized_ops(base)` extends any `operations` namespace (ours, or ComfyUI's manual_cast) so that its
Linear and Embedding accept a QuantizedTensor weight. Inside ComfyUI they stay ComfyUI layers: the memory
manager moves the quantized bytes, streams layers in low-VRAM mode and hands LoRA patches over as
`weight_function`s; the dequantized weight exists only while its layer runs.

LoRA on a quantized weight (ComfyUI calls `set_weight` with the patched full-precision weight): the
patched weight is kept, re-quantized to 8 bits (FP8 layers: FP8 with one scale per output row; GGUF
layers: Q8_0), so it is computed once, not on every forward, and memory stays near the quantized size.
In low-VRAM mode ComfyUI instead applies the patch as the layer runs (there is no memory to keep it).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .requant import requantize_like
from .tensor import is_quantized


def _dequantized(layer, like: torch.Tensor) -> torch.Tensor:
    """The layer's weight on `like`'s device, in its dtype, with any pending patches applied."""
    weight = layer.weight
    if is_quantized(weight):
        weight = weight.dequantize(like.dtype, device=like.device)
    else:
        weight = weight.to(device=like.device, dtype=like.dtype, non_blocking=True)
    for patch in getattr(layer, "weight_function", ()):  # ComfyUI's low-VRAM LoRA patches
        weight = patch(weight).to(like.dtype)
    return weight


def _bias(layer, like: torch.Tensor):
    bias = layer.bias
    if bias is None:
        return None
    bias = bias.to(device=like.device, dtype=like.dtype, non_blocking=True)
    for patch in getattr(layer, "bias_function", ()):
        bias = patch(bias).to(like.dtype)
    return bias


class _QuantizedWeightMixin:
    """Accepts a QuantizedTensor as its weight (whose storage shape differs from the layer's shape)."""

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "weight"
        weight = state_dict.get(key)
        if is_quantized(weight):
            if tuple(weight.logical_shape) != tuple(self.weight.shape):
                error_msgs.append(f"size mismatch for {key}: quantized weight of shape "
                                  f"{tuple(weight.logical_shape)}, layer expects {tuple(self.weight.shape)}")
                return
            self.weight = torch.nn.Parameter(weight, requires_grad=False)
            state_dict = {k: v for k, v in state_dict.items() if k != key}
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                          unexpected_keys, error_msgs)
            if key in missing_keys:
                missing_keys.remove(key)
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    # ComfyUI's LoRA machinery: get_key_weight() finds set_weight and hands it the patched weight.
    def set_weight(self, weight, inplace_update=False, seed=None, return_weight=False, **kwargs):
        if return_weight:  # low-VRAM path: the patched weight is used right away, as computed
            return weight
        original = self.weight
        if is_quantized(original):
            weight = requantize_like(original, weight)
        else:
            weight = weight.to(original.dtype)
        self.weight = torch.nn.Parameter(weight, requires_grad=False)


def _quantized_linear(base: type) -> type:
    class QuantizedLinear(_QuantizedWeightMixin, base):
        def forward(self, input, *args, **kwargs):
            if not is_quantized(self.weight):
                return super().forward(input, *args, **kwargs)
            return F.linear(input, _dequantized(self, input), _bias(self, input))

        def forward_comfy_cast_weights(self, input, *args, **kwargs):  # ComfyUI calls this when casting
            if not is_quantized(self.weight):
                return super().forward_comfy_cast_weights(input, *args, **kwargs)
            return F.linear(input, _dequantized(self, input), _bias(self, input))

    return QuantizedLinear


def _quantized_embedding(base: type) -> type:
    class QuantizedEmbedding(_QuantizedWeightMixin, base):
        def _lookup(self, input, out_dtype=None):
            # Only the rows asked for are dequantized (a 150k-token table is never expanded whole).
            rows = self.weight.dequantize_rows(input.reshape(-1), out_dtype or torch.float32, device=input.device)
            return rows.reshape(*input.shape, rows.shape[-1])

        def forward(self, input, out_dtype=None):
            if not is_quantized(self.weight):
                return super().forward(input, out_dtype=out_dtype)
            return self._lookup(input, out_dtype)

        def forward_comfy_cast_weights(self, input, out_dtype=None):
            if not is_quantized(self.weight):
                return super().forward_comfy_cast_weights(input, out_dtype=out_dtype)
            return self._lookup(input, out_dtype)

    return QuantizedEmbedding


@functools.lru_cache(maxsize=None)
def quantized_ops(base):
    """`base` (an operations namespace) with Linear and Embedding that take quantized weights."""
    return type(f"Quantized{base.__name__}", (base,), {
        "Linear": _quantized_linear(base.Linear),
        "Embedding": _quantized_embedding(base.Embedding),
    })
