"""Paths and small utilities shared by the tests."""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "tests" / "reference" / "manifests"


@lru_cache(maxsize=None)
def manifest(name: str) -> dict:
    """A published checkpoint's tensor names and shapes (see tests/reference/README.md)."""
    with gzip.open(MANIFESTS / f"{name}.json.gz", "rt", encoding="utf-8") as f:
        return json.load(f)


def manifest_shapes(name: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v) for k, v in manifest(name)["tensors"].items()}


def load_and_run_dit(path):
    """A diffusion-model file loaded by the standalone host on the CPU, and its output for fixed inputs
    (one latent of 8x12, six text tokens, sigma 0.5): (model, output)."""
    from comfyui_mmdit.loaders.diffusion_model import read_diffusion_model
    from comfyui_mmdit.nodes.host.standalone import StandaloneHost

    model = StandaloneHost(models_dir=Path(path).parent, device="cpu").load_diffusion_model(read_diffusion_model(path))
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(1, 16, 8, 12, generator=g)
    context = torch.randn(1, 6, model.network.config.joint_attention_dim, generator=g)
    with torch.no_grad():
        return model, model.network(latent, torch.tensor([0.5]), context)


def encode_qwen_prompts(text_encoder, prompts) -> torch.Tensor:
    """Qwen-Image prompt embeddings (float32) from a loaded text encoder (loaders.text_encoder)."""
    from comfyui_mmdit.model_defs.qwen_image.family import MAX_PROMPT_TOKENS, PROMPT_TEMPLATE
    from comfyui_mmdit.model_defs.text_encoders import qwen25vl

    with torch.no_grad():
        embeds, _ = qwen25vl.encode_prompts(text_encoder.model, text_encoder.tokenizer, prompts, PROMPT_TEMPLATE,
                                            MAX_PROMPT_TOKENS, dtype=torch.float32)
    return embeds
