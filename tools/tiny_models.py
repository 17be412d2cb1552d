"""Tiny random-weight models with the real structure and the real file layouts.

Used by the tests (parity, loaders, nodes, ComfyUI integration) and by the command line's demo mode when
no real weights are present. Every tensor name and layout is the published one; only widths and depths
are small. Weights are random (seeded): the images they produce are noise, a check that the pipeline
runs end to end, not pictures.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from ..model_defs.ops import StandaloneOps
from ..model_defs.qwen_image.transformer import QwenImageConfig, QwenImageTransformer

TINY_QWEN_DIT = QwenImageConfig(
    in_channels=64, out_channels=16, patch_size=2, num_layers=2, attention_head_dim=32,
    num_attention_heads=2, joint_attention_dim=128, axes_dims_rope=(4, 14, 14),
)


def random_state_dict(module: torch.nn.Module, seed: int, scale: float = 0.05) -> dict[str, torch.Tensor]:
    """Seeded random values for every tensor of `module` (norm weights around 1, the rest around 0),
    so that parity tests are sensitive to every parameter."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, tensor in module.state_dict().items():
        noise = torch.randn(tuple(tensor.shape), generator=generator) * scale
        is_norm_weight = tensor.ndim == 1 and ("norm" in name or name.endswith(("gamma", ".scale")))
        out[name] = (1.0 + noise) if is_norm_weight else noise
    return out


def tiny_qwen_dit_state_dict(config: QwenImageConfig = TINY_QWEN_DIT, seed: int = 0) -> dict[str, torch.Tensor]:
    network = QwenImageTransformer(config, StandaloneOps, device="meta")
    return random_state_dict(network, seed)


def write_safetensors(state_dict: dict, path, dtype: torch.dtype | None = None, prefix: str = "",
                      metadata: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {prefix + k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
               for k, v in state_dict.items()}
    save_file(tensors, str(path), metadata=metadata)
    return path
