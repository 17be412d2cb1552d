"""The pack inside a real ComfyUI (in-process): native MODEL under ComfyUI's samplers, memory manager and
LoRA loader; the MMDiTSampler inside ComfyUI gives the image the standalone path (and so diffusers) gives.
"""

import pytest
import torch

from comfy_harness import (
    network_forward, pack_on_comfyui_host, partially_loaded, streamed_layers, write_tiny_models,
)

QWEN = "Qwen-Image"
PROMPT = "a red fox in the snow"


@pytest.fixture(scope="module")
def pack(comfy_inprocess, tmp_path_factory):
    """The pack's nodes with ComfyUI as host, tiny Qwen-Image files registered in ComfyUI's folders."""
    models = tmp_path_factory.mktemp("comfy_models")
    write_tiny_models(comfy_inprocess.folder_paths, models, {
        "diffusion_models": "tiny.safetensors", "text_encoders": "tiny.safetensors", "vae": "tiny_vae.safetensors"})
    with pack_on_comfyui_host() as nodes:
        yield nodes, models


@pytest.fixture(scope="module")
def graph(pack):
    nodes, _ = pack
    model, = nodes["MMDiTModelLoader"]().load("tiny.safetensors")
    encoder, = nodes["MMDiTTextEncoderLoader"]().load("tiny.safetensors", QWEN)
    positive, = nodes["MMDiTTextEncode"]().encode(encoder, PROMPT)
    negative, = nodes["MMDiTTextEncode"]().encode(encoder, " ")
    latent, = nodes["MMDiTEmptyLatent"]().generate(QWEN, "custom (width x height)", 64, 48, 2)
    vae, = nodes["MMDiTVAELoader"]().load("tiny_vae.safetensors")
    return dict(model=model, positive=positive, negative=negative, latent=latent, vae=vae)


def test_loader_returns_a_native_model(comfy_inprocess, graph):
    model = graph["model"]
    assert isinstance(model, comfy_inprocess.comfy.model_patcher.ModelPatcher)
    # ComfyUI's own Qwen-Image class (LoRA key formats, isinstance checks of other nodes work).
    assert isinstance(model.model, comfy_inprocess.comfy.model_base.QwenImage)
    layers = [m for m in model.model.diffusion_model.modules() if isinstance(m, torch.nn.Linear)]
    assert layers and all(hasattr(m, "comfy_cast_weights") for m in layers)  # built from ComfyUI's ops


def _mmdit_sample(nodes, graph, model=None, **settings):
    samples, = nodes["MMDiTSampler"]().sample(model or graph["model"], graph["positive"], graph["negative"],
                                              graph["latent"], 5, steps=3, cfg=4.0, **settings)
    return samples["samples"]


def test_mmdit_sampler_in_comfyui_matches_the_standalone_pipeline(pack, graph):
    """The standalone path matches diffusers' QwenImagePipeline (tests/test_pipeline_parity.py); inside
    ComfyUI the same node runs on ComfyUI's euler sampler, CFG hook and model sampling."""
    nodes, models = pack
    in_comfyui = _mmdit_sample(nodes, graph)

    from comfyui_mmdit.nodes import host
    from comfyui_mmdit.nodes.host.standalone import StandaloneHost

    host.set_host(StandaloneHost(models_dir=models, device="cpu"))
    try:
        model, = nodes["MMDiTModelLoader"]().load("tiny.safetensors")
        encoder, = nodes["MMDiTTextEncoderLoader"]().load("tiny.safetensors", QWEN)
        positive, = nodes["MMDiTTextEncode"]().encode(encoder, PROMPT)
        negative, = nodes["MMDiTTextEncode"]().encode(encoder, " ")
        standalone, = nodes["MMDiTSampler"]().sample(model, positive, negative, graph["latent"], 5, steps=3, cfg=4.0)
    finally:
        host.set_host(None)
    assert in_comfyui.shape == (2, 16, 1, 6, 8)
    torch.testing.assert_close(in_comfyui, standalone["samples"], atol=1e-4, rtol=1e-5)


def test_comfyui_schedulers_and_samplers(pack, graph):
    nodes, _ = pack
    for scheduler in ("simple", "beta", "karras"):
        out = _mmdit_sample(nodes, graph, scheduler=scheduler, sampler_name="dpmpp_2m")
        assert out.shape == (2, 16, 1, 6, 8) and torch.isfinite(out).all()


def test_core_ksampler_and_vae_decode(comfy_inprocess, pack, graph):
    nodes, _ = pack
    from comfy_extras.nodes_model_advanced import ModelSamplingAuraFlow

    model, = ModelSamplingAuraFlow().patch_aura(graph["model"], 3.1)  # as ComfyUI's Qwen-Image template does
    samples, = comfy_inprocess.nodes.KSampler().sample(model, 1, 4, 2.5, "euler", "simple", graph["positive"], graph["negative"],
                                      graph["latent"])
    images, = nodes["MMDiTVAEDecode"]().decode(samples, graph["vae"])
    assert images.shape == (2, 48, 64, 3)


def test_low_vram_partial_loading_gives_the_same_result(pack, graph):
    """With a budget smaller than the model, the memory manager leaves layers on the offload device and
    casts them at use; the result must not change."""
    reference = network_forward(graph["model"])
    with partially_loaded(graph["model"]) as model:
        torch.testing.assert_close(network_forward(model), reference, atol=1e-5, rtol=1e-5)
        assert streamed_layers(model)  # still streamed while it ran


def test_core_lora_loader_patches_our_network(comfy_inprocess, pack, graph):
    """A LoRA in the diffusers/Qwen key format, through ComfyUI's LoRA loader, changes exactly the weights
    it targets by up @ down * strength."""
    comfy = comfy_inprocess.comfy
    network = graph["model"].model.diffusion_model
    target = "transformer_blocks.0.attn.to_q"
    weight = network.get_submodule(target).weight.detach().float().clone()
    g = torch.Generator().manual_seed(0)
    down = torch.randn(4, weight.shape[1], generator=g) * 0.1
    up = torch.randn(weight.shape[0], 4, generator=g) * 0.1
    lora = {f"transformer.{target}.lora_A.weight": down, f"transformer.{target}.lora_B.weight": up}
    patched, _ = comfy.sd.load_lora_for_models(graph["model"], None, lora, 0.7, 0)
    assert len(patched.patches) == 1  # the key format was understood
    patched.patch_model(device_to=torch.device("cpu"))
    try:
        new = patched.model.diffusion_model.get_submodule(target).weight.detach().float()
        torch.testing.assert_close(new, weight + 0.7 * up @ down, atol=1e-5, rtol=1e-5)
    finally:
        patched.unpatch_model(torch.device("cpu"))
    torch.testing.assert_close(network.get_submodule(target).weight.detach().float(), weight)


def test_comfyui_schedulers_use_the_models_shift(comfy_inprocess, pack, graph):
    """ComfyUI's schedulers in MMDiTSampler sample over the MODEL's own sampling, so a ModelSampling* node
    applies exactly as it does to the core KSampler."""
    from comfy_extras.nodes_model_advanced import ModelSamplingAuraFlow

    from comfyui_mmdit.model_defs.families import QWEN_IMAGE
    from comfyui_mmdit.nodes.host import get_host
    from comfyui_mmdit.nodes.sampler import schedule

    host = get_host()
    calculate_sigmas = comfy_inprocess.comfy.samplers.calculate_sigmas
    shape = graph["latent"]["samples"].shape
    default = schedule(host, graph["model"], QWEN_IMAGE, "simple", 4, shape, 1.0)
    native = calculate_sigmas(graph["model"].get_model_object("model_sampling"), "simple", 4).cpu()
    torch.testing.assert_close(default, native)  # ComfyUI's own Qwen-Image sampling, untouched
    patched, = ModelSamplingAuraFlow().patch_aura(graph["model"], 6.0)
    steeper = schedule(host, patched, QWEN_IMAGE, "simple", 4, shape, 1.0)
    torch.testing.assert_close(steeper, calculate_sigmas(patched.get_model_object("model_sampling"), "simple", 4).cpu())
    torch.testing.assert_close(steeper[1:-1], torch.tensor([0.75, 0.5, 0.25]) * 6 / (1 + 5 * torch.tensor([0.75, 0.5, 0.25])),
                               atol=2e-3, rtol=0)  # ComfyUI's table lookup is within one of 1000 timesteps
    assert (steeper[1:-1] > default[1:-1]).all()
    # The official schedule does not depend on the MODEL's shift.
    torch.testing.assert_close(schedule(host, patched, QWEN_IMAGE, "official", 4, shape, 1.0),
                               schedule(host, graph["model"], QWEN_IMAGE, "official", 4, shape, 1.0))


def test_nan_weights_stop_the_core_ksampler_with_the_file_and_step(comfy_inprocess, pack, graph):
    """The check sits in the network's forward, so ComfyUI's own KSampler stops too, naming the file, the
    tensor and the step instead of returning a black image."""
    from safetensors.torch import load_file, save_file

    from comfyui_mmdit.loaders.errors import ModelFileError

    nodes, models = pack
    tensors = load_file(str(models / "diffusion_models" / "tiny.safetensors"))
    tensors["transformer_blocks.0.img_mlp.net.2.weight"] = tensors["transformer_blocks.0.img_mlp.net.2.weight"].clone()
    tensors["transformer_blocks.0.img_mlp.net.2.weight"][0, 0] = float("nan")
    save_file(tensors, str(models / "diffusion_models" / "tiny_nan.safetensors"))
    model, = nodes["MMDiTModelLoader"]().load("tiny_nan.safetensors")
    with pytest.raises(ModelFileError, match=r"tiny_nan.safetensors: holds NaN or Inf values, so the diffusion model "
                                             r"produced them at step 1 of 2 .*transformer_blocks.0.img_mlp.net.2.weight"):
        comfy_inprocess.nodes.KSampler().sample(model, 1, 2, 2.5, "euler", "simple", graph["positive"],
                                                graph["negative"], graph["latent"])


def test_text_features_of_another_width_are_a_clear_error(pack, graph):
    nodes, _ = pack
    narrow = [[torch.zeros(1, 5, 64), {}]]  # what a text encoder of another family or size gives
    with pytest.raises(ValueError, match="the negative conditioning is 64 wide, but this Qwen-Image diffusion "
                                         "model takes 128-wide text features"):
        nodes["MMDiTSampler"]().sample(graph["model"], graph["positive"], narrow, graph["latent"], 5, steps=1)


def test_loaders_validate_their_files_on_the_comfyui_host(pack):
    nodes, _ = pack
    assert nodes["MMDiTModelLoader"].VALIDATE_INPUTS("tiny.safetensors") is True
    assert nodes["MMDiTTextEncoderLoader"].VALIDATE_INPUTS("tiny.safetensors") is True
    assert nodes["MMDiTVAELoader"].VALIDATE_INPUTS("tiny_vae.safetensors") is True
    assert "is not in the vae models folder" in nodes["MMDiTVAELoader"].VALIDATE_INPUTS("missing.safetensors")
