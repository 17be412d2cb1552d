"""Whole pipeline: the pack's nodes (standalone host) against diffusers' QwenImagePipeline.

Same weights (tiny, random, every parameter), same prompts, same seed (noise from a CPU generator),
same steps, schedule and true-CFG scale: the decoded images must match.
"""

import numpy as np
import pytest
import torch

from comfyui_mmdit.loaders.keymaps.qwen_image_vae import diffusers_to_comfyui
from comfyui_mmdit.loaders.tokenizers import load_tokenizer
from comfyui_mmdit.model_defs.qwen_image import family
from comfyui_mmdit.nodes import NODE_CLASS_MAPPINGS as NODES
from comfyui_mmdit.nodes.host import set_host
from comfyui_mmdit.nodes.host.standalone import StandaloneHost
from comfyui_mmdit.tools.tiny_models import (
    TINY_QWEN_DIT, TINY_QWEN_VAE, randomise_vae_, tiny_qwen_dit_state_dict, tiny_qwen_text_state_dict,
    write_safetensors,
)
from comfyui_mmdit.tools.tiny_tokenizer import write_tiny_qwen_tokenizer

from helpers import transformers_qwen25vl

PROMPT = "a watercolor painting of mountains at sunrise with a lake in the foreground"
NEGATIVE = "blurry, low quality"
# Images in [0, 1] after a few fp32 steps: differences come only from summation order, amplified a
# little by each step and by the decoder.
IMAGE_ATOL = 1e-4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline, \
        QwenImageTransformer2DModel

    models = tmp_path_factory.mktemp("models")
    tokenizer_dir = write_tiny_qwen_tokenizer(models / "text_encoders" / "qwen_tiny_tokenizer")
    tokenizer = load_tokenizer(tokenizer_dir)

    text_state = tiny_qwen_text_state_dict(len(tokenizer), seed=11)
    write_safetensors(text_state, models / "text_encoders" / "qwen_tiny.safetensors")
    text_encoder = transformers_qwen25vl(len(tokenizer), layers=2)
    text_encoder.model.language_model.load_state_dict({k[len("model."):]: v for k, v in text_state.items()})

    dit_state = tiny_qwen_dit_state_dict(seed=12)
    write_safetensors(dit_state, models / "diffusion_models" / "qwen_tiny.safetensors")
    c = TINY_QWEN_DIT
    transformer = QwenImageTransformer2DModel(
        patch_size=c.patch_size, in_channels=c.in_channels, out_channels=c.out_channels, num_layers=c.num_layers,
        attention_head_dim=c.attention_head_dim, num_attention_heads=c.num_attention_heads,
        joint_attention_dim=c.joint_attention_dim, axes_dims_rope=c.axes_dims_rope).eval()
    transformer.load_state_dict(dit_state)

    v = TINY_QWEN_VAE
    vae = AutoencoderKLQwenImage(base_dim=v.dim, z_dim=v.z_dim, dim_mult=list(v.dim_mult),
                                 num_res_blocks=v.num_res_blocks, temperal_downsample=list(v.temperal_downsample)).eval()
    randomise_vae_(vae, seed=13)
    names = diffusers_to_comfyui(vae.state_dict())
    write_safetensors({names[k]: t for k, t in vae.state_dict().items()}, models / "vae" / "qwen_tiny_vae.safetensors")

    def pipeline(**scheduler):
        config = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9,
                      num_train_timesteps=1000, shift=1.0, shift_terminal=0.02, time_shift_type="exponential",
                      use_dynamic_shifting=True)  # Qwen/Qwen-Image scheduler/scheduler_config.json
        config.update(scheduler)
        pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(**config), vae=vae,
                                 text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    set_host(StandaloneHost(models_dir=models, device="cpu"))
    yield pipeline
    set_host(None)


def run_nodes(width, height, batch, seed, steps, cfg, scheduler):
    model, = NODES["MMDiTModelLoader"]().load("qwen_tiny.safetensors")
    encoder, = NODES["MMDiTTextEncoderLoader"]().load("qwen_tiny.safetensors", family.DISPLAY_NAME)
    positive, = NODES["MMDiTTextEncode"]().encode(encoder, PROMPT)
    negative, = NODES["MMDiTTextEncode"]().encode(encoder, NEGATIVE)
    latent, = NODES["MMDiTEmptyLatent"]().generate(family.DISPLAY_NAME, "custom (width x height)", width, height, batch)
    samples, = NODES["MMDiTSampler"]().sample(model, positive, negative, latent, seed, steps=steps, cfg=cfg,
                                              sampler_name="euler", scheduler=scheduler)
    vae, = NODES["MMDiTVAELoader"]().load("qwen_tiny_vae.safetensors")
    images, = NODES["MMDiTVAEDecode"]().decode(samples, vae, tiling="off")
    return images  # [B, H, W, 3] in [0, 1]


@pytest.mark.parametrize("width,height,batch,steps,cfg,shift", [
    (64, 64, 1, 4, 4.0, 0.0),    # the official schedule (dynamic shift, terminal 0.02) and true CFG 4
    (96, 64, 2, 3, 2.5, 3.1),    # non-square, batch 2, 'simple': constant shift 3.1 (the common ComfyUI setting)
    (48, 80, 1, 2, 1.0, 0.0),    # portrait, no CFG (single pass per step)
])
@torch.no_grad()
def test_nodes_match_diffusers_pipeline(setup, width, height, batch, steps, cfg, shift):
    seed = 1234
    if shift:
        pipe = setup(use_dynamic_shifting=False, shift=shift, shift_terminal=None)
    else:
        pipe = setup()
    expected = pipe(prompt=PROMPT, negative_prompt=NEGATIVE if cfg > 1 else None, true_cfg_scale=cfg,
                    width=width, height=height, num_inference_steps=steps, num_images_per_prompt=batch,
                    generator=torch.Generator().manual_seed(seed), output_type="np").images
    got = run_nodes(width, height, batch, seed, steps, cfg, "simple" if shift else "official").numpy()
    assert got.shape == expected.shape == (batch, height, width, 3)
    print(f"max abs image difference: {np.abs(got - expected).max():.2e}")
    assert np.abs(got - expected).max() < IMAGE_ATOL, np.abs(got - expected).max()
    assert expected.std() > 0.01  # the images are not flat: the comparison means something
