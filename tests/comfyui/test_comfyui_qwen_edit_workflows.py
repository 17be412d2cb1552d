"""Qwen-Image-Edit inside a real ComfyUI.

In the server: both shipped edit workflows run through /prompt on tiny files, reading generated images from
the server's input folder; the reference node's conditioning drives the core KSampler; a HunyuanImage 2.1
model given reference latents stops with a clear message (core KSampler and MMDiTSampler).

In-process: MMDiTReferenceImages' conditioning samples the same under the core KSampler on our MODEL and on
ComfyUI's own Qwen-Image model holding the same tiny weights, and the same under MMDiTSampler; ComfyUI's own
TextEncodeQwenImageEditPlus's reference latents reach our MODEL as they reach ComfyUI's.

ComfyUI's own loaders cannot read the tiny files: UNETLoader reads only in_channels and the layer count
from a Qwen-Image file (2511's marker too, from 0.8.0) and takes every other width from the 20B model, and
CLIPLoader recognises Qwen2.5-VL-7B by its key/value width (512) and builds the 7B text model and its
1280-wide vision tower at fixed sizes, with ComfyUI's full tokenizer. So ComfyUI's Qwen-Image network is
built here from what ComfyUI's detection reads off the file plus the tiny widths, and
TextEncodeQwenImageEditPlus runs with a stand-in CLIP (fixed text features) and our VAE behind ComfyUI's
VAE interface: what is checked is the conditioning convention (`reference_latents`), not ComfyUI's encoders.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_harness import pack_on_comfyui_host

from helpers import ROOT

API = ROOT / "workflows" / "api"
FROM_FILE = "Qwen-Image-Edit-2509 / 2511 (from the model file)"
TINY_WIDTHS = {"attention_head_dim": 32, "num_attention_heads": 2, "joint_attention_dim": 128,
               "axes_dims_rope": (4, 14, 14)}  # TINY_QWEN_DIT's, which ComfyUI does not read from a file


def picture(width: int, height: int, seed: int) -> Image.Image:
    from comfyui_mmdit.tools.demo import stand_in_image

    return stand_in_image(width, height, seed)


def as_image(image: Image.Image) -> torch.Tensor:
    """A PIL image as ComfyUI's IMAGE [1, H, W, 3]."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)[None]


# --- in-process --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pack(comfy_inprocess, tmp_path_factory):
    """Tiny fp32 files (so that ComfyUI's network and ours compute alike): an Edit-2509 diffusion model and an
    Edit-2511 one (the same weights with the marker), the text encoder with its vision tower, the VAE."""
    from comfyui_mmdit.model_defs.qwen_image.edit import ZERO_COND_MARKER
    from comfyui_mmdit.tools.tiny_models import tiny_qwen_dit_state_dict, write_safetensors, write_tiny_component

    models = tmp_path_factory.mktemp("comfy_edit_models")
    state = tiny_qwen_dit_state_dict(seed=7)
    dit = models / "diffusion_models"
    write_safetensors(state, dit / "qwen_edit_2509_tiny.safetensors")
    write_safetensors({**state, ZERO_COND_MARKER: torch.empty(0)}, dit / "qwen_edit_2511_tiny.safetensors")
    write_tiny_component("text_encoders", models / "text_encoders" / "qwen_tiny.safetensors")
    write_tiny_component("vae", models / "vae" / "qwen_tiny_vae.safetensors")
    for folder in ("diffusion_models", "text_encoders", "vae"):
        comfy_inprocess.folder_paths.add_model_folder_path(folder, str(models / folder), is_default=True)
    with pack_on_comfyui_host() as nodes:
        yield nodes, models


@pytest.fixture(scope="module")
def parts(pack):
    nodes, _ = pack
    encoder, = nodes["MMDiTTextEncoderLoader"]().load("qwen_tiny.safetensors", "Qwen-Image")
    vae, = nodes["MMDiTVAELoader"]().load("qwen_tiny_vae.safetensors")
    # Native policy: cropped to 64x64 and 128x96 pixels, latents 8x8 and 12x16, token grids 4x4 and 6x8: even
    # grids, references no larger than the output (the last image), where ComfyUI's placement is the
    # official one (tests/comfyui/test_comfyui_qwen_edit.py; elsewhere ComfyUI departs from it).
    images = [as_image(picture(70, 72, 1)), as_image(picture(128, 100, 2))]
    return dict(encoder=encoder, vae=vae, images=images)


def comfyuis_qwen_model(path):
    """ComfyUI's own Qwen-Image model (its model class and network) holding the file's weights: what
    ComfyUI's detection reads off the file, the tiny widths it does not read, then as comfy.sd loads."""
    import comfy.model_detection
    import comfy.model_patcher
    import comfy.utils

    state = comfy.utils.load_torch_file(str(path))
    unet_config = comfy.model_detection.detect_unet_config(state, "")
    assert unet_config["image_model"] == "qwen_image" and unet_config["num_layers"] == 2
    model_config = comfy.model_detection.model_config_from_unet_config({**unet_config, **TINY_WIDTHS}, state)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model(state, "")
    model.load_model_weights(state, "")
    assert type(model).__name__ == "QwenImage"
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def ksampler(comfy_inprocess, model, positive, negative, latent, steps=2, cfg=2.5):
    out, = comfy_inprocess.nodes.KSampler().sample(model, 17, steps, cfg, "euler", "simple", positive, negative, latent)
    return flat(out["samples"])


def flat(samples: torch.Tensor) -> torch.Tensor:
    """[B, 16, h, w] (ComfyUI 0.8.0's samplers give Qwen-Image latents a frame axis: [B, 16, 1, h, w])."""
    return samples.reshape(samples.shape[0], 16, *samples.shape[-2:])


def comfyui_knows(method: str) -> bool:
    import inspect

    import comfy.ldm.qwen_image.model as qwen_model

    return f'"{method}"' in inspect.getsource(qwen_model)


@pytest.mark.parametrize("model_file", ["qwen_edit_2509_tiny.safetensors", "qwen_edit_2511_tiny.safetensors"])
def test_reference_conditioning_under_the_core_ksampler_on_our_model_and_comfyuis(comfy_inprocess, pack, parts,
                                                                                   model_file):
    """Two reference images (native policy) -> the same latents from the core KSampler on our MODEL and on
    ComfyUI's Qwen-Image model with the same weights (2511: where ComfyUI knows timestep-zero references),
    and from MMDiTSampler (plain CFG, ComfyUI's schedule) on ours; without the references it differs."""
    nodes, models = pack
    model, = nodes["MMDiTModelLoader"]().load(model_file)
    positive, negative, latent = nodes["MMDiTReferenceImages"]().condition(
        parts["encoder"], parts["vae"], parts["images"][0], "Picture 1 wears the hat from Picture 2", " ",
        FROM_FILE, "native", image_2=parts["images"][1])
    assert [tuple(r.shape) for r in positive[0][1]["reference_latents"]] == [(1, 16, 1, 8, 8), (1, 16, 1, 12, 16)]
    assert latent["samples"].shape == (1, 16, 12, 16)  # the last image's size (2509/2511)

    ours = ksampler(comfy_inprocess, model, positive, negative, latent)
    assert ours.shape == (1, 16, 12, 16) and torch.isfinite(ours).all()
    mmdit, = nodes["MMDiTSampler"]().sample(model, positive, negative, latent, 17, steps=2, cfg=2.5,
                                            scheduler="simple", guidance="cfg")
    torch.testing.assert_close(flat(mmdit["samples"]), ours, atol=1e-4, rtol=1e-4)

    plain = [[c, {k: v for k, v in extras.items() if k != "reference_latents"}] for c, extras in positive]
    plain_negative = [[c, {k: v for k, v in extras.items() if k != "reference_latents"}] for c, extras in negative]
    assert (ksampler(comfy_inprocess, model, plain, plain_negative, latent) - ours).abs().max() > 1e-3

    marked = "2511" in model_file
    assert model.model.diffusion_model.config.zero_cond_t == marked
    if marked and not comfyui_knows("index_timestep_zero"):
        return  # this release's network has no timestep-zero references (0.3.64): nothing of its own to compare
    theirs = comfyuis_qwen_model(models / "diffusion_models" / model_file)
    torch.testing.assert_close(ksampler(comfy_inprocess, theirs, positive, negative, latent), ours,
                               atol=1e-4, rtol=1e-4)
    # ... and our sampler, official schedule and guidance, runs ComfyUI's model as it runs ours.
    official = [flat(nodes["MMDiTSampler"]().sample(m, positive, negative, latent, 17, steps=2, cfg=4.0)[0]["samples"])
                for m in (model, theirs)]
    torch.testing.assert_close(official[1], official[0], atol=1e-4, rtol=1e-4)


def test_comfyuis_edit_plus_node_conditioning_reaches_our_model(comfy_inprocess, pack, parts):
    """ComfyUI's TextEncodeQwenImageEditPlus puts its VAE-encoded image under `reference_latents` (rescaled
    by the node to about a megapixel: a square image becomes 1024x1024); our MODEL samples that conditioning
    as ComfyUI's own Qwen-Image model does (output 1024x1024 too, so the reference is no larger than the
    output and ComfyUI's placement is the official one; one pass per step to keep it short), and the
    reference changes the result."""
    from comfy_extras.nodes_qwen import TextEncodeQwenImageEditPlus

    nodes, models = pack
    seen = {}

    class TextFeatures:
        """A stand-in CLIP (ComfyUI's CLIPLoader cannot load the tiny encoder): fixed 128-wide features."""

        def tokenize(self, text, **kwargs):
            seen.update(text=text, images=[tuple(i.shape) for i in kwargs.get("images", [])])
            return text

        def encode_from_tokens_scheduled(self, tokens):
            return [[torch.randn(1, 9, 128, generator=torch.Generator().manual_seed(3)), {}]]

    class OurVAE:
        """Our VAE behind ComfyUI's VAE interface (ComfyUI's VAELoader builds its Qwen VAE 96 channels wide)."""

        def encode(self, pixels):
            return nodes["MMDiTVAEEncode"]().encode(pixels, parts["vae"])[0]["samples"]

    def conditioning(vae):
        out = TextEncodeQwenImageEditPlus.execute(TextFeatures(), "make the sky green", vae,
                                                  as_image(picture(64, 64, 4)))
        return out[0] if isinstance(out, tuple) else out.args[0]

    positive = conditioning(OurVAE())
    assert seen["text"].startswith("Picture 1: <|vision_start|><|image_pad|><|vision_end|>make the sky green")
    assert seen["images"] == [(1, 384, 384, 3)]  # what ComfyUI's vision path would read
    (reference,) = positive[0][1]["reference_latents"]
    assert tuple(reference.shape) == (1, 16, 1, 128, 128)
    latent, = nodes["MMDiTEmptyLatent"]().generate("Qwen-Image", "custom (width x height)", 1024, 1024, 1)

    ours, = nodes["MMDiTModelLoader"]().load("qwen_edit_2509_tiny.safetensors")
    theirs = comfyuis_qwen_model(models / "diffusion_models" / "qwen_edit_2509_tiny.safetensors")
    with_reference = ksampler(comfy_inprocess, ours, positive, positive, latent, cfg=1.0)
    torch.testing.assert_close(ksampler(comfy_inprocess, theirs, positive, positive, latent, cfg=1.0), with_reference,
                               atol=1e-4, rtol=1e-4)
    text_only = conditioning(None)
    assert "reference_latents" not in text_only[0][1]
    without = ksampler(comfy_inprocess, ours, text_only, text_only, latent, cfg=1.0)
    assert (with_reference - without).abs().max() > 1e-3


# --- in the server -----------------------------------------------------------------------------------------
def shipped(name: str, steps: int = 2, **reference_inputs) -> dict:
    """A shipped edit workflow at `steps` steps (tiny random models: a pipeline check)."""
    workflow = json.loads((API / name).read_text())
    for node in workflow.values():
        if node["class_type"] == "MMDiTSampler":
            node["inputs"]["steps"] = steps
        if node["class_type"] == "MMDiTReferenceImages":
            node["inputs"].update(reference_inputs)
    return workflow


def put_inputs(server, workflow: dict, sizes: list[tuple[int, int]]) -> None:
    """Generated pictures under the names the workflow's LoadImage nodes ask for, in the server's input/."""
    names = [node["inputs"]["image"] for _, node in sorted(workflow.items(), key=lambda item: int(item[0]))
             if node["class_type"] == "LoadImage"]
    assert len(names) == len(sizes)
    for seed, (name, (width, height)) in enumerate(zip(names, sizes)):
        picture(width, height, seed).save(server.base_dir / "input" / name)


def run_to_image(server, workflow: dict) -> Image.Image:
    (path,) = server.outputs(server.wait_for(server.queue_prompt(workflow), timeout=300))
    return Image.open(path)


def failure(server, workflow: dict) -> str:
    status, answer = server.submit(workflow)
    assert status == 200, answer
    entry = server.wait_for(answer["prompt_id"], timeout=300, allow_failure=True)
    messages = [m for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert messages, "the workflow should have failed"
    return messages[0][1]["exception_message"]


def test_shipped_edit_workflow_runs(comfy_server):
    """One image at its own size: 200x136 is cropped to 192x128 (whole 16-pixel cells), the output's size."""
    workflow = shipped("qwen_image_edit.api.json")
    put_inputs(comfy_server, workflow, [(200, 136)])
    assert run_to_image(comfy_server, workflow).size == (192, 128)


def test_shipped_multi_image_edit_workflow_runs(comfy_server):
    """Three pictures at the official size (each about a megapixel, the output at Picture 3's shape: 160x240
    becomes 832x1248), one step."""
    workflow = shipped("qwen_image_edit_multi.api.json", steps=1)
    put_inputs(comfy_server, workflow, [(96, 64), (64, 64), (160, 240)])
    assert run_to_image(comfy_server, workflow).size == (832, 1248)


def test_reference_conditioning_with_the_core_ksampler(comfy_server):
    """MMDiTReferenceImages' positive, negative and latent straight into ComfyUI's KSampler on our MODEL."""
    workflow = shipped("qwen_image_edit.api.json", image_2=["9", 0])
    workflow["9"] = {"class_type": "LoadImage", "inputs": {"image": "second_picture.png"}}
    put_inputs(comfy_server, workflow, [(96, 80), (64, 48)])
    workflow["6"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": ["5", 0], "negative": ["5", 1], "latent_image": ["5", 2], "seed": 3,
        "steps": 2, "cfg": 2.5, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}}
    assert run_to_image(comfy_server, workflow).size == (64, 48)  # Picture 2's size (2509/2511)


def _hunyuan_with_reference_latent() -> dict:
    """The distilled HunyuanImage 2.1 workflow with ComfyUI's ReferenceLatent on its positive prompt."""
    workflow = json.loads((API / "hunyuanimage21_distilled.api.json").read_text())
    workflow["5"]["inputs"].update(aspect="custom (width x height)", width=64, height=64)
    workflow["6"]["inputs"].update(steps=1)
    workflow["20"] = {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["3", 0], "latent": ["5", 0]}}
    workflow["6"]["inputs"]["positive"] = ["20", 0]
    return workflow


def test_hunyuan_model_given_reference_latents_is_refused(comfy_server):
    workflow = _hunyuan_with_reference_latent()
    workflow["6"] = {"class_type": "KSampler", "inputs": {
        **{k: workflow["6"]["inputs"][k] for k in ("model", "positive", "negative", "latent_image", "seed", "steps")},
        "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}}
    message = failure(comfy_server, workflow)
    assert "HunyuanImage 2.1 takes no reference images, but the conditioning holds 1" in message, message
    assert "or use an edit model" in message

    message = failure(comfy_server, _hunyuan_with_reference_latent())  # the same through MMDiTSampler
    assert "the positive conditioning holds 1 reference image, but HunyuanImage 2.1 models take none" in message, message
