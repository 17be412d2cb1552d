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
from ..model_defs.qwen_image.vae import QwenImageVAE, QwenImageVAEConfig
from ..model_defs.hunyuan_image.refiner_vae import HunyuanImageRefinerVAE, HunyuanImageRefinerVAEConfig
from ..model_defs.hunyuan_image.transformer import HunyuanImageConfig, HunyuanImageTransformer
from ..model_defs.hunyuan_image.vae import HunyuanImageVAE, HunyuanImageVAEConfig
from ..model_defs.text_encoders import byt5, qwen25vl

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


# The real VAE's structure (four stages, two residual blocks each) at a width of 8 channels.
TINY_QWEN_VAE = QwenImageVAEConfig(dim=8, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=2,
                                   temperal_downsample=(False, True, True))


def randomise_vae_(module: torch.nn.Module, seed: int) -> None:
    """Random values for every VAE parameter (RMS gammas and biases too), scaled so activations stay of
    order one through the whole network and decoded values mostly stay inside the [-1, 1] clamp."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.3 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:  # a causal conv sees one temporal slice for images: fan-in without the time taps
                fan_in = p[0].numel() // (p.shape[2] if p.ndim == 5 else 1)
                p.copy_(noise / fan_in ** 0.5)
            if "decoder.conv_out" in name or "decoder.head.2" in name:
                p.mul_(0.3)


def tiny_qwen_vae_state_dict(config: QwenImageVAEConfig = TINY_QWEN_VAE, seed: int = 0) -> dict[str, torch.Tensor]:
    """ComfyUI-layout (Wan 2.1 names) weights of a tiny Qwen-Image VAE."""
    vae = QwenImageVAE(config)
    randomise_vae_(vae, seed)
    return {k: v.detach().clone() for k, v in vae.state_dict().items()}


def write_safetensors(state_dict: dict, path, dtype: torch.dtype | None = None, prefix: str = "",
                      metadata: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {prefix + k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
               for k, v in state_dict.items()}
    save_file(tensors, str(path), metadata=metadata)
    return path


def tiny_qwen_text_state_dict(vocab_size: int, seed: int = 0, layers: int = 2) -> dict[str, torch.Tensor]:
    """ComfyUI single-file names (model.embed_tokens, model.layers.N, model.norm) of a tiny Qwen2.5-VL
    language model: one 128-dim head, `layers` layers, hidden 128 (the tiny diffusion models' text width)."""
    config = qwen25vl.QwenTextConfig(vocab_size=vocab_size, hidden_size=TINY_QWEN_DIT.joint_attention_dim,
                                     intermediate_size=256, num_hidden_layers=layers, num_key_value_heads=1)
    model = qwen25vl.build_text_model(config)
    return {"model." + k: v for k, v in random_state_dict(model, seed, scale=0.1).items()}


# ByT5 with Glyph-SDXL-v2's token table (1510 rows) at a small width: 2 blocks, 2 heads of 32, widths
# that are multiples of 32 so every matrix can be stored in GGUF blocks.
TINY_BYT5 = byt5.ByT5Config(vocab_size=1510, d_model=64, d_kv=32, d_ff=128, num_layers=2, num_heads=2)


def tiny_byt5_state_dict(config: byt5.ByT5Config = TINY_BYT5, seed: int = 0) -> dict[str, torch.Tensor]:
    """ComfyUI single-file names (shared.weight, encoder.block.N..., encoder.final_layer_norm) of a tiny
    ByT5 glyph encoder, seeded random values (small: T5's unscaled attention turns large random weights
    into near one-hot attention, which amplifies any weight error many times)."""
    return random_state_dict(byt5.build_encoder(config), seed, scale=0.05)


# HunyuanImage 2.1's structure (double then single blocks, token refiner, ByT5 mapper) at hidden 64 (2 heads
# of 32, 2-D RoPE 16 + 16), reading the tiny Qwen2.5-VL's 128-wide states and the tiny ByT5's.
TINY_HUNYUAN_DIT = HunyuanImageConfig(hidden_size=64, num_heads=2, depth_double=2, depth_single=2,
                                      axes_dims=(16, 16), context_dim=TINY_QWEN_DIT.joint_attention_dim,
                                      byt5_in_dim=TINY_BYT5.d_model, byt5_hidden_dim=64)
TINY_HUNYUAN_DISTILLED_DIT = HunyuanImageConfig(**{**TINY_HUNYUAN_DIT.__dict__, "guidance_embed": True,
                                                   "meanflow": True})


def tiny_hunyuan_dit_state_dict(config: HunyuanImageConfig = TINY_HUNYUAN_DIT, seed: int = 0) -> dict[str, torch.Tensor]:
    """ComfyUI-layout weights of a tiny HunyuanImage 2.1 DiT (base, or distilled with that config)."""
    return random_state_dict(HunyuanImageTransformer(config, StandaloneOps, device="meta"), seed)


# The real 32x VAE's structure (six stages, 64 latent channels) at narrow widths.
TINY_HUNYUAN_VAE = HunyuanImageVAEConfig(block_out_channels=(32, 32, 64, 64, 128, 128))


def tiny_hunyuan_vae_state_dict(config: HunyuanImageVAEConfig = TINY_HUNYUAN_VAE, seed: int = 0) -> dict[str, torch.Tensor]:
    """ComfyUI-layout (= official) weights of a tiny HunyuanImage 2.1 VAE."""
    vae = HunyuanImageVAE(config)
    randomise_vae_(vae, seed)
    return {k: v.detach().clone() for k, v in vae.state_dict().items()}


# The refiner VAE's structure (five stages, 16x, the last two downsamplings and first two upsamplings
# "temporal", 32 latent channels) at narrow widths.
TINY_HUNYUAN_REFINER_VAE = HunyuanImageRefinerVAEConfig(block_out_channels=(32, 32, 64, 64, 128))


def randomise_refiner_vae_(module: torch.nn.Module, seed: int) -> None:
    """Random values for every parameter of a refiner VAE (ours or diffusers'), as randomise_vae_ but for
    its causal convs, which add all three temporal taps on an image (replicate padding): a conv's fan-in
    counts the taps, and each residual branch's last conv (conv2) is at 0.3 gain, so the residual stream
    and the latents stay of order one (at full gain the latents reach ~14 and fp32 rounding alone differs
    by 1e-5 between implementations)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.3 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)
                if ".conv2." in name:
                    p.mul_(0.3)
            if "decoder.conv_out" in name:
                p.mul_(0.3)


def tiny_hunyuan_refiner_vae_state_dict(config: HunyuanImageRefinerVAEConfig = TINY_HUNYUAN_REFINER_VAE,
                                        seed: int = 0) -> dict[str, torch.Tensor]:
    """ComfyUI-layout (= official) weights of a tiny HunyuanImage 2.1 refiner VAE."""
    vae = HunyuanImageRefinerVAE(config)
    randomise_refiner_vae_(vae, seed)
    return {k: v.detach().clone() for k, v in vae.state_dict().items()}


def _stand_in_kind(name: str) -> str:
    """Which family's tiny file stands in for a file name (demo mode only: real files are recognised by
    their tensors). HunyuanImage 2.1's names contain "hunyuan", its glyph encoder's "byt5"."""
    name = name.lower()
    if "byt5" in name:
        return "byt5"
    if "hunyuan" in name:
        if "refiner" in name:
            return "hunyuan_refiner"
        return "hunyuan_distilled" if "distill" in name else "hunyuan"
    return "qwen"


def write_tiny_component(folder: str, target, node_inputs: dict | None = None) -> Path:
    """A tiny stand-in for a file a workflow names: diffusion model, text encoder (with its tokenizer
    beside it) or VAE, of the family the file name says (see _stand_in_kind; Qwen-Image otherwise)."""
    from ..loaders.tokenizers import load_tokenizer
    from .tiny_tokenizer import write_byt5_tokenizer, write_tiny_qwen_tokenizer

    target = Path(target)
    kind = _stand_in_kind(target.name)
    if folder == "diffusion_models":
        state = {"qwen": tiny_qwen_dit_state_dict, "byt5": tiny_qwen_dit_state_dict,
                 "hunyuan": tiny_hunyuan_dit_state_dict,
                 "hunyuan_distilled": lambda: tiny_hunyuan_dit_state_dict(TINY_HUNYUAN_DISTILLED_DIT),
                 "hunyuan_refiner": lambda: tiny_hunyuan_refiner_dit_state_dict()}[kind]()
        if kind == "qwen" and "2511" in target.name:
            # Qwen-Image-Edit-2511's files carry an empty marker tensor (its references are modulated at
            # timestep zero); the stand-in does too, so a demo runs the variant the name promises.
            from ..model_defs.qwen_image.edit import ZERO_COND_MARKER
            state[ZERO_COND_MARKER] = torch.empty(0)
        return write_safetensors(state, target, dtype=torch.bfloat16)
    if folder == "vae":
        if "refiner" in target.name.lower():  # HunyuanImage 2.1's refiner VAE (hunyuan_image_refiner_vae_fp16)
            return write_safetensors(tiny_hunyuan_refiner_vae_state_dict(), target, dtype=torch.bfloat16)
        state = tiny_hunyuan_vae_state_dict() if kind.startswith("hunyuan") else tiny_qwen_vae_state_dict()
        return write_safetensors(state, target, dtype=torch.bfloat16)
    if folder == "text_encoders":
        if kind == "byt5":
            write_byt5_tokenizer(target.parent / f"{target.stem}_tokenizer")
            return write_safetensors(tiny_byt5_state_dict(), target, dtype=torch.bfloat16)
        tokenizer_dir = write_tiny_qwen_tokenizer(target.parent / f"{target.stem}_tokenizer")
        vocab = len(load_tokenizer(tokenizer_dir))
        # 4 layers: HunyuanImage 2.1 reads the third-from-last hidden state, a layer's output. The vision
        # tower is part of the file, as in ComfyUI's qwen_2.5_vl_7b (Qwen-Image-Edit reads images with it).
        state = {**tiny_qwen_text_state_dict(vocab, layers=4), **tiny_qwen_vision_state_dict()}
        return write_safetensors(state, target, dtype=torch.bfloat16)
    if folder == "prompt_enhancers":
        name = target.name.lower()
        kind = "hunyuan" if any(word in name for word in ("hunyuan", "reprompt", "promptenhancer")) else "qwen2"
        form = "gguf" if name.endswith(".gguf") else "safetensors" if name.endswith((".safetensors", ".sft")) \
            else "folder"
        return write_tiny_prompt_enhancer(target, kind, form)[0]
    raise ValueError(f"no tiny stand-in for models/{folder}")


# Qwen2.5-VL's vision tower at a small width: two 80-dim heads (the published head size, which the loader
# assumes), 8 blocks so that windowed attention (blocks 0-6) and full attention (block 7, the published
# every-eighth rule) both run, merged tokens 128 wide (the tiny language model's width).
def tiny_qwen_vision_config():
    from ..model_defs.text_encoders.qwen25vl_vision import QwenVisionConfig
    return QwenVisionConfig(hidden_size=160, depth=8, intermediate_size=128,
                            out_hidden_size=TINY_QWEN_DIT.joint_attention_dim)


def tiny_qwen_vision_state_dict(config=None, seed: int = 0) -> dict[str, torch.Tensor]:
    """ComfyUI single-file names (visual.patch_embed, visual.blocks.N, visual.merger) of a tiny
    Qwen2.5-VL vision tower, seeded random values (to be stored beside tiny_qwen_text_state_dict's)."""
    from ..model_defs.text_encoders import qwen25vl_vision
    model = qwen25vl_vision.build_vision_model(config or tiny_qwen_vision_config())
    return {"visual." + k: v for k, v in random_state_dict(model, seed, scale=0.1).items()}


# --- llama.cpp's mmproj GGUF of the vision tower ----------------------------------------------------------
# What convert_hf_to_gguf.py --mmproj writes for Qwen2.5-VL (MmprojModel + Qwen2VLVisionModel; the facts are
# listed in loaders/layouts/llama_cpp_vision.py): names, the q/k/v and temporal patch splits, stored types
# and metadata. general.file_type per output type (gguf's LlamaFileType).
MMPROJ_FILE_TYPES = {"F32": 0, "F16": 1, "Q8_0": 7, "BF16": 32}
_MMPROJ_RENAMES = [  # HF name (without visual.) -> GGUF name, after the splits
    (r"blocks\.(\d+)\.attn\.proj\.", r"v.blk.\1.attn_out."), (r"blocks\.(\d+)\.norm1\.", r"v.blk.\1.ln1."),
    (r"blocks\.(\d+)\.norm2\.", r"v.blk.\1.ln2."), (r"blocks\.(\d+)\.mlp\.gate_proj\.", r"v.blk.\1.ffn_gate."),
    (r"blocks\.(\d+)\.mlp\.up_proj\.", r"v.blk.\1.ffn_up."),
    (r"blocks\.(\d+)\.mlp\.down_proj\.", r"v.blk.\1.ffn_down."),
    (r"merger\.ln_q\.", "v.post_ln."), (r"merger\.mlp\.(\d+)\.", r"mm.\1."),
]


def llama_cpp_mmproj_tensors(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{GGUF name: tensor} of a vision tower given in ComfyUI's names (`visual.*`, or the tower's own):
    the patch embedding split into its two temporal slices (v.patch_embd.weight, v.patch_embd.weight.1),
    each block's qkv split in q|k|v row order (attn_q/attn_k/attn_v), everything else renamed."""
    import re

    out = {}
    for key, tensor in state_dict.items():
        name = key[len("visual."):] if key.startswith("visual.") else key
        if name == "patch_embed.proj.weight":
            out["v.patch_embd.weight"], out["v.patch_embd.weight.1"] = tensor[:, :, 0], tensor[:, :, 1]
            continue
        qkv = re.fullmatch(r"blocks\.(\d+)\.attn\.qkv\.(\w+)", name)
        if qkv:
            width = tensor.shape[0] // 3
            for i, part in enumerate("qkv"):
                out[f"v.blk.{qkv[1]}.attn_{part}.{qkv[2]}"] = tensor[i * width:(i + 1) * width]
            continue
        for pattern, replacement in _MMPROJ_RENAMES:
            name, count = re.subn("^" + pattern, replacement, name)
            if count:
                break
        else:
            raise ValueError(f"not a vision-tower tensor: {key}")
        out[name] = tensor
    return out


def mmproj_storage_type(name: str, shape, file_type: str) -> str:
    """The GGML type llama.cpp's converter stores one mmproj tensor in: patch-embedding slices F16 in an
    f16 file, else F32; 1-D tensors and *_norm.weight F32; other matrices the file's type, Q8_0 falling
    back to F16 for rows that are not whole 32-value blocks."""
    if name.startswith("v.patch_embd.weight"):
        return "F16" if file_type == "F16" else "F32"
    if len(shape) <= 1 or name.endswith("_norm.weight"):
        return "F32"
    if file_type == "Q8_0" and shape[-1] % 32:
        return "F16"
    return file_type


def write_llama_cpp_mmproj(state_dict: dict[str, torch.Tensor], path, file_type: str = "F16",
                           name: str | None = None, projector_type: str = "qwen2.5vl_merger",
                           n_wa_pattern: int = 8, leave_out: tuple[str, ...] = ()) -> Path:
    """A Qwen2.5-VL vision tower (ComfyUI's `visual.*` names, e.g. tiny_qwen_vision_state_dict) written as
    llama.cpp's convert_hf_to_gguf.py --mmproj writes it, in `file_type` (F32, F16, BF16 or Q8_0).
    projector_type / n_wa_pattern / leave_out (GGUF tensor names not written): to make foreign or damaged
    files for tests."""
    import gguf
    import numpy as np

    from ..model_defs.text_encoders import qwen25vl_vision
    from ..model_defs.text_encoders.qwen_image_processor import CLIP_MEAN, CLIP_STD

    if file_type not in MMPROJ_FILE_TYPES:
        raise ValueError(f"llama.cpp writes mmproj files as {', '.join(MMPROJ_FILE_TYPES)}, not {file_type}")
    shapes = {(k[len("visual."):] if k.startswith("visual.") else k): tuple(v.shape) for k, v in state_dict.items()}
    config = qwen25vl_vision.config_from_shapes(shapes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch="clip")
    writer.add_type("mmproj")
    if name:
        writer.add_name(name)
    writer.add_file_type(MMPROJ_FILE_TYPES[file_type])
    writer.add_clip_has_vision_encoder(True)
    writer.add_vision_projection_dim(config.out_hidden_size)
    writer.add_vision_image_size(560)
    writer.add_vision_patch_size(config.patch_size)
    writer.add_vision_embedding_length(config.hidden_size)
    writer.add_vision_feed_forward_length(config.intermediate_size)
    writer.add_vision_block_count(config.depth)
    writer.add_vision_head_count(config.num_heads)
    writer.add_vision_image_mean(list(CLIP_MEAN))
    writer.add_vision_image_std(list(CLIP_STD))
    writer.add_clip_projector_type(projector_type)
    writer.add_vision_use_silu(True)
    writer.add_vision_n_wa_pattern(n_wa_pattern)
    writer.add_vision_attention_layernorm_eps(1e-6)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for tensor_name, tensor in llama_cpp_mmproj_tensors(state_dict).items():
        if tensor_name in leave_out:
            continue
        array = tensor.detach().float().contiguous().numpy()
        qtype = gguf.GGMLQuantizationType[mmproj_storage_type(tensor_name, array.shape, file_type)]
        writer.add_tensor(tensor_name, gguf.quants.quantize(np.ascontiguousarray(array), qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


_LLAMA_CPP_TEXT_RENAMES = [  # ComfyUI / transformers language-model names -> llama.cpp's (qwen2vl)
    ("model.embed_tokens.", "token_embd."), ("model.norm.", "output_norm."), ("lm_head.", "output."),
    ("model.layers.", "blk."), (".input_layernorm.", ".attn_norm."), (".post_attention_layernorm.", ".ffn_norm."),
    (".self_attn.q_proj.", ".attn_q."), (".self_attn.k_proj.", ".attn_k."), (".self_attn.v_proj.", ".attn_v."),
    (".self_attn.o_proj.", ".attn_output."), (".mlp.gate_proj.", ".ffn_gate."), (".mlp.up_proj.", ".ffn_up."),
    (".mlp.down_proj.", ".ffn_down."),
]


def write_llama_cpp_text_encoder(state_dict: dict[str, torch.Tensor], path, file_type: str = "Q8_0") -> Path:
    """A Qwen2.5-VL language model (tiny_qwen_text_state_dict's names) as llama.cpp writes it: its names,
    architecture "qwen2vl", 1-D tensors F32, matrices in `file_type` (F16 or Q8_0, F16 where rows do not
    fill Q8_0 blocks), and no vision tower (llama.cpp puts that in the mmproj file)."""
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch="qwen2vl")
    for key, tensor in state_dict.items():
        if key.startswith("visual."):
            continue
        name = key
        for old, new in _LLAMA_CPP_TEXT_RENAMES:
            name = name.replace(old, new)
        array = tensor.detach().float().contiguous().numpy()
        kind = "F32" if array.ndim <= 1 else ("F16" if file_type == "Q8_0" and array.shape[-1] % 32 else file_type)
        qtype = gguf.GGMLQuantizationType[kind]
        writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --- HunyuanImage 2.1 refiner DiT (issue 11) ---------------------------------------------------------------------
# The refiner's structure (3-D patch (1, 1, 1), 128 input channels = noisy + conditioning latent, 64 out, RoPE
# over (frame, row, column) in the published 1 : 3.5 : 3.5 split, embedded guidance, time_r_in as in the
# official checkpoint, no ByT5 mapper) at hidden 64 (2 heads of 32), reading the tiny Qwen2.5-VL's states.
TINY_HUNYUAN_REFINER_DIT = HunyuanImageConfig(hidden_size=64, num_heads=2, depth_double=2, depth_single=2,
                                              in_channels=128, out_channels=64, patch_size=(1, 1, 1),
                                              axes_dims=(4, 14, 14), context_dim=TINY_QWEN_DIT.joint_attention_dim,
                                              byt5=False, guidance_embed=True, meanflow=True)


def tiny_hunyuan_refiner_dit_state_dict(config: HunyuanImageConfig = TINY_HUNYUAN_REFINER_DIT,
                                        seed: int = 0) -> dict[str, torch.Tensor]:
    """ComfyUI-layout weights of a tiny HunyuanImage 2.1 refiner DiT (time_r_in included, as published)."""
    return random_state_dict(HunyuanImageTransformer(config, StandaloneOps, device="meta"), seed)


def write_tiny_hunyuan_refiner_dit(path, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> Path:
    """A tiny refiner DiT file in the ComfyUI layout (as ComfyUI's repack names it), for tests and stand-ins."""
    return write_safetensors(tiny_hunyuan_refiner_dit_state_dict(seed=seed), path, dtype=dtype)


# --- tiny prompt-enhancer language models --------------------------------------------------------------------
# Chat language models with the real architectures at a tiny size: Qwen2 (any Qwen2.5-Instruct) and Hunyuan
# dense (HunyuanImage 2.1's reprompt model / PromptEnhancer-7B: tied embeddings, q/k norms, NTK-alpha RoPE
# written the way its published config.json does), with the tiny chat tokenizer. Weights are transformers'
# own seeded initialisation at a wider spread, so that the next-token distributions are far from flat.
TINY_CHAT_LM = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "max_position_embeddings": 1024, "initializer_range": 0.2,
                "rms_norm_eps": 1e-6}
PROMPT_ENHANCER_FORMS = ("folder", "safetensors", "fp8", "gguf", "gguf_alone")


def tiny_chat_lm_config(kind: str, vocab_size: int, eos_token_id: int, pad_token_id: int = 0) -> dict:
    """config.json of a tiny chat LM: kind "qwen2" or "hunyuan" (hunyuan_v1_dense, as the reprompt model's
    published config.json writes it: rope_scaling with a fixed NTK alpha, q/k norms, tied embeddings)."""
    common = {**TINY_CHAT_LM, "vocab_size": vocab_size, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id,
              "bos_token_id": None, "torch_dtype": "float32"}
    if kind == "qwen2":
        return {**common, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "rope_theta": 10000.0,
                "tie_word_embeddings": False}
    if kind == "hunyuan":
        head_dim = TINY_CHAT_LM["hidden_size"] // TINY_CHAT_LM["num_attention_heads"]
        return {**common, "architectures": ["HunYuanDenseV1ForCausalLM"], "model_type": "hunyuan_v1_dense",
                "head_dim": head_dim, "attention_head_dim": head_dim, "use_qk_norm": True, "use_cla": False,
                "tie_word_embeddings": True, "rope_theta": 10000.0,
                "rope_scaling": {"alpha": 1000.0, "beta_fast": 32, "beta_slow": 1, "factor": 1.0, "mscale": 1.0,
                                 "mscale_all_dim": 1.0, "type": "dynamic"}}
    raise ValueError(f"no tiny chat LM of kind {kind!r} (qwen2, hunyuan)")


def tiny_chat_lm(kind: str = "qwen2", seed: int = 0, tokenizer_dir=None):
    """(transformers model, tokenizer folder) of a tiny chat LM with random seeded weights."""
    import json
    import tempfile

    from transformers import AutoConfig, AutoModelForCausalLM

    from ..loaders.tokenizers import load_tokenizer
    from .tiny_tokenizer import write_tiny_chat_tokenizer

    tokenizer_dir = Path(tokenizer_dir or tempfile.mkdtemp(prefix="tiny-chat-tokenizer-"))
    tokenizer = load_tokenizer(write_tiny_chat_tokenizer(tokenizer_dir))
    config_dict = tiny_chat_lm_config(kind, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "config.json").write_text(json.dumps(config_dict))
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    return model, tokenizer_dir


def _lm_state_dict(model) -> dict[str, torch.Tensor]:
    """The model's tensors as save_pretrained stores them (a tied output weight left out)."""
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    return state


def _companion(folder: Path, model, tokenizer_dir: Path) -> Path:
    """config.json, generation_config.json and the tokenizer files in `folder`."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    for file in Path(tokenizer_dir).iterdir():
        shutil.copy(file, folder / file.name)
    return folder


def fp8_scaled_lm_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's scaled FP8 layout of a language model: every 2-D weight but the token table in
    float8_e4m3fn with a float32 `scale_weight` (amax / 448), the `scaled_fp8` marker; the rest as is."""
    out = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for key, tensor in state.items():
        if tensor.ndim == 2 and key.endswith(".weight") and "embed_tokens" not in key:
            scale = tensor.abs().max().float() / 448.0
            out[key] = (tensor.float() / scale).to(torch.float8_e4m3fn)
            out[key[: -len("weight")] + "scale_weight"] = scale.reshape(())
        else:
            out[key] = tensor
    return out


def write_llama_cpp_lm(model, tokenizer, path, file_type: str = "Q8_0", with_tokenizer: bool = False) -> Path:
    """A tiny chat LM as llama.cpp's converter writes it: llama.cpp's tensor names (from the gguf package's
    table for the architecture), 1-D tensors F32, matrices in `file_type` (Q8_0 or F16), a tied output
    weight left out; the architecture's hyperparameters and, with_tokenizer, the tokenizer (gpt2 BPE
    vocabulary, merges, special ids, chat template) in the metadata, as transformers reads them."""
    import gguf

    arch = {"qwen2": gguf.MODEL_ARCH.QWEN2, "hunyuan_v1_dense": gguf.MODEL_ARCH.HUNYUAN_DENSE}[model.config.model_type]
    name = gguf.MODEL_ARCH_NAMES[arch]
    c = model.config
    table = gguf.get_tensor_name_map(arch, c.num_hidden_layers)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch=name)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_embedding_length(c.hidden_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
    writer.add_vocab_size(c.vocab_size)
    if with_tokenizer:
        _add_gguf_tokenizer(writer, tokenizer)
    for key, tensor in _lm_state_dict(model).items():
        base, _, suffix = key.rpartition(".")
        array = tensor.float().numpy()
        kind = "F32" if array.ndim <= 1 else ("F16" if file_type == "Q8_0" and array.shape[-1] % 32 else file_type)
        qtype = gguf.GGMLQuantizationType[kind]
        writer.add_tensor(f"{table.get_name(base)}.{suffix}", gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_gguf_tokenizer(writer, tokenizer) -> None:
    import json

    import gguf

    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    special = set(tokenizer.all_special_tokens)
    added = set(tokenizer.get_added_vocab())
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.USER_DEFINED if t in added
             else gguf.TokenType.NORMAL for t in tokens]
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(tokenizer.chat_template)


def write_tiny_prompt_enhancer(target, kind: str = "qwen2", form: str = "folder", seed: int = 0,
                               file_type: str = "Q8_0"):
    """A tiny chat LM saved as users have such models; returns (path to pick, transformers model).

    form: "folder" (a Hugging Face folder: config.json, generation_config.json, tokenizer, model.safetensors),
    "safetensors" (one file + a `<stem>/` folder beside it with config and tokenizer), "fp8" (likewise, in
    ComfyUI's scaled FP8), "gguf" (a llama.cpp GGUF + `<stem>/` beside it), "gguf_alone" (a llama.cpp GGUF
    holding its configuration and tokenizer in its metadata, nothing beside it)."""
    import tempfile

    from ..loaders.tokenizers import load_tokenizer

    target = Path(target)
    with tempfile.TemporaryDirectory() as scratch:
        model, tokenizer_dir = tiny_chat_lm(kind, seed, Path(scratch) / "tokenizer")
        if form == "folder":
            _companion(target, model, tokenizer_dir)
            write_safetensors(_lm_state_dict(model), target / "model.safetensors")
            return target, model
        if form in ("safetensors", "fp8"):
            state = _lm_state_dict(model)
            write_safetensors(fp8_scaled_lm_state_dict(state) if form == "fp8" else state, target)
            _companion(target.parent / target.stem, model, tokenizer_dir)
            return target, model
        if form in ("gguf", "gguf_alone"):
            tokenizer = load_tokenizer(tokenizer_dir)
            write_llama_cpp_lm(model, tokenizer, target, file_type, with_tokenizer=form == "gguf_alone")
            if form == "gguf":
                _companion(target.parent / target.stem, model, tokenizer_dir)
            return target, model
    raise ValueError(f"unknown form {form!r}; known: {', '.join(PROMPT_ENHANCER_FORMS)}")
