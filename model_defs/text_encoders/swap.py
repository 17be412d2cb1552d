"""Swap a transformers model's Linear and Embedding layers for the host's `operations` classes.

transformers builds plain torch.nn layers. Inside ComfyUI the memory manager can only stream layers that
carry its cast-at-use protocol (comfy.ops); a plain nn.Linear is always moved to the GPU whole. Swapping
the Linear and Embedding layers (over 99% of a language model's weights) lets a 15 GB encoder run on a
12 GB card, layer by layer. The swap happens on the meta device, before any weight is loaded.
"""

from __future__ import annotations

import torch


def swap_layers(model: torch.nn.Module, operations, dtype=None) -> torch.nn.Module:
    """Replace every nn.Linear / nn.Embedding in `model` (built on the meta device) in place."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            replacement = _replacement(child, operations, dtype)
            if replacement is not None:
                setattr(parent, name, replacement)
    return model


def _replacement(layer: torch.nn.Module, operations, dtype):
    if type(layer) is torch.nn.Linear:
        return operations.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                                 device="meta", dtype=dtype)
    if type(layer) is torch.nn.Embedding:
        return operations.Embedding(layer.num_embeddings, layer.embedding_dim, padding_idx=layer.padding_idx,
                                    device="meta", dtype=dtype)
    return None
