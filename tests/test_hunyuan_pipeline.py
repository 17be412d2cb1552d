"""Whole HunyuanImage 2.1 pipelines: the pack's nodes (standalone host) against diffusers' HunyuanImagePipeline.

Same weights (tiny, random, every parameter), same prompts, same seed (noise from a CPU generator), same
steps and schedule, same guidance: the decoded images must match.

* base: the official adaptive projected "mix" guidance (diffusers' AdaptiveProjectedMixGuidance with our
  GENERAL_GUIDANCE / GLYPH_GUIDANCE parameters as its `guider` / `ocr_guider`), shift 5, empty negative
  prompt (the official default). 8 steps: CFG for steps 0..5, APG from step 6 on, so the momentum buffer and
  the projection are exercised. A prompt with quoted text takes the glyph path (ByT5 states into the
  network's byt5_in, and the glyph guider, whose APG starts after step 38: CFG only in a short run).
* distilled: embedded guidance 3.25 (one pass per step, no negative prompt), shift 4, MeanFlow
  (timestep_r = the next step's timestep, 0 at the last step).

Files are written the way users get them, so the loaders' layout handling is part of what is tested: the
diffusion models and the VAE in diffusers' names (our diffusers key layouts), Qwen2.5-VL as ComfyUI's single
file (`model.`-prefixed language-model names, tokenizer folder beside it), ByT5 as ComfyUI's single file
(tokenizer folder beside it).

diffusers' __call__ has no guidance_scale argument: the CFG scale lives in the guider's config, which is where
the sampler's cfg goes here too (the APG scale stays 10). A distilled pipeline is built without guiders (with
one, diffusers would run it and a negative pass: the official distilled loop has neither).

Where diffusers departs from the official Tencent code (model_defs/hunyuan_image/sampling.py lists them):
sigmas from numpy linspace vs torch.linspace (last-bit differences), and the guider choice (diffusers: one
guider for the batch from the positive prompts; official: per sample, from the last encoded prompt). Neither
shows here: both sides use diffusers' schedule, and every case uses one prompt with an empty negative.
diffusers pads the Qwen2.5-VL states to 1000 tokens and the ByT5 states to 128; ours stops at the real tokens,
which the network sees identically (tests/test_hunyuan_text.py checks why).
"""

import math

import numpy as np
import pytest
import torch

from comfyui_mmdit.loaders.diffusion_model import read_diffusion_model
from comfyui_mmdit.loaders.tokenizers import load_tokenizer
from comfyui_mmdit.loaders.vae import read_vae
from comfyui_mmdit.model_defs.hunyuan_image import family, text as hunyuan_text
from comfyui_mmdit.model_defs.hunyuan_image.sampling import (
    BASE_SAMPLING, DISTILLED_SAMPLING, GENERAL_GUIDANCE, GLYPH_GUIDANCE,
)
from comfyui_mmdit.model_defs.text_encoders import qwen25vl
from comfyui_mmdit.model_defs.text_encoders.byt5_tokenizer import with_glyph_markup
from comfyui_mmdit.nodes import NODE_CLASS_MAPPINGS as NODES
from comfyui_mmdit.nodes.host import set_host
from comfyui_mmdit.nodes.host.standalone import StandaloneHost
from comfyui_mmdit.tools.tiny_models import (
    TINY_BYT5, TINY_HUNYUAN_VAE, TINY_QWEN_DIT, randomise_vae_, tiny_byt5_state_dict, tiny_qwen_text_state_dict,
    write_safetensors,
)
from comfyui_mmdit.tools.tiny_tokenizer import byt5_tokenizer, write_byt5_tokenizer, write_tiny_qwen_tokenizer

from helpers import transformers_qwen25vl

PROMPT = "a watercolor painting of mountains at sunrise with a lake in the foreground"
GLYPH_PROMPT = 'A cozy bookshop on a rainy evening, a hand-painted sign that says "OPEN" above the door'
NEGATIVE = ""  # the official default, and what our workflows pass
# Images in [0, 1] after a few fp32 steps: differences come only from summation order (attention over
# padded vs unpadded text, fused q/k/v), amplified a little by each step and by the decoder. Measured (torch
# 2.13 CPU, diffusers 0.42.1): 4.2e-7, 3.0e-7, 2.4e-7, 2.4e-7 for the four cases below. For scale: the images
# change by 1.2e-3 when the guidance scale goes from 3.5 to 3.4, by 7e-2 with plain CFG in place of the mix
# rule, by 4e-2 when the quoted text changes; the reference with shift + 0.05 fails every case (2.6e-2 to
# 6.6e-2), with the general guider as its glyph guider the quoted-text base case (0.10).
IMAGE_ATOL = 1e-4

QWEN_FILE = "qwen_tiny.safetensors"
BYT5_FILE = "byt5_tiny.safetensors"
BASE_FILE = "hunyuan_tiny_base_diffusers.safetensors"
DISTILLED_FILE = "hunyuan_tiny_distilled_diffusers.safetensors"
VAE_FILE = "hunyuan_tiny_vae_diffusers.safetensors"


def randomise_transformer_(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random (seeded): matrices ~ N(0, 1/fan_in), norm weights near 1, other vectors small."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if p.ndim >= 2:
                p.copy_(noise / math.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)


def diffusers_transformer(distilled: bool, seed: int):
    from diffusers import HunyuanImageTransformer2DModel

    network = HunyuanImageTransformer2DModel(
        in_channels=64, out_channels=64, num_attention_heads=2, attention_head_dim=32, num_layers=2,
        num_single_layers=2, num_refiner_layers=2, rope_axes_dim=(16, 16),
        text_embed_dim=TINY_QWEN_DIT.joint_attention_dim, text_embed_2_dim=TINY_BYT5.d_model,
        guidance_embeds=distilled, use_meanflow=distilled).eval()
    randomise_transformer_(network, seed)
    return network


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from diffusers import (AdaptiveProjectedMixGuidance, AutoencoderKLHunyuanImage, FlowMatchEulerDiscreteScheduler,
                           HunyuanImagePipeline)
    from transformers import T5Config, T5EncoderModel

    models = tmp_path_factory.mktemp("models")
    text_dir = models / "text_encoders"

    # Qwen2.5-VL: 4 layers (the family reads the third-from-last hidden state, a layer's output).
    qwen_tokenizer_dir = write_tiny_qwen_tokenizer(text_dir / f"{QWEN_FILE.removesuffix('.safetensors')}_tokenizer")
    qwen_tokenizer = load_tokenizer(qwen_tokenizer_dir)
    qwen_state = tiny_qwen_text_state_dict(len(qwen_tokenizer), seed=21, layers=4)
    write_safetensors(qwen_state, text_dir / QWEN_FILE)
    qwen = transformers_qwen25vl(len(qwen_tokenizer), layers=4)
    qwen.model.language_model.load_state_dict({k[len("model."):]: v for k, v in qwen_state.items()})

    # ByT5 with Glyph-SDXL-v2's token table.
    byt5_state = tiny_byt5_state_dict(seed=22)
    write_safetensors(byt5_state, text_dir / BYT5_FILE)
    write_byt5_tokenizer(text_dir / f"{BYT5_FILE.removesuffix('.safetensors')}_tokenizer")
    c = TINY_BYT5
    t5 = T5EncoderModel(T5Config(vocab_size=c.vocab_size, d_model=c.d_model, d_kv=c.d_kv, d_ff=c.d_ff,
                                 num_layers=c.num_layers, num_heads=c.num_heads, feed_forward_proj="gated-gelu",
                                 is_encoder_decoder=False, use_cache=False, dropout_rate=0.0)).eval()
    t5.load_state_dict(byt5_state, strict=False)  # the encoder's names; T5EncoderModel ties encoder.embed_tokens

    # Diffusion models and VAE, saved in diffusers' names.
    transformers = {False: diffusers_transformer(False, seed=23), True: diffusers_transformer(True, seed=24)}
    write_safetensors(transformers[False].state_dict(), models / "diffusion_models" / BASE_FILE)
    write_safetensors(transformers[True].state_dict(), models / "diffusion_models" / DISTILLED_FILE)
    vae = AutoencoderKLHunyuanImage(in_channels=3, out_channels=3, latent_channels=64, sample_size=384,
                                    block_out_channels=TINY_HUNYUAN_VAE.block_out_channels, layers_per_block=2,
                                    spatial_compression_ratio=32, scaling_factor=family.LATENT_FORMAT.scale).eval()
    randomise_vae_(vae, seed=25)
    write_safetensors(vae.state_dict(), models / "vae" / VAE_FILE)

    def pipeline(distilled: bool, guidance_scale: float = 3.5):
        sampling = DISTILLED_SAMPLING if distilled else BASE_SAMPLING
        guiders = {} if distilled else dict(
            guider=AdaptiveProjectedMixGuidance(**GENERAL_GUIDANCE.with_scale(guidance_scale).diffusers_config()),
            ocr_guider=AdaptiveProjectedMixGuidance(**GLYPH_GUIDANCE.with_scale(guidance_scale).diffusers_config()))
        pipe = HunyuanImagePipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(shift=sampling.shift), vae=vae, text_encoder=qwen,
            tokenizer=qwen_tokenizer, text_encoder_2=t5, tokenizer_2=with_glyph_markup(byt5_tokenizer()),
            transformer=transformers[distilled], **guiders)
        # The tiny tokenizer splits the template differently from Qwen2.5's (34 tokens there).
        pipe.prompt_template_encode_start_idx = qwen25vl.template_prefix_tokens(qwen_tokenizer,
                                                                               hunyuan_text.PROMPT_TEMPLATE)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    set_host(StandaloneHost(models_dir=models, device="cpu"))
    yield models, pipeline
    set_host(None)


def run_nodes(model_file, prompt, width, height, batch, seed, steps, cfg):
    model, = NODES["MMDiTModelLoader"]().load(model_file)
    encoder, = NODES["MMDiTTextEncoderLoader"]().load(QWEN_FILE, family.DISPLAY_NAME, text_encoder_2_name=BYT5_FILE)
    positive, = NODES["MMDiTTextEncode"]().encode(encoder, prompt)
    negative, = NODES["MMDiTTextEncode"]().encode(encoder, NEGATIVE)
    latent, = NODES["MMDiTEmptyLatent"]().generate(family.DISPLAY_NAME, "custom (width x height)", width, height, batch)
    samples, = NODES["MMDiTSampler"]().sample(model, positive, negative, latent, seed, steps=steps, cfg=cfg,
                                              sampler_name="euler", scheduler="official", guidance="official")
    vae, = NODES["MMDiTVAELoader"]().load(VAE_FILE)
    images, = NODES["MMDiTVAEDecode"]().decode(samples, vae, tiling="off")
    return images  # [B, H, W, 3] in [0, 1]


def test_files_are_read_in_their_diffusers_layouts(setup):
    """The comparison goes through the diffusers key layouts (renames, q/k/v fused, final AdaLN halves
    swapped; the VAE's key map), not a shortcut."""
    models, _ = setup
    for name, variant in ((BASE_FILE, "base"), (DISTILLED_FILE, "distilled")):
        file = read_diffusion_model(models / "diffusion_models" / name)
        assert (file.identity.family, file.identity.layout, file.config.variant) == (
            "hunyuan_image", "diffusers", variant), file.description
    vae = read_vae(models / "vae" / VAE_FILE)
    assert (vae.identity.family, vae.identity.layout) == ("hunyuan_image", "diffusers"), vae.description


CASES = {
    # name: (distilled, prompt, width, height, batch, steps, guidance)
    "base, mix guidance (CFG then APG), non-square": (False, PROMPT, 96, 64, 1, 8, 3.5),
    "base, quoted text (glyph path, glyph guider), batch 2": (False, GLYPH_PROMPT, 64, 96, 2, 8, 3.5),
    "distilled, embedded guidance, MeanFlow, quoted text": (True, GLYPH_PROMPT, 96, 64, 1, 4, 3.25),
    "distilled, batch 2, no quotes": (True, PROMPT, 64, 64, 2, 4, 3.25),
}


@pytest.mark.parametrize("case", CASES)
@torch.no_grad()
def test_nodes_match_diffusers_pipeline(setup, case):
    distilled, prompt, width, height, batch, steps, guidance = CASES[case]
    _, pipeline = setup
    seed = 1234
    pipe = pipeline(distilled, guidance)
    kwargs = dict(distilled_guidance_scale=guidance) if distilled else dict(negative_prompt=NEGATIVE)
    expected = pipe(prompt=prompt, width=width, height=height, num_inference_steps=steps, num_images_per_prompt=batch,
                    generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).images
    got = run_nodes(DISTILLED_FILE if distilled else BASE_FILE, prompt, width, height, batch, seed, steps,
                    guidance).numpy()
    assert got.shape == expected.shape == (batch, height, width, 3)
    error = np.abs(got - expected).max()
    print(f"{case}: max abs image difference {error:.2e}, image std {expected.std():.3f}")
    assert error <= IMAGE_ATOL, error
    assert expected.std() > 0.01  # the images are not flat: the comparison means something
