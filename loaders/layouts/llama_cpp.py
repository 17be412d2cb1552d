"""llama.cpp's names for text encoders -> the transformers / ComfyUI names the text-encoder loader reads:
decoder-only language models (Qwen2 / Qwen2-VL converted by llama.cpp's convert_hf_to_gguf.py) and T5
encoders (architectures "t5" / "t5encoder", as ComfyUI-GGUF reads them: ByT5 glyph encoders).

Pure renames. For some architectures llama.cpp also permutes the q/k rows (to its RoPE layout); undoing
that is not implemented, so those architectures are refused by name rather than loaded wrong.
"""

from __future__ import annotations

from ..errors import ModelFileError, brief
from .base import Layout, Take, rename

LAYER = "blk.{i}."
OURS = "model.layers.{i}."

LLAMA_CPP = Layout("llama_cpp", (
    *rename("token_embd.{p}", "model.embed_tokens.{p}"),
    *rename("output_norm.{p}", "model.norm.{p}"),
    *rename("output.{p}", "lm_head.{p}"),
    *rename(LAYER + "attn_norm.{p}", OURS + "input_layernorm.{p}"),
    *rename(LAYER + "ffn_norm.{p}", OURS + "post_attention_layernorm.{p}"),
    *rename(LAYER + "attn_q.{p}", OURS + "self_attn.q_proj.{p}"),
    *rename(LAYER + "attn_k.{p}", OURS + "self_attn.k_proj.{p}"),
    *rename(LAYER + "attn_v.{p}", OURS + "self_attn.v_proj.{p}"),
    *rename(LAYER + "attn_output.{p}", OURS + "self_attn.o_proj.{p}"),
    *rename(LAYER + "ffn_gate.{p}", OURS + "mlp.gate_proj.{p}"),
    *rename(LAYER + "ffn_up.{p}", OURS + "mlp.up_proj.{p}"),
    *rename(LAYER + "ffn_down.{p}", OURS + "mlp.down_proj.{p}"),
), "llama.cpp names")

T5_LAYER = "enc.blk.{i}."
T5_ATTENTION = "encoder.block.{i}.layer.0."
T5_FEED_FORWARD = "encoder.block.{i}.layer.1."

LLAMA_CPP_T5 = Layout("llama_cpp", (
    *rename("token_embd.{p}", "shared.{p}"),
    *rename("enc.output_norm.{p}", "encoder.final_layer_norm.{p}"),
    *rename(T5_LAYER + "attn_norm.{p}", T5_ATTENTION + "layer_norm.{p}"),
    *rename(T5_LAYER + "attn_q.{p}", T5_ATTENTION + "SelfAttention.q.{p}"),
    *rename(T5_LAYER + "attn_k.{p}", T5_ATTENTION + "SelfAttention.k.{p}"),
    *rename(T5_LAYER + "attn_v.{p}", T5_ATTENTION + "SelfAttention.v.{p}"),
    *rename(T5_LAYER + "attn_o.{p}", T5_ATTENTION + "SelfAttention.o.{p}"),
    *rename(T5_LAYER + "attn_rel_b.{p}", T5_ATTENTION + "SelfAttention.relative_attention_bias.{p}"),
    *rename(T5_LAYER + "ffn_norm.{p}", T5_FEED_FORWARD + "layer_norm.{p}"),
    *rename(T5_LAYER + "ffn_gate.{p}", T5_FEED_FORWARD + "DenseReluDense.wi_0.{p}"),
    *rename(T5_LAYER + "ffn_up.{p}", T5_FEED_FORWARD + "DenseReluDense.wi_1.{p}"),
    *rename(T5_LAYER + "ffn_down.{p}", T5_FEED_FORWARD + "DenseReluDense.wo.{p}"),
), "llama.cpp T5 names")

# Architectures whose llama.cpp conversion permutes the q/k rows.
PERMUTED_QK_ARCHITECTURES = {"llama", "mistral", "mistral3"}


def transformers_names(keys, architecture, path=None) -> dict[str, str]:
    """{llama.cpp name: transformers name} for the tensors `keys` of a file of `architecture`
    (GGUF general.architecture); a ModelFileError for an architecture whose q/k rows are permuted, or for
    two tensors that would get one name."""
    if architecture in PERMUTED_QK_ARCHITECTURES:
        raise ModelFileError(path, f"is a llama.cpp GGUF of architecture {brief(architecture)}, whose attention "
                             "weights llama.cpp stores permuted; reading those is not supported yet",
                             expected="a Qwen2/Qwen2.5-VL text encoder GGUF")
    plan = LLAMA_CPP.plan({key: () for key in keys}, path)
    return {source.key: name for name, source in plan.items() if isinstance(source, Take)}


def t5_names(keys, path=None) -> dict[str, str]:
    """{llama.cpp name: ComfyUI / transformers name} for the tensors `keys` of a T5 encoder GGUF."""
    plan = LLAMA_CPP_T5.plan({key: () for key in keys}, path)
    return {source.key: name for name, source in plan.items() if isinstance(source, Take)}
