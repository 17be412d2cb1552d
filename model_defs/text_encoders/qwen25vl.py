"""Qwen2.5-VL as the text encoder of Qwen-Image (and HunyuanImage 2.1), through transformers.

Only the language model is built here: text-to-image reads no image. (Image prompts for the Edit models
will add the vision tower beside it.) The configuration is read from tensor shapes; the published models
all use 128-dim heads, multimodal RoPE split (16, 24, 24) over (time, height, width), theta 1e6.

Families differ in the hidden state they take (`hidden_state_skip_layer`, the official pipelines' name):
Qwen-Image the last one, after the final norm; HunyuanImage 2.1 the third from last of transformers'
hidden_states (skip 2), the output of layer N-2 before any norm, so its last two layers are not run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from .base import TextEncoderSpec
from .swap import swap_layers

HEAD_DIM = 128
ROPE_THETA = 1_000_000.0
RMS_EPS = 1e-6


@dataclass(frozen=True)
class QwenTextConfig:
    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_key_value_heads: int = 4
    head_dim: int = HEAD_DIM

    @property
    def num_attention_heads(self) -> int:
        return self.hidden_size // self.head_dim

    @property
    def mrope_section(self) -> list[int]:
        # (16, 24, 24) for 128-dim heads: a quarter of the rotated pairs for time, 3/8 each for height, width
        pairs = self.head_dim // 2
        return [pairs // 4, pairs * 3 // 8, pairs * 3 // 8]


def config_from_shapes(shapes: Mapping[str, Sequence[int]]) -> QwenTextConfig:
    """Shapes in the language model's own names (embed_tokens.weight, layers.N...., norm.weight)."""
    vocab, hidden = shapes["embed_tokens.weight"]
    layers = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("layers."))
    return QwenTextConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=shapes["layers.0.mlp.gate_proj.weight"][0],
        num_hidden_layers=layers,
        num_key_value_heads=shapes["layers.0.self_attn.k_proj.weight"][0] // HEAD_DIM,
    )


def _transformers_config(config: QwenTextConfig):
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLTextConfig

    tf_config = Qwen2_5_VLTextConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, rms_norm_eps=RMS_EPS, max_position_embeddings=128000,
        rope_theta=ROPE_THETA, rope_scaling={"type": "mrope", "mrope_section": config.mrope_section},
        bos_token_id=None, eos_token_id=None,  # generation ids: unused when encoding
    )
    tf_config._attn_implementation = "sdpa"
    return tf_config


def build_text_model(config: QwenTextConfig, operations=None, dtype=None) -> torch.nn.Module:
    """The language model on the meta device (weights to be assigned), big layers from `operations`."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLRotaryEmbedding, Qwen2_5_VLTextModel

    tf_config = _transformers_config(config)
    with torch.device("meta"):
        model = Qwen2_5_VLTextModel(tf_config)
    if operations is not None:
        swap_layers(model, operations, dtype)
    # The rotary table is a computed, non-persistent buffer: build it for real (it is tiny).
    model.rotary_emb = Qwen2_5_VLRotaryEmbedding(config=tf_config)
    return model.eval().requires_grad_(False)


def text_position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions for text-only input as the full VL model computes them (padding-independent), [3, B, L]."""
    positions = mask.long().cumsum(-1) - 1
    positions = positions.masked_fill(mask == 0, 1)
    return positions.unsqueeze(0).expand(3, -1, -1)


def template_prefix_tokens(tokenizer, template: str) -> int:
    """How many tokens of the template come before the prompt (34 for Qwen-Image with Qwen's tokenizer)."""
    return len(tokenizer(template.split("{}")[0])["input_ids"])


class _StopAfterLayer(Exception):
    """Carries the output of the layer whose hidden state was asked for out of the model's forward."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden


def hidden_state(model, hidden_state_skip_layer: int = 0, **inputs) -> torch.Tensor:
    """transformers' `hidden_states[-(hidden_state_skip_layer + 1)]` for `inputs`, computing no more than
    that: 0 gives the last hidden state (after the final norm); k > 0 the output of layer N-k (1-based),
    before the final norm, and the forward stops there (a hook raises after that layer), so the last k
    layers cost nothing."""
    if hidden_state_skip_layer == 0:
        return model(**inputs).last_hidden_state
    layers = len(model.layers)
    if not 0 < hidden_state_skip_layer < layers:
        raise ValueError(f"cannot skip {hidden_state_skip_layer} of {layers} layers")

    def stop(module, args, output):
        raise _StopAfterLayer(output[0] if isinstance(output, tuple) else output)

    handle = model.layers[layers - 1 - hidden_state_skip_layer].register_forward_hook(stop)
    try:
        model(**inputs)
    except _StopAfterLayer as stopped:
        return stopped.hidden
    finally:
        handle.remove()
    raise RuntimeError("the language model finished without running the layer asked for")


def encode_token_lists(model, tokenizer, token_lists: list[list[int]], hidden_state_skip_layer: int = 0,
                       device=None, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (hidden states [B, L, hidden], mask [B, L] long) of the batch right-padded to its
    longest row (padding masked out, positions counted over the real tokens). dtype: the activations'."""
    device = device or next(model.parameters()).device
    longest = max(len(ids) for ids in token_lists)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(token_lists), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(token_lists), longest), dtype=torch.long)
    for i, ids in enumerate(token_lists):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        mask[i, :len(ids)] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    embeddings = model.embed_tokens(input_ids)
    if dtype is not None:
        embeddings = embeddings.to(dtype)
    hidden = hidden_state(model, hidden_state_skip_layer, inputs_embeds=embeddings, attention_mask=mask,
                          position_ids=text_position_ids(mask), use_cache=False)
    return hidden, mask


def encode_prompts(model, tokenizer, prompts: list[str], template: str, max_tokens: int,
                   device=None, dtype: torch.dtype | None = None,
                   hidden_state_skip_layer: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> (hidden states [B, L, hidden], mask [B, L] long), as the official pipelines encode them:
    chat template applied, the template's prefix (system block and user header) dropped, the batch
    right-padded with zeros. hidden_state_skip_layer: which hidden state (see `hidden_state`; 0, the
    default, is the last one after the final norm, Qwen-Image's).

    A prompt longer than `max_tokens` raises instead of being cut (a cut prompt silently loses words).
    dtype: the activations' dtype (default: the embedding weights'), e.g. float32 over bf16 weights on a CPU.
    """
    drop = template_prefix_tokens(tokenizer, template)
    token_lists = [tokenizer(template.format(p))["input_ids"] for p in prompts]
    for prompt, ids in zip(prompts, token_lists):
        length = len(ids) - drop
        if length > max_tokens:
            raise ValueError(
                f"the prompt is {length} tokens long after the template; the limit is {max_tokens}. "
                f"Shorten it (it begins: {prompt[:60]!r})"
            )
    hidden, _ = encode_token_lists(model, tokenizer, token_lists, hidden_state_skip_layer, device, dtype)

    lengths = [len(ids) - drop for ids in token_lists]
    out_len = max(lengths)
    embeds = hidden.new_zeros((len(prompts), out_len, hidden.shape[-1]))
    out_mask = torch.zeros((len(prompts), out_len), dtype=torch.long, device=hidden.device)
    for i, length in enumerate(lengths):
        embeds[i, :length] = hidden[i, drop:drop + length]
        out_mask[i, :length] = 1
    return embeds, out_mask


SPEC = TextEncoderSpec(
    kind="qwen25_vl",
    display_name="Qwen2.5-VL text encoder",
    tokenizer_name="qwen25",
    config_from_shapes=config_from_shapes,
    build=build_text_model,
    # The vision tower (Qwen-Image-Edit reads reference images with it): its features feed every image token,
    # and 4-bit weights cost it about 26% feature error against 1.6% at Q8_0 (tiny tower, tests); llama.cpp
    # likewise never ships its mmproj below Q8_0.
    eight_bit_tensors=("visual.",),
)
