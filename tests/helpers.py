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


def write_tiny_model_set(root: Path, diffusion_model: str, text_encoder: str, vae: str) -> Path:
    """Tiny random-weight Qwen-Image files under root/diffusion_models, root/text_encoders (with a tokenizer
    beside it) and root/vae, as a models folder holds them; returns root."""
    from comfyui_mmdit.tools.tiny_models import write_tiny_component

    for folder, name in (("diffusion_models", diffusion_model), ("text_encoders", text_encoder), ("vae", vae)):
        write_tiny_component(folder, Path(root) / folder / name)
    return Path(root)


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


def fp8_variants(state: dict, folder: Path, name: str = "qwen") -> dict[str, tuple[Path, Path]]:
    """FP8 files of `state` (a float state dict) as they are published or saved, each with a float32 file
    holding exactly the values it stands for: {layout: (fp8 file, float32 file)}.

    "plain": every floating tensor cast to FP8, no scales (value = the fp8 number), as
        qwen_image_fp8_e4m3fn.safetensors;
    "comfyui_scaled": what ComfyUI 0.3.64 saves for a scaled-FP8 model: the `scaled_fp8` marker, every
        matrix FP8 with a scalar `scale_weight` (value = fp8 * scale) and a `scale_input` of 1, every Linear
        bias FP8 without a scale of its own (ComfyUI casts it: value = the fp8 number), other 1-D tensors
        in bf16.
    """
    from safetensors.torch import save_file

    fp8 = torch.float8_e4m3fn
    folder.mkdir(parents=True, exist_ok=True)
    plain = {k: v.to(fp8) for k, v in state.items()}
    scaled, scaled_values = {"scaled_fp8": torch.empty(0, dtype=fp8)}, {}
    for key, value in state.items():
        layer = key.rsplit(".", 1)[0]
        if value.ndim >= 2:
            scale = (value.float().abs().amax() / torch.finfo(fp8).max).reshape(())
            scaled[key] = (value.float() / scale).to(fp8)
            scaled[f"{layer}.scale_weight"] = scale
            scaled[f"{layer}.scale_input"] = torch.ones(())
            scaled_values[key] = scaled[key].float() * scale
        elif key.endswith(".bias"):
            scaled[key] = value.to(fp8)
            scaled_values[key] = scaled[key].float()
        else:
            scaled[key] = value.to(torch.bfloat16)
            scaled_values[key] = scaled[key].float()
    out = {}
    for layout, tensors, values in (("plain", plain, {k: v.float() for k, v in plain.items()}),
                                    ("comfyui_scaled", scaled, scaled_values)):
        fp8_path, reference = folder / f"{name}_{layout}_fp8.safetensors", folder / f"{name}_{layout}_fp32.safetensors"
        save_file(tensors, str(fp8_path))
        save_file(values, str(reference))
        out[layout] = (fp8_path, reference)
    return out


def transformers_qwen25vl(vocab_size: int, layers: int):
    """transformers' Qwen2.5-VL at the tiny language model's size (tools/tiny_models.tiny_qwen_text_state_dict:
    one 128-dim head, hidden 128) with a one-block vision tower: the reference the parity tests give diffusers."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=layers,
                         num_attention_heads=1, num_key_value_heads=1, rms_norm_eps=1e-6, rope_theta=1e6,
                         rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}, max_position_embeddings=2048,
                         bos_token_id=None, eos_token_id=None),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=128,
                           fullatt_block_indexes=[0]),
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def official_fp8_release(tencent: dict, folder: Path, in_file_scales: bool = False,
                         name: str = "hunyuanimage2.1_fp8"):
    """The official FP8 release in the Tencent layout, as hyimage's convert_fp8_linear writes it: every
    Linear weight inside the double and single blocks FP8 (e4m3fn) with its own scale amax / 448
    (per_tensor_quantize), everything else bf16; the scales in `<name>_scale.safetensors` keyed by layer
    (and, if `in_file_scales`, also in the weights file as `<layer>.weight_scale`). Returns (weights path,
    {name: the value each tensor stands for, float32}, {layer: scale})."""
    from safetensors.torch import save_file

    weights, values, scales = {}, {}, {}
    for key, tensor in tencent.items():
        if key.startswith(("double_blocks.", "single_blocks.")) and key.endswith(".weight") and tensor.ndim == 2:
            layer = key[: -len(".weight")]
            scale = (tensor.abs().amax() / torch.finfo(torch.float8_e4m3fn).max).float().reshape(())
            weights[key] = (tensor / scale).to(torch.float8_e4m3fn)
            scales[layer] = scale
            values[key] = weights[key].float() * scale  # the official formula: weight x its layer's scale
            if in_file_scales:
                weights[layer + ".weight_scale"] = scale
        else:
            weights[key] = tensor.to(torch.bfloat16)
            values[key] = weights[key].float()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    save_file(scales, str(folder / f"{name}_scale.safetensors"))
    return path, values, scales


def smooth_image(height: int, width: int, seed: int) -> torch.Tensor:
    """A natural-like IMAGE [H, W, 3] on 8-bit levels: low-frequency colour fields inside (0, 1), so resizing
    never clips (the image-processor and edit-prompt parity tests)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, height // 16), max(2, width // 16), generator=g) * 0.7 + 0.15
    image = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return ((image[0].permute(1, 2, 0) * 255).round() / 255).contiguous()


def as_pil(image: torch.Tensor):
    import PIL.Image

    return PIL.Image.fromarray((image * 255).round().byte().numpy())


def comfyui_qwen25vl_names(transformers_state: dict, language_model_only: bool = False) -> dict:
    """A transformers 5 Qwen2.5-VL state dict in ComfyUI's single-file names: model.language_model.* ->
    model.*, model.visual.* -> visual.*, the rest (lm_head) as it is; only the language model if asked."""
    out = {}
    for key, value in transformers_state.items():
        if key.startswith("model.language_model."):
            out["model." + key[len("model.language_model."):]] = value
        elif not language_model_only:
            out["visual." + key[len("model.visual."):] if key.startswith("model.visual.") else key] = value
    return out


def transformers_qwen25vl_with_vision(tokenizer):
    """transformers' Qwen2.5-VL: the tiny language model (one 128-dim head, two layers) and the tiny vision
    tower, every parameter random (seeded)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from comfyui_mmdit.model_defs.text_encoders import qwen25vl_vision as vision
    from comfyui_mmdit.tools.tiny_models import random_state_dict, tiny_qwen_vision_config

    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in
           [("image_token_id", "<|image_pad|>"), ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>")]}
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=1, num_key_value_heads=1, rms_norm_eps=1e-6, rope_theta=1e6,
                         rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
                         max_position_embeddings=128000, bos_token_id=None, eos_token_id=None),
        vision_config=vision.transformers_vision_config(tiny_qwen_vision_config()).to_dict(),
        video_token_id=len(tokenizer) + 10, **ids,  # no video token in the tiny vocabulary
    )
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.load_state_dict(random_state_dict(model, seed=11, scale=0.1))
    return model


def with_token_types(model, image_token_id):
    """The model called as transformers 4 behaved: image tokens typed from their id (3-D RoPE positions).
    diffusers' edit pipelines call it without mm_token_type_ids, which transformers 5 then reads as text."""
    import functools

    forward = model.forward

    @functools.wraps(forward)
    def typed_forward(*args, input_ids=None, **kwargs):
        kwargs.setdefault("mm_token_type_ids", (input_ids == image_token_id).int())
        return forward(*args, input_ids=input_ids, **kwargs)

    model.forward = typed_forward
    return model


def official_qwen_processor(tokenizer):
    """transformers' Qwen2-VL processor (PIL backend) at the processor's pixel bounds, for images only."""
    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from comfyui_mmdit.model_defs.text_encoders import qwen_image_processor as processor

    class ImageOnlyProcessor(Qwen2VLProcessor):
        """Qwen2VLProcessor without a video processor (whose class needs torchvision, absent here)."""

        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    images = Qwen2VLImageProcessorPil(min_pixels=processor.MIN_PIXELS, max_pixels=processor.MAX_PIXELS)
    return ImageOnlyProcessor(image_processor=images, tokenizer=tokenizer)
