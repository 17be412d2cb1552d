"""HunyuanImage 2.1 inside a real ComfyUI (in-process): the native MODEL class and shift per variant, the
MMDiTSampler under ComfyUI's sampler equal to the standalone path (which tests/test_hunyuan_pipeline.py
holds against diffusers), embedded guidance as ComfyUI's FluxGuidance writes it, and ComfyUI's block
replacement patches on both block kinds."""

import pytest
import torch

from comfy_harness import pack_on_comfyui_host, write_tiny_models

FAMILY = "HunyuanImage 2.1"
PROMPT = 'a shop sign that reads "OPEN" above a red door'
FILES = {"base": "hunyuan_tiny.safetensors", "distilled": "hunyuan_distilled_tiny.safetensors"}


@pytest.fixture(scope="module")
def pack(comfy_inprocess, tmp_path_factory):
    models = tmp_path_factory.mktemp("comfy_hunyuan_models")
    for name in FILES.values():
        write_tiny_models(comfy_inprocess.folder_paths, models, {"diffusion_models": name})
    write_tiny_models(comfy_inprocess.folder_paths, models, {
        "text_encoders": "qwen_tiny.safetensors", "vae": "hunyuan_tiny_vae.safetensors"})
    write_tiny_models(comfy_inprocess.folder_paths, models, {"text_encoders": "byt5_tiny.safetensors"})
    with pack_on_comfyui_host() as nodes:
        yield nodes, models


def _graph(nodes, variant):
    model, = nodes["MMDiTModelLoader"]().load(FILES[variant])
    encoder, = nodes["MMDiTTextEncoderLoader"]().load("qwen_tiny.safetensors", FAMILY, "byt5_tiny.safetensors")
    positive, = nodes["MMDiTTextEncode"]().encode(encoder, PROMPT)
    negative, = nodes["MMDiTTextEncode"]().encode(encoder, "")
    latent, = nodes["MMDiTEmptyLatent"]().generate(FAMILY, "custom (width x height)", 96, 64, 2)
    return dict(model=model, positive=positive, negative=negative, latent=latent)


@pytest.fixture(scope="module")
def graphs(pack):
    nodes, _ = pack
    return {variant: _graph(nodes, variant) for variant in FILES}


def _sample(nodes, graph, **settings):
    settings = {"steps": 8, "cfg": 3.5, **settings}
    samples, = nodes["MMDiTSampler"]().sample(graph["model"], graph["positive"], graph["negative"], graph["latent"],
                                              11, **settings)
    return samples["samples"]


@pytest.mark.parametrize("variant, shift", [("base", 5.0), ("distilled", 4.0)])
def test_native_model_class_and_the_variants_shift(comfy_inprocess, graphs, variant, shift):
    model = graphs[variant]["model"]
    assert isinstance(model.model, comfy_inprocess.comfy.model_base.HunyuanImage21)
    sampling = model.get_model_object("model_sampling")
    assert sampling.shift == shift and sampling.multiplier == 1000


@pytest.mark.parametrize("variant, settings", [
    ("base", {}),  # 8 steps: CFG for steps 0-5, the adaptive projected guidance after
    ("distilled", {"steps": 4, "cfg": 3.25}),  # embedded guidance, MeanFlow step ends
])
def test_mmdit_sampler_in_comfyui_matches_the_standalone_path(pack, graphs, variant, settings):
    nodes, models = pack
    in_comfyui = _sample(nodes, graphs[variant], **settings)

    from comfyui_mmdit.nodes import host
    from comfyui_mmdit.nodes.host.standalone import StandaloneHost

    host.set_host(StandaloneHost(models_dir=models, device="cpu"))
    try:
        standalone = _sample(nodes, _graph(nodes, variant), **settings)
    finally:
        host.set_host(None)
    assert in_comfyui.shape == (2, 64, 2, 3)
    torch.testing.assert_close(in_comfyui, standalone, atol=1e-4, rtol=1e-5)


def test_embedded_guidance_from_flux_guidance_and_the_core_ksampler(comfy_inprocess, pack, graphs):
    """ComfyUI's FluxGuidance writes the conditioning's "guidance"; the core KSampler (one pass, cfg 1) then
    gives what MMDiTSampler gives with that scale on the same schedule; without it the variant's 3.25."""
    from comfy_extras.nodes_flux import FluxGuidance

    nodes, _ = pack
    graph = graphs["distilled"]
    ours = _sample(nodes, graph, steps=3, cfg=2.0, scheduler="simple")

    def core(positive):
        samples, = comfy_inprocess.nodes.KSampler().sample(graph["model"], 11, 3, 1.0, "euler", "simple", positive,
                                                           graph["negative"], graph["latent"])
        return samples["samples"]

    guided = FluxGuidance().append(graph["positive"], 2.0)
    guided = guided[0] if isinstance(guided, tuple) else guided.args[0]
    torch.testing.assert_close(core(guided), ours, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(core(graph["positive"]), _sample(nodes, graph, steps=3, cfg=3.25, scheduler="simple"),
                               atol=1e-4, rtol=1e-5)


def test_block_replace_patches_on_both_block_kinds(pack, graphs):
    nodes, _ = pack
    graph = graphs["base"]
    reference = _sample(nodes, graph, steps=2)
    calls = {"double_block": 0, "single_block": 0}

    def counting(kind):
        def replace(args, extra):
            calls[kind] += 1
            return extra["original_block"](args)
        return replace

    patched = graph["model"].clone()
    patched.set_model_patch_replace(counting("double_block"), "dit", "double_block", 1)
    patched.set_model_patch_replace(counting("single_block"), "dit", "single_block", 0)
    out = _sample(nodes, {**graph, "model": patched}, steps=2)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    assert calls == {"double_block": 4, "single_block": 4}  # 2 steps x (cond + uncond)


@pytest.mark.parametrize("sampler_name, scheduler", [("heun", "simple"), ("dpmpp_2m", "karras"),
                                                     ("euler_ancestral", "beta"), ("euler", "official")])
def test_comfyui_samplers_with_the_official_guidance(pack, graphs, sampler_name, scheduler):
    """Multi-call samplers (Heun) and other schedules run the adaptive projected guidance too."""
    nodes, _ = pack
    out = _sample(nodes, graphs["base"], steps=8, sampler_name=sampler_name, scheduler=scheduler)
    assert out.shape == (2, 64, 2, 3) and torch.isfinite(out).all()


def test_odd_size_batch_and_image_to_image(pack):
    """224x160 pixels (a 7x5 latent), batch 3, one step; then the decoded images encoded and resampled at
    denoise 0.5 (partial schedule, noise added to the encoded latent)."""
    nodes, _ = pack
    graph = _graph(nodes, "distilled")
    latent, = nodes["MMDiTEmptyLatent"]().generate(FAMILY, "custom (width x height)", 224, 160, 3)
    samples, = nodes["MMDiTSampler"]().sample(graph["model"], graph["positive"], graph["negative"], latent, 2,
                                              steps=1, cfg=3.25)
    vae, = nodes["MMDiTVAELoader"]().load("hunyuan_tiny_vae.safetensors")
    images, = nodes["MMDiTVAEDecode"]().decode(samples, vae)
    assert images.shape == (3, 160, 224, 3)
    encoded, = nodes["MMDiTVAEEncode"]().encode(images, vae)
    assert encoded["samples"].shape == (3, 64, 5, 7)
    again, = nodes["MMDiTSampler"]().sample(graph["model"], graph["positive"], graph["negative"], encoded, 2,
                                            steps=4, cfg=3.25, denoise=0.5)
    assert again["samples"].shape == (3, 64, 5, 7) and torch.isfinite(again["samples"]).all()


def test_low_vram_partial_loading_gives_the_same_result(graphs):
    """A quarter of the network loaded, the rest streamed and cast at use (as on a small card)."""
    from comfy_harness import network_forward, partially_loaded, streamed_layers

    model = graphs["distilled"]["model"]
    reference = network_forward(model)
    with partially_loaded(model) as partial:
        torch.testing.assert_close(network_forward(partial), reference, atol=1e-5, rtol=1e-5)
        assert streamed_layers(partial)


def test_comfyuis_own_hunyuan_model_through_mmdit_sampler(comfy_inprocess, pack, tmp_path):
    """A distilled HunyuanImage 2.1 loaded by ComfyUI's own loader (its HunyuanVideo network) is sampled by
    MMDiTSampler as its variant asks (embedded guidance, MeanFlow), and gives what our network gives on the
    same weights. ComfyUI's network fixes some widths (head 128, glyph mapper 1472 -> 2048), so this model
    is wider than the other tiny ones."""
    import comfy.sd

    from comfyui_mmdit.model_defs.hunyuan_image.transformer import HunyuanImageConfig
    from comfyui_mmdit.tools.tiny_models import tiny_hunyuan_dit_state_dict, write_safetensors
    from hunyuan_layouts import in_layout

    nodes, models = pack
    config = HunyuanImageConfig(hidden_size=256, num_heads=2, depth_double=1, depth_single=1, axes_dims=(64, 64),
                                context_dim=128, guidance_embed=True, meanflow=True)
    state = in_layout(tiny_hunyuan_dit_state_dict(config, seed=31), "fused_original", "distilled_dit", 256)
    write_safetensors(state, models / "diffusion_models" / "hunyuan_wide_distilled.safetensors")
    native = comfy.sd.load_diffusion_model_state_dict(dict(state))  # (it empties the dict it is given)
    assert type(native.model).__name__ == "HunyuanImage21"
    ours, = nodes["MMDiTModelLoader"]().load("hunyuan_wide_distilled.safetensors")

    encoder, = nodes["MMDiTTextEncoderLoader"]().load("qwen_tiny.safetensors", FAMILY, "byt5_tiny.safetensors")
    positive, = nodes["MMDiTTextEncode"]().encode(encoder, "a quiet lake at dawn")  # no glyph text (ByT5 is 64 wide)
    latent, = nodes["MMDiTEmptyLatent"]().generate(FAMILY, "custom (width x height)", 96, 64, 1)

    def sample(model):
        out, = nodes["MMDiTSampler"]().sample(model, positive, positive, latent, 4, steps=3, cfg=2.5)
        return out["samples"]

    torch.testing.assert_close(sample(native), sample(ours), atol=1e-4, rtol=1e-4)


def test_core_lora_loader_on_the_hunyuan_model(comfy_inprocess, pack, graphs, tmp_path):
    """A LoRA in ComfyUI's key format (diffusion_model.<our names>) on both block kinds patches the MODEL
    through LoraLoaderModelOnly, and changes the result."""
    from safetensors.torch import save_file

    nodes, _ = pack
    graph = graphs["distilled"]
    network = graph["model"].model.diffusion_model
    generator = torch.Generator().manual_seed(9)
    lora = {}
    for layer in ("double_blocks.0.img_attn.qkv", "double_blocks.1.txt_mlp.0", "single_blocks.0.linear1"):
        module = network.get_submodule(layer)
        lora[f"diffusion_model.{layer}.lora_A.weight"] = torch.randn(4, module.in_features, generator=generator) * 0.3
        lora[f"diffusion_model.{layer}.lora_B.weight"] = torch.randn(module.out_features, 4, generator=generator) * 0.3
    loras = tmp_path / "loras"
    loras.mkdir()
    save_file(lora, str(loras / "hunyuan_detail.safetensors"))
    comfy_inprocess.folder_paths.add_model_folder_path("loras", str(loras), is_default=True)

    patched, = comfy_inprocess.nodes.LoraLoaderModelOnly().load_lora_model_only(graph["model"], "hunyuan_detail.safetensors", 1.0)
    assert len(patched.patches) == 3
    before = _sample(nodes, graph, steps=2, cfg=3.25)
    after = _sample(nodes, {**graph, "model": patched}, steps=2, cfg=3.25)
    assert torch.isfinite(after).all() and (after - before).abs().max() > 1e-3
