"""Fixtures for the ComfyUI integration tests (skipped without a ComfyUI checkout; in CI a skip is a
failure, see tests/conftest.py)."""

import pytest
import torch

from comfy_harness import ComfyServer, import_comfy_inprocess


@pytest.fixture(scope="session")
def comfy_inprocess():
    return import_comfy_inprocess()


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """One ComfyUI server for the session, with tiny Qwen-Image (text-to-image and Edit-2511) and HunyuanImage
    2.1 files in its models folders under the names the shipped workflows use, in published layouts
    (Edit-2511: ComfyUI's file with its marker tensor; HunyuanImage: the base model in the fused original
    names, the distilled one in the official Tencent split-q/k/v names), plus GGUFs of the diffusion models."""
    import sys
    from pathlib import Path

    server = ComfyServer()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from comfyui_mmdit.tools.convert import convert
    from comfyui_mmdit.tools.tiny_models import write_tiny_component

    models = server.base_dir / "models"
    dit = write_tiny_component("diffusion_models", models / "diffusion_models" / "qwen_image_bf16.safetensors")
    convert(dit, dit.with_name("qwen-image-Q4_0.gguf"), "Q4_0")
    write_qwen_edit_2511(models / "diffusion_models" / "qwen_image_edit_2511_bf16.safetensors")
    write_tiny_component("text_encoders", models / "text_encoders" / "qwen_2.5_vl_7b.safetensors")
    write_tiny_component("vae", models / "vae" / "qwen_image_vae.safetensors")
    write_hunyuan_image_files(models)
    server.start()
    yield server
    server.stop()


def write_hunyuan_image_files(models):
    from comfyui_mmdit.tools.convert import convert
    from comfyui_mmdit.tools.tiny_models import (TINY_HUNYUAN_DISTILLED_DIT, TINY_HUNYUAN_DIT, tiny_hunyuan_dit_state_dict,
                                                 write_safetensors, write_tiny_component)
    from hunyuan_layouts import in_layout

    hidden = TINY_HUNYUAN_DIT.hidden_size
    dit = models / "diffusion_models"
    base = in_layout(tiny_hunyuan_dit_state_dict(seed=21), "fused_original", "dit", hidden)
    write_safetensors(base, dit / "hunyuanimage2.1_bf16.safetensors", dtype=torch.bfloat16)
    distilled = in_layout(tiny_hunyuan_dit_state_dict(TINY_HUNYUAN_DISTILLED_DIT, seed=22), "tencent", "distilled_dit", hidden)
    write_safetensors(distilled, dit / "hunyuanimage2.1_distilled_bf16.safetensors", dtype=torch.bfloat16)
    convert(dit / "hunyuanimage2.1_distilled_bf16.safetensors", dit / "hunyuanimage2.1-distilled-Q8_0.gguf", "Q8_0")
    write_tiny_component("text_encoders", models / "text_encoders" / "byt5_small_glyphxl_fp16.safetensors")
    write_tiny_component("vae", models / "vae" / "hunyuan_image_2.1_vae_fp16.safetensors")
    write_tiny_component("diffusion_models", dit / "hunyuanimage2.1_refiner_bf16.safetensors")
    # The refiner VAE under Comfy-Org's name (split_files/vae), which the shipped workflows use.
    write_tiny_component("vae", models / "vae" / "hunyuan_image_refiner_vae_fp16.safetensors")


def write_qwen_edit_2511(path):
    """A tiny Qwen-Image-Edit-2511 file as Comfy-Org publishes it: Qwen-Image's tensors and the empty
    `__index_timestep_zero__` marker."""
    from comfyui_mmdit.model_defs.qwen_image.edit import ZERO_COND_MARKER
    from comfyui_mmdit.tools.tiny_models import tiny_qwen_dit_state_dict, write_safetensors

    return write_safetensors({**tiny_qwen_dit_state_dict(seed=3), ZERO_COND_MARKER: torch.empty(0)}, path,
                             dtype=torch.bfloat16)
