"""Paths and small utilities shared by the tests."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MANIFESTS = SHARED / "reference" / "manifests"


@lru_cache(maxsize=None)
def manifest(name: str) -> dict:
    """A published checkpoint's tensor names and shapes (see shared/reference/manifests/README.md)."""
    return json.loads((MANIFESTS / f"{name}.json").read_text())


def manifest_shapes(name: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v) for k, v in manifest(name)["tensors"].items()}


def encode_qwen_prompts(text_encoder, prompts) -> torch.Tensor:
    """Qwen-Image prompt embeddings (float32) from a loaded text encoder (loaders.text_encoder)."""
    from comfyui_mmdit.model_defs.qwen_image.family import MAX_PROMPT_TOKENS, PROMPT_TEMPLATE
    from comfyui_mmdit.model_defs.text_encoders import qwen25vl

    with torch.no_grad():
        embeds, _ = qwen25vl.encode_prompts(text_encoder.model, text_encoder.tokenizer, prompts, PROMPT_TEMPLATE,
                                            MAX_PROMPT_TOKENS, dtype=torch.float32)
    return embeds
