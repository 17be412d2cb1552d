"""The output layer: LayerNorm (no affine, eps 1e-6) modulated by (shift, scale) from the conditioning
vector, then one Linear to the patch features. Names: `final_layer.adaLN_modulation.1` (rows: shift,
then scale, the FLUX / ComfyUI order; diffusers' AdaLayerNormContinuous stores scale first) and
`final_layer.linear`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .modulation import adaln_sequential, modulate, split_modulation


class FinalLayer(torch.nn.Module):
    def __init__(self, hidden_size: int, out_features: int, operations, bias: bool = True, dtype=None, device=None):
        super().__init__()
        self.hidden_size = hidden_size
        self.linear = operations.Linear(hidden_size, out_features, bias=bias, dtype=dtype, device=device)
        self.adaLN_modulation = adaln_sequential(hidden_size, 2, operations, bias, dtype, device)

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        shift, scale = split_modulation(self.adaLN_modulation(vec), 2)
        return self.linear(modulate(F.layer_norm(x, (self.hidden_size,), eps=1e-6), shift, scale))
