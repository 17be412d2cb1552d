"""Fixtures for the ComfyUI integration tests (skipped without a ComfyUI checkout; in CI a skip is a
failure, see tests/conftest.py)."""

import pytest

from comfy_harness import ComfyServer, import_comfy_inprocess


@pytest.fixture(scope="session")
def comfy_inprocess():
    return import_comfy_inprocess()


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """One ComfyUI server for the session, with tiny Qwen-Image files in its models folders under the
    names the shipped workflows use, plus a GGUF of the diffusion model."""
    import sys
    from pathlib import Path

    server = ComfyServer()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from comfyui_mmdit.tools.convert import convert
    from comfyui_mmdit.tools.tiny_models import write_tiny_component

    models = server.base_dir / "models"
    dit = write_tiny_component("diffusion_models", models / "diffusion_models" / "qwen_image_bf16.safetensors")
    convert(dit, dit.with_name("qwen-image-Q4_0.gguf"), "Q4_0")
    write_tiny_component("text_encoders", models / "text_encoders" / "qwen_2.5_vl_7b.safetensors")
    write_tiny_component("vae", models / "vae" / "qwen_image_vae.safetensors")
    server.start()
    yield server
    server.stop()
