"""One attention function for every network, with interchangeable backends.

Backends: torch SDPA (always available), flash-attn (when installed and usable for the inputs: CUDA,
fp16/bf16, head dim <= 256) and SageAttention (when installed, CUDA). A network picks its backend once,
at construction (`resolve_backend`), and the loader node can override it. A backend that cannot serve a
particular call (a padding mask for flash/sage, an unsupported dtype or device) falls back to SDPA for that
call only, so results never depend on a backend being half-usable.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "sdpa", "flash_attn", "sage")


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def available_backends() -> list[str]:
    """Backends that can be chosen on this machine (for the loader node's list)."""
    names = ["auto", "sdpa"]
    if torch.cuda.is_available():
        if _installed("flash_attn"):
            names.append("flash_attn")
        if _installed("sageattention"):
            names.append("sage")
    return names


def resolve_backend(requested: str = "auto") -> str:
    """Turn a user choice into a concrete backend; "auto" prefers flash-attn, then SDPA."""
    if requested not in BACKENDS:
        raise ValueError(f"unknown attention backend {requested!r}; expected one of {', '.join(BACKENDS)}")
    if requested == "auto":
        return "flash_attn" if "flash_attn" in available_backends() else "sdpa"
    if requested not in available_backends():
        raise ValueError(
            f"attention backend {requested!r} is not usable here (needs CUDA and the package installed); "
            f"available: {', '.join(available_backends())}"
        )
    return requested


def _flash_usable(q: torch.Tensor) -> bool:
    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    backend: str = "sdpa",
) -> torch.Tensor:
    """Scaled dot-product attention over [batch, tokens, heads, head_dim] inputs.

    key_mask: optional bool [batch, key_tokens], True where a key may be attended to (padding is False).
    Callers drop an all-true mask once per forward (see `normalize_key_mask`) rather than per call, which
    would cost a device sync in every block.
    Returns [batch, tokens, heads * head_dim].
    """
    batch, tokens, heads, head_dim = q.shape

    if key_mask is None and backend == "flash_attn" and _flash_usable(q):
        from flash_attn import flash_attn_func

        out = flash_attn_func(q, k, v)
        return out.reshape(batch, tokens, heads * head_dim)

    if key_mask is None and backend == "sage" and _flash_usable(q):
        from sageattention import sageattn

        out = sageattn(q, k, v, tensor_layout="NHD", is_causal=False)
        return out.reshape(batch, tokens, heads * head_dim)

    mask = None if key_mask is None else key_mask[:, None, None, :].to(torch.bool)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2).reshape(batch, tokens, heads * head_dim)


def normalize_key_mask(mask: torch.Tensor | None, batch: int, tokens: int) -> torch.Tensor | None:
    """A [batch, tokens] bool key mask, or None when nothing is masked (checked once, not per block)."""
    if mask is None:
        return None
    mask = mask.to(torch.bool)
    if mask.ndim != 2 or mask.shape[1] != tokens:
        raise ValueError(f"attention mask of shape {tuple(mask.shape)} does not fit {tokens} text tokens")
    if mask.shape[0] != batch:
        if mask.shape[0] != 1:
            raise ValueError(f"attention mask batch {mask.shape[0]} does not fit batch {batch}")
        mask = mask.expand(batch, tokens)
    return None if bool(mask.all()) else mask
