"""The default `operations` namespace: the layer classes networks are built from outside ComfyUI.

Every network in model_defs builds its Linear/Conv/Norm/Embedding layers through an `operations`
argument, the convention ComfyUI's own models use. Inside ComfyUI the host passes `comfy.ops.manual_cast`
(or quantized subclasses of it) so the memory manager can stream weights layer by layer. Standalone, this
namespace is used. It mirrors ComfyUI's semantics:

* no random initialisation (weights always come from a file, so init would only waste time), and
* weights are cast at forward time to the input's dtype and device ("manual cast"), so a bf16 file can be
  computed in fp32 on a CPU, or stay on the CPU while activations run elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cast_like(tensor: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """`tensor` on the device and in the dtype of `like`; no copy when it already is."""
    if tensor is None:
        return None
    if tensor.device != like.device or tensor.dtype != like.dtype:
        return tensor.to(device=like.device, dtype=like.dtype)
    return tensor


class Linear(torch.nn.Linear):
    def reset_parameters(self):
        return None

    def forward(self, input):
        return F.linear(input, cast_like(self.weight, input), cast_like(self.bias, input))


class Conv2d(torch.nn.Conv2d):
    def reset_parameters(self):
        return None

    def forward(self, input):
        return self._conv_forward(input, cast_like(self.weight, input), cast_like(self.bias, input))


class Conv3d(torch.nn.Conv3d):
    def reset_parameters(self):
        return None

    def forward(self, input):
        return self._conv_forward(input, cast_like(self.weight, input), cast_like(self.bias, input))


class LayerNorm(torch.nn.LayerNorm):
    def reset_parameters(self):
        return None

    def forward(self, input):
        return F.layer_norm(
            input, self.normalized_shape, cast_like(self.weight, input), cast_like(self.bias, input), self.eps
        )


class GroupNorm(torch.nn.GroupNorm):
    def reset_parameters(self):
        return None

    def forward(self, input):
        return F.group_norm(input, self.num_groups, cast_like(self.weight, input), cast_like(self.bias, input), self.eps)


class RMSNorm(torch.nn.RMSNorm):
    def reset_parameters(self):
        return None

    def forward(self, input):
        return F.rms_norm(input, self.normalized_shape, cast_like(self.weight, input), self.eps)


class Embedding(torch.nn.Embedding):
    def reset_parameters(self):
        return None

    def forward(self, input, out_dtype=None):
        out = F.embedding(input, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                          self.scale_grad_by_freq, self.sparse)
        return out if out_dtype is None else out.to(out_dtype)


class StandaloneOps:
    """The namespace passed as `operations` when no host supplies one."""

    Linear = Linear
    Conv2d = Conv2d
    Conv3d = Conv3d
    LayerNorm = LayerNorm
    GroupNorm = GroupNorm
    RMSNorm = RMSNorm
    Embedding = Embedding
