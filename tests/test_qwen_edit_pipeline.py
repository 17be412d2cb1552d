"""Whole Qwen-Image-Edit pipeline: the pack's nodes (standalone host) against diffusers' QwenImageEditPipeline
(Qwen-Image-Edit, one image) and QwenImageEditPlusPipeline (Edit-2509 and, with zero_cond_t, Edit-2511; two
and three images).

Our side: MMDiTTextEncoderLoader -> MMDiTReferenceImages (resolution "official") -> MMDiTSampler (scheduler
"official", true CFG) on the node's latent -> MMDiTVAEDecode. diffusers gets the same weights (tiny, random,
every parameter: a Qwen2.5-VL with a vision tower, the DiT, the VAE), the same images as PIL images (ours are
ComfyUI IMAGE tensors whose values are 8-bit levels / 255, so the conversion is exact), the same prompts,
seed (noise from a CPU generator), steps, schedule and true-CFG scale. Compared, each to its own bound:
the prompt embeddings (positive and negative, read with the images), the reference latents, the sampled
latents, and the decoded images.

Sizes. The official VAE path rescales every image to about 1024x1024 (and Qwen-Image-Edit reads that same
image with the vision tower), far too big for a CPU test. Both sides are patched consistently, per test:
- diffusers: every `calculate_dimensions(1024 * 1024, ...)` the pipeline module makes (the VAE path,
  VAE_IMAGE_SIZE, and the default output size; in QwenImageEditPipeline also the vision path) gets a small
  area instead; CONDITION_IMAGE_SIZE (384 * 384, Plus's vision path) is left as it is;
- ours: references.VAE_AREA (what references.official_size reads) and, for Qwen-Image-Edit, the vision
  area of edit_text.VARIANTS["edit"].
So the Plus cases run the vision path at the real constant and only the VAE path (and the output size) at
the small area. The input sizes make every resize real (both paths resample, the aspect ratio changes a
little), including sizes where recent Pillow runs its vertical pass first (88x112 -> 96x96): both sides
resample with Pillow itself, so the pixels agree whatever order it picks.

One adjustment to the oracle, as in tests/test_qwen_edit_text.py: diffusers calls the text encoder without
`mm_token_type_ids`, and transformers 5 then gives the image tokens text positions; transformers 4 (what
the Edit models were released with) derived the types from the image token id, which is the official
behaviour and what our encoder computes. The reference model is wrapped to pass them.
"""

import contextlib
import dataclasses

import numpy as np
import pytest
import torch

from comfyui_mmdit.loaders.keymaps.qwen_image_vae import diffusers_to_comfyui
from comfyui_mmdit.loaders.tokenizers import load_tokenizer
from comfyui_mmdit.model_defs.ops import StandaloneOps
from comfyui_mmdit.model_defs.qwen_image import edit_text, family, references
from comfyui_mmdit.model_defs.qwen_image.edit import ZERO_COND_MARKER
from comfyui_mmdit.model_defs.qwen_image.transformer import QwenImageTransformer
from comfyui_mmdit.model_defs.spec import REFERENCE_LATENTS
from comfyui_mmdit.model_defs.text_encoders import qwen_image_processor as processor
from comfyui_mmdit.nodes import NODE_CLASS_MAPPINGS as NODES
from comfyui_mmdit.nodes.host import set_host
from comfyui_mmdit.nodes.host.standalone import StandaloneHost
from comfyui_mmdit.tools.tiny_models import (
    TINY_QWEN_DIT, TINY_QWEN_VAE, randomise_vae_, random_state_dict, write_safetensors,
)
from comfyui_mmdit.tools.tiny_tokenizer import write_tiny_qwen_tokenizer

from helpers import (
    as_pil, comfyui_qwen25vl_names, official_qwen_processor, smooth_image, transformers_qwen25vl_with_vision,
    with_token_types,
)

PROMPT = "Picture 1 is the room; put the lamp from picture 2 on the table and make the walls light green"
NEGATIVE = "blurry, low quality"
SEED = 1234
# Same weights, ids and pixels in fp32: differences come only from summation order (each test prints its
# maxima with pytest -s). Measured over the cases: prompt embeddings 0 (bit-identical), reference latents
# 3.2e-6, sampled latents 2.1e-5 (values up to ~10, std ~3), decoded images 2.4e-6. For scale: the CFG
# scale changed by 1% on our side moves the sampled latents by 4.8e-3 or more and the images by 2.4e-4 or more.
EMBEDS_ATOL = 1e-5
LATENTS_ATOL = 1e-5
SAMPLED_ATOL = 1e-4
IMAGE_ATOL = 1e-4

EDIT_AREA = 224 * 160  # stands for 1024 * 1024 in Qwen-Image-Edit (both paths)
PLUS_VAE_AREA = 96 * 96  # stands for 1024 * 1024 in the Plus pipeline's VAE path and output size
OFFICIAL_AREA = 1024 * 1024

EDIT = "Qwen-Image-Edit"
FROM_FILE = "Qwen-Image-Edit-2509 / 2511 (from the model file)"
EDIT_2511 = "Qwen-Image-Edit-2511"
EDIT_2509 = "Qwen-Image-Edit-2509"
TEXT_FILE = "qwen_edit_tiny.safetensors"
VAE_FILE = "qwen_edit_tiny_vae.safetensors"
DIT_FILE = "qwen_edit_tiny_dit.safetensors"
DIT_2511_FILE = "qwen_edit_2511_tiny_dit.safetensors"  # the same weights with ComfyUI's 2511 marker


def _diffusers_transformer(state, zero_cond_t):
    from diffusers import QwenImageTransformer2DModel

    c = TINY_QWEN_DIT
    transformer = QwenImageTransformer2DModel(
        patch_size=c.patch_size, in_channels=c.in_channels, out_channels=c.out_channels, num_layers=c.num_layers,
        attention_head_dim=c.attention_head_dim, num_attention_heads=c.num_attention_heads,
        joint_attention_dim=c.joint_attention_dim, axes_dims_rope=c.axes_dims_rope, zero_cond_t=zero_cond_t).eval()
    transformer.load_state_dict(state)
    return transformer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from diffusers import AutoencoderKLQwenImage

    models = tmp_path_factory.mktemp("models")
    # the tokenizer beside the text encoder, in the folder name the loader looks for
    tokenizer_dir = write_tiny_qwen_tokenizer(models / "text_encoders" / "qwen_edit_tiny_tokenizer")
    tokenizer = load_tokenizer(tokenizer_dir)
    text_encoder = transformers_qwen25vl_with_vision(tokenizer)
    write_safetensors(comfyui_qwen25vl_names(text_encoder.state_dict()), models / "text_encoders" / TEXT_FILE)
    text_encoder = with_token_types(text_encoder, tokenizer.convert_tokens_to_ids("<|image_pad|>"))

    # Larger weights than tools/tiny_models' (0.05): the tiny DiT's velocity then depends on the prompt, the
    # reference tokens and the CFG scale strongly enough for the sampled latents to tell (a 1% change of the
    # CFG scale moves them by 4.8e-3 or more, against differences of about 2e-5 between the pipelines).
    dit_state = random_state_dict(QwenImageTransformer(TINY_QWEN_DIT, StandaloneOps, device="meta"), seed=12,
                                  scale=0.15)
    write_safetensors(dit_state, models / "diffusion_models" / DIT_FILE)
    # Edit-2511 as ComfyUI's files say it: the same tensors and an empty marker tensor.
    write_safetensors({**dit_state, ZERO_COND_MARKER: torch.empty(0)}, models / "diffusion_models" / DIT_2511_FILE)
    transformers = {False: _diffusers_transformer(dit_state, False), True: _diffusers_transformer(dit_state, True)}

    v = TINY_QWEN_VAE
    vae = AutoencoderKLQwenImage(base_dim=v.dim, z_dim=v.z_dim, dim_mult=list(v.dim_mult),
                                 num_res_blocks=v.num_res_blocks,
                                 temperal_downsample=list(v.temperal_downsample)).eval()
    randomise_vae_(vae, seed=13)
    names = diffusers_to_comfyui(vae.state_dict())
    write_safetensors({names[k]: t for k, t in vae.state_dict().items()}, models / "vae" / VAE_FILE)

    set_host(StandaloneHost(models_dir=models, device="cpu"))
    yield dict(tokenizer=tokenizer, text_encoder=text_encoder, transformers=transformers, vae=vae,
               processor=official_qwen_processor(tokenizer))
    set_host(None)


def _pipeline(setup, kind, zero_cond_t=False):
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageEditPipeline, QwenImageEditPlusPipeline

    # Qwen/Qwen-Image-Edit(-2509, -2511) scheduler/scheduler_config.json (the same as Qwen-Image's)
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, num_train_timesteps=1000,
        shift=1.0, shift_terminal=0.02, time_shift_type="exponential", use_dynamic_shifting=True)
    cls = {"edit": QwenImageEditPipeline, "edit_plus": QwenImageEditPlusPipeline}[kind]
    pipe = cls(scheduler=scheduler, vae=setup["vae"], text_encoder=setup["text_encoder"],
               tokenizer=setup["tokenizer"], processor=setup["processor"],
               transformer=setup["transformers"][zero_cond_t])
    # 64 with Qwen's tokenizer; the same text (system block + user header) in the tiny one's tokens
    pipe.prompt_template_encode_start_idx = edit_text.template_drop(setup["tokenizer"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextlib.contextmanager
def small_official_area(kind, area):
    """The official 1024 * 1024 replaced by `area` on both sides (see the module docstring)."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit, pipeline_qwenimage_edit_plus

    module = {"edit": pipeline_qwenimage_edit, "edit_plus": pipeline_qwenimage_edit_plus}[kind]
    official = module.calculate_dimensions

    def calculate_dimensions(target_area, ratio):
        return official(area if target_area == OFFICIAL_AREA else target_area, ratio)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "calculate_dimensions", calculate_dimensions)
        patch.setattr(references, "VAE_AREA", area)
        if kind == "edit":
            patch.setitem(edit_text.VARIANTS, "edit", dataclasses.replace(edit_text.VARIANTS["edit"], vision_area=area))
        yield


def _record(pipe):
    """diffusers' intermediates: every encode_prompt's embeddings and the (normalised) reference latents."""
    seen = {"embeds": [], "latents": []}
    encode_prompt, encode_vae_image = pipe.encode_prompt, pipe._encode_vae_image

    def recording_encode_prompt(*args, **kwargs):
        out = encode_prompt(*args, **kwargs)
        seen["embeds"].append(out[0])
        return out

    def recording_encode_vae_image(*args, **kwargs):
        out = encode_vae_image(*args, **kwargs)
        seen["latents"].append(out)
        return out

    pipe.encode_prompt, pipe._encode_vae_image = recording_encode_prompt, recording_encode_vae_image
    return seen


def _keep_latents(seen):
    """A callback_on_step_end keeping the latents after each step (the last: the sampled latent)."""
    def callback(pipe, step, timestep, tensors):
        seen["sampled"] = tensors["latents"]
        return {}
    return callback


def run_diffusers(setup, kind, images, cfg, steps, batch=1, zero_cond_t=False):
    pipe = _pipeline(setup, kind, zero_cond_t)
    seen = _record(pipe)
    pil = [as_pil(image) for image in images]
    out = pipe(image=pil[0] if kind == "edit" else pil, prompt=PROMPT, negative_prompt=NEGATIVE if cfg > 1 else None,
               true_cfg_scale=cfg, num_inference_steps=steps, num_images_per_prompt=batch,
               generator=torch.Generator().manual_seed(SEED), output_type="np",
               callback_on_step_end=_keep_latents(seen)).images
    # packed [B, tokens, 64] -> [B, 16, 1, h, w] (the model's normalised space), as our LATENT is shaped
    seen["sampled"] = pipe._unpack_latents(seen["sampled"], out.shape[1], out.shape[2], pipe.vae_scale_factor)
    return out, seen


def run_nodes(images, model_choice, dit_file, cfg, steps, batch=1):
    model, = NODES["MMDiTModelLoader"]().load(dit_file)
    encoder, = NODES["MMDiTTextEncoderLoader"]().load(TEXT_FILE, family.DISPLAY_NAME)
    vae, = NODES["MMDiTVAELoader"]().load(VAE_FILE)
    more = {f"image_{i}": image[None] for i, image in enumerate(images[1:], start=2)}
    positive, negative, latent = NODES["MMDiTReferenceImages"]().condition(
        encoder, vae, images[0][None], PROMPT, NEGATIVE, model_choice, "official", **more)
    if batch > 1:  # the node's latent repeated, as ComfyUI's RepeatLatentBatch does
        latent = {"samples": latent["samples"].repeat(batch, 1, 1, 1)}
    samples, = NODES["MMDiTSampler"]().sample(model, positive, negative, latent, SEED, steps=steps, cfg=cfg,
                                              sampler_name="euler", scheduler="official")
    decoded, = NODES["MMDiTVAEDecode"]().decode(samples, vae, tiling="off")
    return decoded.numpy(), positive, negative, family.LATENT_FORMAT.to_model(samples["samples"].float())


def _max(a, b):
    return (torch.as_tensor(a) - torch.as_tensor(b)).abs().max().item()


def compare(expected, seen, got, positive, negative, sampled, cfg, batch, shape):
    """Intermediates first (a failure there says where the pipelines part), then the decoded images."""
    # encode_prompt gives num_images_per_prompt copies; the first is the prompt's
    embeds = _max(positive[0][0], seen["embeds"][0][:1])
    assert positive[0][0].shape == seen["embeds"][0][:1].shape
    assert embeds < EMBEDS_ATOL, embeds
    report = {"embeds": embeds}
    if cfg > 1:
        report["negative embeds"] = _max(negative[0][0], seen["embeds"][1][:1])
        assert negative[0][0].shape == seen["embeds"][1][:1].shape
        assert report["negative embeds"] < EMBEDS_ATOL, report
    # diffusers encodes all images in one call (Edit) or one call per image (Plus), normalised [1, 16, 1, h, w]
    theirs = [latent[i:i + 1] for latent in seen["latents"] for i in range(latent.shape[0])]
    ours = [family.LATENT_FORMAT.to_model(latent.float()) for latent in positive[0][1][REFERENCE_LATENTS]]
    assert [tuple(t.shape) for t in ours] == [tuple(t.shape) for t in theirs]
    report["reference latents"] = max(_max(a, b) for a, b in zip(ours, theirs))
    assert report["reference latents"] < LATENTS_ATOL, report
    assert sampled.shape == seen["sampled"].shape
    report["sampled latent"] = _max(sampled, seen["sampled"])
    assert report["sampled latent"] < SAMPLED_ATOL, report
    assert got.shape == expected.shape == (batch, *shape, 3)
    report["image"] = float(np.abs(got - expected).max())
    print("max abs differences:", {k: f"{v:.2e}" for k, v in report.items()})
    assert report["image"] < IMAGE_ATOL, report
    assert expected.std() > 0.01  # the images are not flat: the comparison means something
    if batch > 1:  # the batch entries had different noise
        assert np.abs(expected[0] - expected[1]).max() > 0.01


def _images(sizes, seed=0):
    """ComfyUI IMAGE rows [H, W, 3] on 8-bit levels, one per (width, height)."""
    return [smooth_image(h, w, seed=seed + 31 * i + w + h) for i, (w, h) in enumerate(sizes)]


# --- Qwen-Image-Edit ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg,steps,batch", [
    (4.0, 3, 1),  # true CFG with a negative prompt
    (1.0, 2, 2),  # no CFG, two images per prompt: the node's latent batch of 2
])
@torch.no_grad()
def test_edit_matches_diffusers(setup, cfg, steps, batch):
    images = _images([(96, 64)])  # -> 224x160 on both paths (the area stands for 1024 * 1024)
    with small_official_area("edit", EDIT_AREA):
        expected, seen = run_diffusers(setup, "edit", images, cfg, steps, batch)
        got, positive, negative, sampled = run_nodes(images, EDIT, DIT_FILE, cfg, steps, batch)
    compare(expected, seen, got, positive, negative, sampled, cfg, batch, (160, 224))


# --- Qwen-Image-Edit-2509 / 2511 (the Plus pipeline) -------------------------------------------------------

TWO = [(80, 112), (144, 48)]  # VAE path -> 96x128 and 160x64; vision path (384 * 384) -> 320x448, 672x224
THREE = [(112, 80), (48, 144), (80, 112)]  # -> 128x96, 64x160, 96x128; 448x320, 224x672, 320x448

PLUS_CASES = [
    # (sizes, model choice, DiT file, diffusers zero_cond_t, cfg, steps, batch)
    pytest.param(TWO, FROM_FILE, DIT_FILE, False, 4.0, 3, 1, id="2509-two-images-cfg"),
    pytest.param(THREE, FROM_FILE, DIT_FILE, False, 1.0, 2, 1, id="2509-three-images"),
    pytest.param(TWO, FROM_FILE, DIT_2511_FILE, True, 2.5, 2, 1, id="2511-marker-two-images-cfg"),
    # The Plus pipeline refuses several prompts (batch_size > 1) but takes num_images_per_prompt: the node's
    # latent batch of 2 against it, with the 2511 modulation and CFG.
    pytest.param(THREE, EDIT_2511, DIT_FILE, True, 3.0, 2, 2, id="2511-chosen-three-images-cfg-batch2"),
    pytest.param(TWO, EDIT_2509, DIT_2511_FILE, False, 1.0, 2, 1, id="2509-chosen-over-marker"),
    # 88x112 -> 96x96 on the VAE path: a two-sided resize Pillow 13 runs vertical pass first.
    pytest.param([(144, 48), (88, 112)], FROM_FILE, DIT_FILE, False, 4.0, 2, 1, id="2509-pillow-vertical-first"),
]


@pytest.mark.parametrize("sizes,choice,dit_file,zero_cond_t,cfg,steps,batch", PLUS_CASES)
@torch.no_grad()
def test_edit_plus_matches_diffusers(setup, sizes, choice, dit_file, zero_cond_t, cfg, steps, batch):
    images = _images(sizes)
    with small_official_area("edit_plus", PLUS_VAE_AREA):
        expected, seen = run_diffusers(setup, "edit_plus", images, cfg, steps, batch, zero_cond_t=zero_cond_t)
        got, positive, negative, sampled = run_nodes(images, choice, dit_file, cfg, steps, batch)
    # the output takes the last image's size at the (small) official area, as the pipeline's default
    width, height = processor.calculate_dimensions(PLUS_VAE_AREA, sizes[-1][0] / sizes[-1][1])
    compare(expected, seen, got, positive, negative, sampled, cfg, batch, (height, width))
