"""FP8 files inside a real ComfyUI (in-process, on the CPU), loaded through the pack's loader node with the
default weight dtype: a plain FP8 file (no scales, as qwen_image_fp8_e4m3fn.safetensors) and the scaled-FP8
layout ComfyUI 0.3.64 itself saves (Linear biases in FP8 without scales). Both stay 1 byte per value in
memory, also once ComfyUI's memory manager has loaded them, and compute what a float32 model holding the
same values computes (biases: the fp8 number, as ComfyUI casts them). A plain FP8 VAE decodes as its
float32 twin does."""

import pytest
import torch

from comfy_harness import network_forward, pack_on_comfyui_host
from helpers import fp8_variants


@pytest.fixture(scope="module")
def pack(comfy_inprocess, tmp_path_factory):
    from safetensors.torch import save_file

    from comfyui_mmdit.tools.tiny_models import tiny_qwen_dit_state_dict, tiny_qwen_vae_state_dict

    root = tmp_path_factory.mktemp("comfy_fp8")
    files = fp8_variants(tiny_qwen_dit_state_dict(seed=8), root / "diffusion_models", "tiny")
    vae = {k: v.to(torch.float8_e4m3fn) for k, v in tiny_qwen_vae_state_dict(seed=2).items()}
    (root / "vae").mkdir()
    save_file(vae, str(root / "vae" / "tiny_vae_fp8.safetensors"))
    save_file({k: v.float() for k, v in vae.items()}, str(root / "vae" / "tiny_vae_fp32.safetensors"))
    for folder in ("diffusion_models", "vae"):
        comfy_inprocess.folder_paths.add_model_folder_path(folder, str(root / folder), is_default=True)
    with pack_on_comfyui_host() as nodes:
        yield nodes, files


def _one_byte(network, layout) -> list[str]:
    """Parameters that are not 1 byte per value (plain files: none; ComfyUI's scaled layout keeps its
    norms in bf16)."""
    return [name for name, p in network.named_parameters()
            if p.element_size() != 1 and (layout == "plain" or p.ndim >= 2 or name.endswith(".bias"))]


@pytest.mark.parametrize("layout", ["plain", "comfyui_scaled"])
def test_fp8_file_stays_fp8_and_computes_its_values(comfy_inprocess, pack, layout):
    from comfyui_mmdit.loaders.quant.tensor import QuantizedTensor

    mm = comfy_inprocess.comfy.model_management
    nodes, files = pack
    fp8_file, reference_file = files[layout]
    model = nodes["MMDiTModelLoader"]().load(fp8_file.name)[0]
    reference = nodes["MMDiTModelLoader"]().load(reference_file.name)[0]
    network = model.model.diffusion_model
    assert isinstance(network.transformer_blocks[0].attn.to_q.weight, QuantizedTensor)
    assert _one_byte(network, layout) == []
    assert all(p.dtype == torch.float32 for p in reference.model.diffusion_model.parameters())
    expected = network_forward(reference)
    torch.testing.assert_close(network_forward(model), expected, atol=1e-5, rtol=1e-5)
    mm.load_models_gpu([model])  # what sampling does first
    try:
        assert _one_byte(network, layout) == []
        torch.testing.assert_close(network_forward(model), expected, atol=1e-5, rtol=1e-5)
    finally:
        mm.unload_all_models()


def _comfyui_linear(comfy, layer_state: dict, in_features: int, out_features: int):
    """ComfyUI's own Linear for one layer of a scaled_fp8 file, loaded the way ComfyUI loads such files."""
    import comfy.ops
    import comfy.utils

    if hasattr(comfy.ops, "scaled_fp8_ops"):  # [version] 0.3.64: the whole Linear, bias too, in FP8
        ops = comfy.ops.scaled_fp8_ops(override_dtype=torch.float8_e4m3fn)
        linear = ops.Linear(in_features, out_features, bias=True, device="cpu")
        linear.load_state_dict(layer_state, strict=False)  # scale_input is not kept without fp8 matmuls
        return linear
    # [version] 0.8.0: old scaled files are converted to per-layer quantization records first
    state = {f"layer.{k}": v for k, v in layer_state.items()}
    state, _ = comfy.utils.convert_old_quants(dict(state, scaled_fp8=torch.empty(0, dtype=torch.float8_e4m3fn)))
    assert "layer.comfy_quant" in state and "layer.weight_scale" in state
    ops = comfy.ops.mixed_precision_ops({}, torch.float32, full_precision_mm=True)
    linear = ops.Linear(in_features, out_features, bias=True, device="cpu")
    linear.load_state_dict({k[len("layer."):]: v for k, v in state.items()}, strict=False)
    return linear


def test_fp8_biases_mean_what_they_mean_to_comfyui(comfy_inprocess, pack):
    """ComfyUI's own scaled-FP8 Linear, given one layer's tensors from the file, computes what our loaded
    layer computes (weight = fp8 * scale_weight, bias = the fp8 number)."""
    from safetensors.torch import load_file

    nodes, files = pack
    fp8_file, _ = files["comfyui_scaled"]
    state = load_file(str(fp8_file))
    ours = nodes["MMDiTModelLoader"]().load(fp8_file.name)[0].model.diffusion_model
    g = torch.Generator().manual_seed(1)
    for name in ("img_in", "transformer_blocks.1.attn.to_k", "transformer_blocks.0.img_mlp.net.2"):
        layer = ours.get_submodule(name)
        layer_state = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
        assert layer_state["bias"].dtype == torch.float8_e4m3fn and "scale_bias" not in layer_state
        theirs = _comfyui_linear(comfy_inprocess.comfy, layer_state, layer.in_features, layer.out_features)
        inputs = torch.randn(3, 5, layer.in_features, generator=g)
        with torch.no_grad():
            torch.testing.assert_close(layer(inputs), theirs(inputs), atol=1e-6, rtol=1e-6)


def test_plain_fp8_vae(pack):
    """Conv kernels in FP8 (QuantizedTensor, no scale) go through ComfyUI's own cast-at-use layers."""
    nodes, _ = pack
    latent = {"samples": torch.randn(1, 16, 4, 6, generator=torch.Generator().manual_seed(2))}
    images = {}
    for name in ("tiny_vae_fp8.safetensors", "tiny_vae_fp32.safetensors"):
        vae, = nodes["MMDiTVAELoader"]().load(name)
        images[name], = nodes["MMDiTVAEDecode"]().decode(latent, vae)
    torch.testing.assert_close(images["tiny_vae_fp8.safetensors"], images["tiny_vae_fp32.safetensors"],
                               atol=1e-5, rtol=1e-5)
