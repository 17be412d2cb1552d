"""Qwen2.5-VL's vision tower (ViT with windowed attention and a 2x2 patch merger), through transformers.

The Qwen-Image-Edit models read their reference images through it: the image's merged-patch features
(one token per 28x28 pixels) take the place of the `<|image_pad|>` tokens in the prompt.

Exactness: the network is transformers' own `Qwen2_5_VisionTransformerPretrainedModel`, built on the meta
device with its Linear layers (and the patch embedding's Conv3d) swapped for the host's `operations`
classes, so it computes what `Qwen2_5_VLForConditionalGeneration.get_image_features` computes (the tests
check it at a tiny configuration to 1e-5, fp32). Its state dict names are ComfyUI's single-file names
without the `visual.` prefix (patch_embed.proj, blocks.N.{norm1,norm2,attn.qkv,attn.proj,mlp.*},
merger.{ln_q,mlp.0,mlp.2}); transformers 5 stores the same tensors under `model.visual.`.

Configuration from shapes: widths, depth, patch sizes, the merge size and the output width are read off
the tensors. Three numbers are not in any tensor and are the same in every Qwen2.5-VL release (3B, 7B,
32B, 72B all ship this 32-block tower): 80-dim heads (1280 = 16 x 80), a 112-pixel attention window, and
full attention in the last block of every eight (7, 15, 23, 31); a tower of another depth gets the same
rule (full attention where index % 8 == 7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

HEAD_DIM = 80
WINDOW_SIZE = 112  # pixels
FULL_ATTENTION_EVERY = 8
ROPE_THETA = 10000.0


@dataclass(frozen=True)
class QwenVisionConfig:
    hidden_size: int = 1280
    depth: int = 32
    intermediate_size: int = 3420
    out_hidden_size: int = 3584
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    in_channels: int = 3
    head_dim: int = HEAD_DIM
    window_size: int = WINDOW_SIZE

    @property
    def num_heads(self) -> int:
        return self.hidden_size // self.head_dim

    @property
    def fullatt_block_indexes(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.depth) if i % FULL_ATTENTION_EVERY == FULL_ATTENTION_EVERY - 1)

    @property
    def merge_factor(self) -> int:
        """Pixels per merged token along each side (28): images are resized to multiples of it."""
        return self.patch_size * self.spatial_merge_size


def config_from_shapes(shapes: Mapping[str, Sequence[int]]) -> QwenVisionConfig:
    """Shapes in the tower's own names (patch_embed.proj.weight, blocks.N...., merger....), i.e. ComfyUI's
    names without `visual.`. KeyError for a missing tensor, ValueError for shapes that do not fit together."""
    hidden, channels, temporal, patch, patch_w = shapes["patch_embed.proj.weight"]
    if patch != patch_w:
        raise ValueError(f"patch embedding is not square: {patch}x{patch_w}")
    depth = 1 + max((int(k.split(".")[1]) for k in shapes if k.startswith("blocks.")), default=-1)
    if depth == 0:
        raise KeyError("blocks.0.attn.qkv.weight")
    merged_in, merged_in2 = shapes["merger.mlp.0.weight"]
    merge = round((merged_in / hidden) ** 0.5)
    if merged_in != merged_in2 or merge * merge * hidden != merged_in:
        raise ValueError(f"merger input {merged_in} is not a square number of {hidden}-wide patches")
    if hidden % HEAD_DIM:
        raise ValueError(f"width {hidden} is not a whole number of {HEAD_DIM}-dim heads")
    if tuple(shapes["blocks.0.attn.qkv.weight"]) != (3 * hidden, hidden):
        raise ValueError(f"attention qkv has shape {list(shapes['blocks.0.attn.qkv.weight'])}")
    return QwenVisionConfig(
        hidden_size=hidden, depth=depth, intermediate_size=shapes["blocks.0.mlp.gate_proj.weight"][0],
        out_hidden_size=shapes["merger.mlp.2.weight"][0], patch_size=patch, temporal_patch_size=temporal,
        spatial_merge_size=merge, in_channels=channels,
    )


def transformers_vision_config(config: QwenVisionConfig):
    """The same tower as transformers' Qwen2_5_VLVisionConfig (also what the tests give the reference)."""
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig

    tf_config = Qwen2_5_VLVisionConfig(
        depth=config.depth, hidden_size=config.hidden_size, hidden_act="silu",
        intermediate_size=config.intermediate_size, num_heads=config.num_heads, in_channels=config.in_channels,
        patch_size=config.patch_size, spatial_merge_size=config.spatial_merge_size,
        temporal_patch_size=config.temporal_patch_size, window_size=config.window_size,
        out_hidden_size=config.out_hidden_size, fullatt_block_indexes=list(config.fullatt_block_indexes),
    )
    tf_config._attn_implementation = "sdpa"
    return tf_config


def _patch_embed_class():
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionPatchEmbed

    class PatchEmbed(Qwen2_5_VisionPatchEmbed):
        """transformers' patch embedding computing in the input's dtype (the host's Conv3d casts the
        weight at use), so stored FP8 / bf16 weights work with fp32 activations."""

        def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
            hidden_states = hidden_states.view(-1, self.in_channels, self.temporal_patch_size,
                                               self.patch_size, self.patch_size)
            return self.proj(hidden_states).view(-1, self.embed_dim)

    return PatchEmbed


def build_vision_model(config: QwenVisionConfig, operations=None, dtype=None) -> torch.nn.Module:
    """The vision tower on the meta device (weights to be assigned), big layers from `operations`."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
        Qwen2_5_VisionTransformerPretrainedModel, Qwen2_5_VLVisionRotaryEmbedding)

    from .swap import swap_layers

    tf_config = transformers_vision_config(config)
    with torch.device("meta"):
        model = Qwen2_5_VisionTransformerPretrainedModel(tf_config)
        model.patch_embed = _patch_embed_class()(config.patch_size, config.temporal_patch_size,
                                                 config.in_channels, config.hidden_size)
    if operations is not None:
        swap_layers(model, operations, dtype)
        kernel = (config.temporal_patch_size, config.patch_size, config.patch_size)
        model.patch_embed.proj = operations.Conv3d(config.in_channels, config.hidden_size, kernel_size=kernel,
                                                   stride=kernel, bias=False, device="meta", dtype=dtype)
    # The rotary table is a computed, non-persistent buffer: build it for real (it is tiny).
    model.rotary_pos_emb = Qwen2_5_VLVisionRotaryEmbedding(tf_config)
    return model.eval().requires_grad_(False)


def compute_dtype(model: torch.nn.Module) -> torch.dtype:
    """The activations' dtype by default: the stored one if it is a float type torch computes in, else fp32."""
    weight = model.patch_embed.proj.weight
    return weight.dtype if weight.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float32


def encode_images(model: torch.nn.Module, pixel_values: torch.Tensor, grid_thw: torch.Tensor,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """Preprocessed images (qwen_image_processor.preprocess) -> image features [N_tokens, out_hidden]:
    the images' merged tokens one after the other, sum(t*h*w / merge^2) rows, as
    get_image_features gives them (before its split per image; `split_features` does that)."""
    dtype = dtype or compute_dtype(model)
    device = model.rotary_pos_emb.inv_freq.device
    for parameter in model.parameters():
        device = parameter.device
        break
    output = model(pixel_values.to(device=device, dtype=dtype), grid_thw=grid_thw.to(device))
    return output.pooler_output


def tokens_per_image(grid_thw: torch.Tensor, spatial_merge_size: int = 2) -> list[int]:
    return (grid_thw.prod(-1) // spatial_merge_size ** 2).tolist()


def split_features(features: torch.Tensor, grid_thw: torch.Tensor, spatial_merge_size: int = 2):
    """encode_images' rows per image (a tuple of [tokens_i, out_hidden])."""
    return torch.split(features, tokens_per_image(grid_thw, spatial_merge_size))
