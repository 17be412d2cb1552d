"""The ByT5 encoder (T5 v1.1 architecture over bytes): HunyuanImage 2.1's glyph text encoder.

HunyuanImage 2.1 renders text in quotes through Glyph-SDXL-v2's ByT5: google/byt5-small (12 layers, width
1472, 6 heads of 64, gated-GELU feed-forward of 3584) with its token table grown from 384 to 1510 rows for
the colour and font markup tokens (byt5_tokenizer.py). Only the encoder exists here; the output is the
last hidden state after the final norm, as transformers' T5EncoderModel returns it.

Parameter names are the ComfyUI single file's (byt5_small_glyphxl_fp16.safetensors), which are also
transformers' T5EncoderModel names less its tied alias `encoder.embed_tokens.weight`. Layers come from
`operations` (FP8 and GGUF weights stay quantized through loaders.quant.ops.quantized_ops).

Exactness (tests/test_byt5.py): the same computation as transformers' T5 encoder in eval mode: RMS norm
without mean or bias, unscaled dot-product attention with a learned relative-position bias (computed by
block 0 and shared by all blocks), padding as a large negative bias on the keys, feed-forward
wo(gelu_tanh(wi_0 x) * wi_1 x). fp32 outputs agree with transformers to summation order (max abs <= 1e-5).
transformers' fp16 overflow clamps are not reproduced: the hosts run text encoders in bf16 or fp32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from .base import TextEncoderSpec

LAYER_NORM_EPS = 1e-6
RELATIVE_MAX_DISTANCE = 128  # T5's default; not visible in the weights


@dataclass(frozen=True)
class ByT5Config:
    vocab_size: int = 1510
    d_model: int = 1472
    d_kv: int = 64
    d_ff: int = 3584
    num_layers: int = 12
    num_heads: int = 6
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = RELATIVE_MAX_DISTANCE

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv


_BIAS = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"


def config_from_shapes(shapes: Mapping[str, Sequence[int]]) -> ByT5Config:
    """Shapes in the network's (ComfyUI) names. Raises KeyError for a missing tensor, ValueError for a T5
    this module does not build (not gated, heads that do not divide the attention width)."""
    vocab, d_model = shapes["shared.weight"]
    buckets, heads = shapes[_BIAS]
    inner = shapes["encoder.block.0.layer.0.SelfAttention.q.weight"][0]
    if "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" not in shapes:
        raise ValueError("not a gated-GELU T5 (T5 v1.1 / ByT5): no DenseReluDense.wi_0")
    if heads <= 0 or inner % heads:
        raise ValueError(f"attention width {inner} is not a multiple of {heads} heads")
    blocks = {int(k.split(".")[2]) for k in shapes if k.startswith("encoder.block.")}
    return ByT5Config(
        vocab_size=vocab,
        d_model=d_model,
        d_kv=inner // heads,
        d_ff=shapes["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"][0],
        num_layers=1 + max(blocks),
        num_heads=heads,
        relative_attention_num_buckets=buckets,
    )


def relative_position_buckets(length: int, num_buckets: int, max_distance: int, device=None) -> torch.Tensor:
    """[length, length] bucket of (key position - query position), T5's bidirectional scheme: half the
    buckets per direction, exact for distances below a quarter of the buckets, logarithmic up to
    `max_distance`, the last bucket beyond."""
    positions = torch.arange(length, dtype=torch.long, device=device)
    relative = positions[None, :] - positions[:, None]
    half = num_buckets // 2
    buckets = (relative > 0).long() * half
    distance = relative.abs()
    exact = half // 2
    log_bucket = exact + (
        torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (half - exact)
    ).long()
    log_bucket = log_bucket.clamp(max=half - 1)
    return buckets + torch.where(distance < exact, distance, log_bucket)


class T5SelfAttention(torch.nn.Module):
    def __init__(self, config: ByT5Config, has_relative_bias: bool, operations, dtype=None, device=None):
        super().__init__()
        self.num_heads, self.d_kv = config.num_heads, config.d_kv
        inner = config.inner_dim
        self.q = operations.Linear(config.d_model, inner, bias=False, dtype=dtype, device=device)
        self.k = operations.Linear(config.d_model, inner, bias=False, dtype=dtype, device=device)
        self.v = operations.Linear(config.d_model, inner, bias=False, dtype=dtype, device=device)
        self.o = operations.Linear(inner, config.d_model, bias=False, dtype=dtype, device=device)
        if has_relative_bias:
            self.relative_attention_bias = operations.Embedding(config.relative_attention_num_buckets,
                                                                config.num_heads, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape

        def heads(t):
            return t.view(batch, length, self.num_heads, self.d_kv).transpose(1, 2)

        # T5 does not scale the scores by 1/sqrt(d_kv) (the scale is folded into its initialisation).
        out = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)),
                                             attn_mask=bias, scale=1.0)
        return self.o(out.transpose(1, 2).reshape(batch, length, -1))


class T5LayerSelfAttention(torch.nn.Module):
    def __init__(self, config, has_relative_bias, operations, dtype=None, device=None):
        super().__init__()
        self.SelfAttention = T5SelfAttention(config, has_relative_bias, operations, dtype, device)
        self.layer_norm = operations.RMSNorm(config.d_model, eps=LAYER_NORM_EPS, dtype=dtype, device=device)

    def forward(self, x, bias):
        return x + self.SelfAttention(self.layer_norm(x), bias)


class T5GatedGeluDense(torch.nn.Module):
    def __init__(self, config, operations, dtype=None, device=None):
        super().__init__()
        self.wi_0 = operations.Linear(config.d_model, config.d_ff, bias=False, dtype=dtype, device=device)
        self.wi_1 = operations.Linear(config.d_model, config.d_ff, bias=False, dtype=dtype, device=device)
        self.wo = operations.Linear(config.d_ff, config.d_model, bias=False, dtype=dtype, device=device)

    def forward(self, x):
        return self.wo(F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x))


class T5LayerFF(torch.nn.Module):
    def __init__(self, config, operations, dtype=None, device=None):
        super().__init__()
        self.DenseReluDense = T5GatedGeluDense(config, operations, dtype, device)
        self.layer_norm = operations.RMSNorm(config.d_model, eps=LAYER_NORM_EPS, dtype=dtype, device=device)

    def forward(self, x):
        return x + self.DenseReluDense(self.layer_norm(x))


class T5Block(torch.nn.Module):
    def __init__(self, config, has_relative_bias, operations, dtype=None, device=None):
        super().__init__()
        self.layer = torch.nn.ModuleList([T5LayerSelfAttention(config, has_relative_bias, operations, dtype, device),
                                          T5LayerFF(config, operations, dtype, device)])

    def forward(self, x, bias):
        return self.layer[1](self.layer[0](x, bias))


class T5EncoderStack(torch.nn.Module):
    def __init__(self, config, operations, dtype=None, device=None):
        super().__init__()
        self.block = torch.nn.ModuleList([T5Block(config, i == 0, operations, dtype, device)
                                          for i in range(config.num_layers)])
        self.final_layer_norm = operations.RMSNorm(config.d_model, eps=LAYER_NORM_EPS, dtype=dtype, device=device)


class ByT5Encoder(torch.nn.Module):
    """ByT5 / T5 v1.1 encoder: token ids -> last hidden state [B, L, d_model]."""

    def __init__(self, config: ByT5Config, operations, dtype=None, device=None):
        super().__init__()
        self.config = config
        self.shared = operations.Embedding(config.vocab_size, config.d_model, dtype=dtype, device=device)
        self.encoder = T5EncoderStack(config, operations, dtype, device)

    def position_bias(self, length: int, dtype: torch.dtype, device) -> torch.Tensor:
        """[1, heads, L, L] learned relative-position bias (block 0's table, used by every block)."""
        config = self.config
        buckets = relative_position_buckets(length, config.relative_attention_num_buckets,
                                            config.relative_attention_max_distance, device)
        table = self.encoder.block[0].layer[0].SelfAttention.relative_attention_bias
        values = table(buckets, out_dtype=dtype).to(dtype)  # [L, L, heads]
        return values.permute(2, 0, 1).unsqueeze(0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                dtype: torch.dtype | None = None) -> torch.Tensor:
        """input_ids [B, L]; attention_mask [B, L] (nonzero = real token; None = all real); dtype: the
        activations' dtype (default: the token table's, float32 for a quantized table)."""
        x = self.shared(input_ids, out_dtype=dtype)
        x = x.to(dtype) if dtype is not None else x
        bias = self.position_bias(input_ids.shape[1], x.dtype, x.device)
        if attention_mask is not None:
            padding = (attention_mask == 0)[:, None, None, :].to(x.device)
            bias = bias.masked_fill(padding, torch.finfo(x.dtype).min)  # [B, heads, L, L]
        for block in self.encoder.block:
            x = block(x, bias)
        return self.encoder.final_layer_norm(x)


def build_encoder(config: ByT5Config, operations=None, dtype=None) -> ByT5Encoder:
    """The encoder on the meta device (weights to be assigned); layers from `operations`."""
    if operations is None:
        from ..ops import StandaloneOps

        operations = StandaloneOps
    return ByT5Encoder(config, operations, dtype=dtype, device="meta").eval().requires_grad_(False)


def check_length(tokenizer, text: str, max_tokens: int, what: str = "text") -> list[int]:
    """`text`'s token ids (end token included), or a ValueError when there are more than `max_tokens`
    (the official pipelines cut such text; a cut text silently loses letters)."""
    ids = list(tokenizer(text)["input_ids"])
    if len(ids) > max_tokens:
        raise ValueError(
            f"the {what} is {len(ids)} tokens long for the ByT5 encoder (one per UTF-8 byte, plus the end "
            f"token); the limit is {max_tokens}. Shorten it (it begins: {text[:60]!r})"
        )
    return ids


@torch.no_grad()
def encode_texts(model: ByT5Encoder, tokenizer, texts: Sequence[str | None], max_tokens: int, device=None,
                 dtype: torch.dtype | None = None, what: str = "text") -> tuple[torch.Tensor, torch.Tensor] | None:
    """Strings -> (states [B, L, d_model], mask [B, L] bool), L the longest token count in the batch.

    A None entry has no text: its row is zeros with an all-false mask (nothing to attend to). All None:
    returns None. Each text gets the end token appended (as transformers' ByT5Tokenizer does); one longer
    than `max_tokens` with it raises ValueError (check_length) before anything runs. Padded positions are
    zeros.
    """
    token_lists = [None if text is None else check_length(tokenizer, text, max_tokens, what) for text in texts]
    present = [ids for ids in token_lists if ids is not None]
    if not present:
        return None
    device = device or next(model.parameters()).device
    longest = max(len(ids) for ids in present)
    input_ids = torch.zeros((len(texts), longest), dtype=torch.long)
    mask = torch.zeros((len(texts), longest), dtype=torch.bool)
    for i, ids in enumerate(token_lists):
        if ids is not None:
            input_ids[i, :len(ids)] = torch.tensor(ids)
            mask[i, :len(ids)] = True
    input_ids, mask = input_ids.to(device), mask.to(device)
    rows = mask.any(-1)
    states = model(input_ids[rows], attention_mask=mask[rows], dtype=dtype)
    out = states.new_zeros((len(texts), longest, states.shape[-1]))
    out[rows] = states * mask[rows].unsqueeze(-1).to(states.dtype)
    return out, mask


SPEC = TextEncoderSpec(
    kind="byt5",
    display_name="ByT5 glyph text encoder",
    tokenizer_name="byt5",
    config_from_shapes=config_from_shapes,
    build=build_encoder,
    needs_tokenizer_files=False,
)
