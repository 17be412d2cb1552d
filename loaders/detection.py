"""Tell what a model file holds from its tensor names and shapes: family, component, layout and prefix.

Users pick a file, never a config: the loaders ask `find_component(checkpoint, component)` for the part
they load. A file may hold several parts (a full ComfyUI checkpoint carries the diffusion model, the VAE
and text encoders under prefixes); each part is found by marker keys under whatever prefix it carries.
A file of another kind yields a clear `ModelFileError` saying what it is and where it belongs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .errors import ModelFileError, summarize_keys
from .formats.checkpoint import Checkpoint

DIFFUSION_MODEL = "diffusion_model"
VAE = "vae"
TEXT_ENCODER = "text_encoder"

COMPONENT_FOLDERS = {
    DIFFUSION_MODEL: "models/diffusion_models (or models/unet)",
    VAE: "models/vae",
    TEXT_ENCODER: "models/text_encoders (or models/clip)",
}


@dataclass(frozen=True)
class Identity:
    family: str  # "qwen_image", ... or a foreign family this pack does not run
    component: str  # DIFFUSION_MODEL, VAE, TEXT_ENCODER, "lora", ...
    layout: str  # "comfyui", "diffusers", "hf", ...
    prefix: str  # to strip from every key of this part
    description: str  # for messages: "Qwen-Image diffusion model (ComfyUI/diffusers layout)"
    supported: bool = True


@dataclass(frozen=True)
class Rule:
    family: str
    component: str
    layout: str
    description: str
    markers: tuple[str, ...]  # keys that must all be present (after the prefix)
    check: Callable[[dict, str], bool] | None = None  # an extra test on the shapes, given the prefix
    supported: bool = True
    # A fuller description read from the file's names (a variant, say), given the keys and the prefix.
    describe: Callable[[set, str], str] | None = None


def _shape(shapes, prefix, key):
    return tuple(shapes.get(prefix + key, ()))


# --- the HunyuanVideo key family: HunyuanImage 2.1, its refiner, HunyuanVideo -----------------------------------
# Names say the layout; shapes say the model. HunyuanImage 2.1 patchifies in 2-D: its image input weight
# is [hidden, 64, 1, 1]. The refiner and every HunyuanVideo patchify in 3-D (rank 5). The refiner takes 128
# channels (64 noisy + 64 conditioning) and has no pooled-CLIP `vector_in` (HunyuanVideo 1.0 has one) and no
# vision input (HunyuanVideo 1.5 has one). Text width and the ByT5 mapper do not separate them: HunyuanVideo
# 1.5 also reads 3584-wide Qwen2.5-VL states and has byt5_in.
HUNYUAN_LAYOUTS = {  # layout: (marker keys, image input weight, what only the distilled variant has, description)
    "comfyui": (("double_blocks.0.img_attn.qkv.weight", "txt_in.individual_token_refiner.blocks.0.norm1.weight"),
                "img_in.proj.weight", ("guidance_in.", "time_r_in."), "ComfyUI layout"),
    "fused_original": (("double_blocks.0.img_attn_qkv.weight", "txt_in.individual_token_refiner.blocks.0.norm1.weight"),
                       "img_in.proj.weight", ("guidance_in.", "time_r_in."), "original names, fused q/k/v"),
    "tencent": (("double_blocks.0.img_attn_q.weight", "txt_in.individual_token_refiner.blocks.0.norm1.weight"),
                "img_in.proj.weight", ("guidance_in.", "time_r_in."), "official Tencent layout, split q/k/v"),
    "diffusers": (("context_embedder.token_refiner.refiner_blocks.0.norm1.weight", "x_embedder.proj.weight"),
                  "x_embedder.proj.weight",
                  ("time_guidance_embed.guidance_embedder.", "time_guidance_embed.timestep_embedder_r."),
                  "diffusers layout"),
}
VIDEO_MARKERS = ("vector_in.", "time_text_embed.text_embedder.")  # HunyuanVideo 1.0's pooled CLIP input
VIDEO15_MARKERS = ("vision_in.", "cond_type_embedding.")  # HunyuanVideo 1.5's image conditioning


def _has_any(keys, prefix, starts) -> bool:
    starts = tuple(prefix + s for s in starts)
    return any(k.startswith(starts) for k in keys)


def _hunyuan_kind(shapes, prefix, image_in: str) -> str:
    """'image' (HunyuanImage 2.1), 'refiner' or 'video' for a model of the HunyuanVideo key family."""
    shape = _shape(shapes, prefix, image_in)
    if _has_any(shapes, prefix, VIDEO_MARKERS):
        return "video"
    if len(shape) == 4:
        return "image"
    if len(shape) == 5 and shape[1] == 128 and not _has_any(shapes, prefix, VIDEO15_MARKERS):
        return "refiner"
    return "video"


def _hunyuan_rules() -> list[Rule]:
    rules = []
    for layout, (markers, image_in, distilled, where) in HUNYUAN_LAYOUTS.items():
        def is_a(kind, image_in=image_in):
            return lambda shapes, prefix: _hunyuan_kind(shapes, prefix, image_in) == kind

        def describe(keys, prefix, distilled=distilled, where=where):
            variant = "distilled " if _has_any(keys, prefix, distilled) else ""
            return f"HunyuanImage 2.1 {variant}diffusion model ({where})"

        rules += [
            Rule("hunyuan_image", DIFFUSION_MODEL, layout, "HunyuanImage 2.1 diffusion model", markers,
                 check=is_a("image"), describe=describe),
            # The refiner loads like the others (the same layouts, its config read from shapes: variant
            # "refiner"); which stage may use it is checked where it is used (hunyuan_image/refiner.py).
            Rule("hunyuan_image", DIFFUSION_MODEL, layout, "HunyuanImage 2.1 refiner diffusion model", markers,
                 check=is_a("refiner"),
                 describe=lambda keys, prefix, where=where: f"HunyuanImage 2.1 refiner diffusion model ({where})"),
        ]
    return rules


HUNYUAN_RULES = _hunyuan_rules() + [
    Rule("hunyuan_video", DIFFUSION_MODEL, "comfyui", "HunyuanVideo diffusion model",
         ("txt_in.individual_token_refiner.blocks.0.norm1.weight",), supported=False),
    Rule("hunyuan_video", DIFFUSION_MODEL, "diffusers", "HunyuanVideo diffusion model (diffusers layout)",
         ("context_embedder.token_refiner.refiner_blocks.0.norm1.weight",), supported=False),
]

RULES: list[Rule] = [
    # --- what this pack runs -------------------------------------------------------------------------
    Rule("qwen_image", DIFFUSION_MODEL, "comfyui", "Qwen-Image diffusion model (ComfyUI/diffusers layout)",
         ("txt_norm.weight", "img_in.weight", "transformer_blocks.0.attn.add_q_proj.weight")),
    Rule("qwen_image", VAE, "comfyui", "Qwen-Image VAE (ComfyUI / Wan 2.1 layout)",
         ("decoder.middle.0.residual.0.gamma", "encoder.conv1.weight", "conv2.weight"),
         check=lambda s, p: _shape(s, p, "conv2.weight")[:2] == (16, 16)),
    Rule("qwen_image", VAE, "diffusers", "Qwen-Image VAE (diffusers layout)",
         ("decoder.mid_block.resnets.0.norm1.gamma", "encoder.conv_in.weight", "post_quant_conv.weight"),
         check=lambda s, p: _shape(s, p, "post_quant_conv.weight")[:2] == (16, 16)),
    Rule("qwen25_vl", TEXT_ENCODER, "comfyui", "Qwen2.5-VL text encoder",
         ("model.embed_tokens.weight", "model.layers.0.self_attn.k_proj.bias", "model.norm.weight")),
    Rule("qwen25_vl", TEXT_ENCODER, "transformers", "Qwen2.5-VL text encoder (transformers 5 names)",
         ("model.language_model.embed_tokens.weight", "model.language_model.layers.0.self_attn.k_proj.bias")),
    Rule("qwen25_vl", TEXT_ENCODER, "llama_cpp", "Qwen2.5-VL text encoder (llama.cpp names)",
         ("token_embd.weight", "blk.0.attn_k.bias")),
    # --- what it recognises, to say where a file belongs ----------------------------------------------
    Rule("wan22", VAE, "comfyui", "Wan 2.2 VAE (48 latent channels)",
         ("decoder.middle.0.residual.0.gamma", "conv2.weight"),
         check=lambda s, p: _shape(s, p, "conv2.weight")[:2] == (48, 48), supported=False),
    Rule("flux2", DIFFUSION_MODEL, "bfl", "FLUX.2 diffusion model",
         ("double_stream_modulation_img.lin.weight", "img_in.weight"), supported=False),
    Rule("flux", DIFFUSION_MODEL, "bfl", "FLUX.1 diffusion model",
         ("double_blocks.0.img_attn.qkv.weight", "img_in.weight", "final_layer.linear.weight"), supported=False),
    *HUNYUAN_RULES,
    # HunyuanImage 2.1 32x VAE: 2-D, 64 latent channels, pixel-shuffle samplers. The ComfyUI and official
    # Tencent files share names (the official pickle under `vae.`, its convs possibly [O, I, 1, kh, kw]).
    Rule("hunyuan_image", VAE, "comfyui", "HunyuanImage 2.1 VAE (ComfyUI / official layout)",
         ("decoder.conv_in.weight", "encoder.conv_in.weight", "decoder.up.0.upsample.conv.weight"),
         check=lambda s, p: _shape(s, p, "decoder.conv_in.weight")[1:3] in ((64, 3), (64, 1))),
    Rule("hunyuan_image", VAE, "diffusers", "HunyuanImage 2.1 VAE (diffusers layout)",
         ("decoder.conv_in.weight", "encoder.down_blocks.0.conv1.weight", "decoder.mid_block.attentions.0.to_q.weight"),
         check=lambda s, p: _shape(s, p, "decoder.conv_in.weight")[1:3] == (64, 3)),
    # The refiner's VAE is 3-D (causal convs holding `.conv`, RMS norms holding `gamma`), 32 latent channels,
    # 16x. The ComfyUI and official Tencent files share names (the official pickle under `vae.`); diffusers
    # nests resnets and samplers per stage. HunyuanVideo 1.5's VAE has exactly these tensors (same
    # architecture and sizes): no file tells them apart, and an image is its first frame either way.
    Rule("hunyuan_image_refiner", VAE, "comfyui", "HunyuanImage 2.1 refiner VAE (ComfyUI / official layout)",
         ("decoder.conv_in.conv.weight", "encoder.conv_in.conv.weight", "decoder.up.0.upsample.conv.conv.weight"),
         check=lambda s, p: _shape(s, p, "decoder.conv_in.conv.weight")[1:3] == (32, 3)),
    Rule("hunyuan_image_refiner", VAE, "diffusers", "HunyuanImage 2.1 refiner VAE (diffusers layout)",
         ("decoder.conv_in.conv.weight", "encoder.conv_in.conv.weight",
          "decoder.up_blocks.0.upsamplers.0.conv.conv.weight"),
         check=lambda s, p: _shape(s, p, "decoder.conv_in.conv.weight")[1:3] == (32, 3)),
    Rule("flux2", VAE, "bfl", "FLUX.2 VAE", ("bn.running_mean", "decoder.conv_in.weight"), supported=False),
    Rule("wan", DIFFUSION_MODEL, "comfyui", "Wan video diffusion model",
         ("patch_embedding.weight", "blocks.0.self_attn.q.weight"), supported=False),
    Rule("sd3", DIFFUSION_MODEL, "comfyui", "Stable Diffusion 3 diffusion model",
         ("joint_blocks.0.context_block.attn.qkv.weight",), supported=False),
    Rule("sd_unet", DIFFUSION_MODEL, "comfyui", "Stable Diffusion 1.x/2.x/XL UNet",
         ("input_blocks.0.0.weight",), supported=False),
    # ByT5 (a byte vocabulary: 384 tokens, 1510 with Glyph-SDXL-v2's markup), run; before the T5 rule.
    Rule("byt5", TEXT_ENCODER, "transformers", "ByT5 glyph text encoder (transformers names)",
         ("encoder.block.0.layer.0.SelfAttention.k.weight", "encoder.embed_tokens.weight"),
         check=lambda s, p: _shape(s, p, "encoder.embed_tokens.weight")[:1] < (2000,)),
    Rule("byt5", TEXT_ENCODER, "comfyui", "ByT5 glyph text encoder",
         ("encoder.block.0.layer.0.SelfAttention.k.weight", "shared.weight"),
         check=lambda s, p: _shape(s, p, "shared.weight")[:1] < (2000,)),
    Rule("byt5", TEXT_ENCODER, "llama_cpp", "ByT5 glyph text encoder (llama.cpp T5 names)",
         ("enc.blk.0.attn_k.weight", "token_embd.weight"),
         check=lambda s, p: _shape(s, p, "token_embd.weight")[:1] < (2000,)),
    Rule("t5", TEXT_ENCODER, "comfyui", "T5 text encoder", ("encoder.block.0.layer.0.SelfAttention.k.weight",),
         supported=False),
    Rule("clip", TEXT_ENCODER, "comfyui", "CLIP text encoder", ("text_model.encoder.layers.0.mlp.fc1.weight",),
         supported=False),
    Rule("llama_like", TEXT_ENCODER, "comfyui", "a decoder-only language model (Mistral, Llama, Qwen3, ...)",
         ("model.embed_tokens.weight", "model.layers.0.self_attn.k_proj.weight"), supported=False),
    Rule("llama_like", TEXT_ENCODER, "llama_cpp", "a decoder-only language model in llama.cpp names (Mistral, "
         "Llama, Qwen3, ...)", ("token_embd.weight", "blk.0.attn_k.weight"), supported=False),
]

LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".lora_down.weight", ".lora_up.weight", ".alpha")


def _prefixes_for(marker: str, keys: list[str]) -> list[str]:
    return sorted({k[: -len(marker)] for k in keys if k.endswith(marker)}, key=len)


def identify_all(checkpoint: Checkpoint) -> list[Identity]:
    """Every known part in the file, first match per prefix and component."""
    keys = checkpoint.keys()
    shapes = None
    found: list[Identity] = []
    claimed: set[tuple[str, str]] = set()
    for rule in RULES:
        for prefix in _prefixes_for(rule.markers[0], keys):
            if (prefix, rule.component) in claimed:
                continue
            if not all(prefix + m in checkpoint for m in rule.markers[1:]):
                continue
            if rule.check is not None:
                shapes = shapes if shapes is not None else checkpoint.shapes()
                if not rule.check(shapes, prefix):
                    continue
            claimed.add((prefix, rule.component))
            description = rule.describe(keys, prefix) if rule.describe else rule.description
            found.append(Identity(rule.family, rule.component, rule.layout, prefix, description, rule.supported))
    return found


def looks_like_lora(checkpoint: Checkpoint) -> bool:
    keys = checkpoint.keys()
    return sum(k.endswith(LORA_SUFFIXES) for k in keys) > len(keys) // 3


def find_component(checkpoint: Checkpoint, component: str, families: tuple[str, ...] | None = None) -> Identity:
    """The part of `checkpoint` a loader for `component` should load, or a clear error."""
    parts = identify_all(checkpoint)
    usable = [p for p in parts if p.component == component and p.supported
              and (families is None or p.family in families)]
    if usable:
        return usable[0]

    wanted = COMPONENT_FOLDERS.get(component, component).split(" ")[0]
    if looks_like_lora(checkpoint):
        raise ModelFileError(checkpoint.path, "is a LoRA, not a full model",
                             hint="Load it with a LoRA loader node (for example LoraLoaderModelOnly) after the model loader.")
    same_kind = [p for p in parts if p.component == component]
    if same_kind:
        part = same_kind[0]
        raise ModelFileError(
            checkpoint.path, f"holds a {part.description}, which this pack does not run yet",
            found=part.description, expected=_expected(component, families),
        )
    if parts:
        part = parts[0]
        folder = COMPONENT_FOLDERS.get(part.component, part.component)
        raise ModelFileError(
            checkpoint.path, f"is not a {component.replace('_', ' ')}",
            found=part.description, expected=_expected(component, families),
            hint=f"Put it in {folder} and load it with the matching loader node (not the one for {wanted}).",
        )
    raise ModelFileError(
        checkpoint.path, "was not recognised as any model this pack knows",
        found=f"{len(checkpoint.keys())} tensors: {summarize_keys(checkpoint.keys())}",
        expected=_expected(component, families),
    )


def _expected(component: str, families) -> str:
    names = sorted({r.description for r in RULES if r.supported and r.component == component
                    and (families is None or r.family in families)})
    return " or ".join(names) if names else component
