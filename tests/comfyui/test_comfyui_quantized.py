"""Quantized models inside a real ComfyUI (in-process): GGUF and scaled-FP8 files load as native MODELs
with their weights kept quantized, sample close to the bf16 model, stream under low-VRAM partial loading,
take core LoRAs (merged once, within a stated tolerance of the same LoRA on bf16) and encode text from a
quantized text encoder."""

import pytest
import torch
from safetensors.torch import save_file

from comfy_harness import (
    network_forward, pack_on_comfyui_host, partially_loaded, streamed_layers, write_tiny_models,
)

QWEN = "Qwen-Image"
PROMPT = "a lighthouse at dusk"
QUANTIZED = ("tiny-Q8_0.gguf", "tiny-Q4_0.gguf", "tiny-fp8_scaled.safetensors")
# Relative difference of sampled latents from the bf16 model's, per file (3 euler steps of the tiny
# model, CFG 4; measured: Q8_0 0.02%, FP8 0.11%, Q4_0 0.34%).
SAMPLE_REL_ERROR = {"tiny-Q8_0.gguf": 0.002, "tiny-fp8_scaled.safetensors": 0.01, "tiny-Q4_0.gguf": 0.02}


@pytest.fixture(scope="module")
def pack(comfy_inprocess, tmp_path_factory):
    from comfyui_mmdit.tools.convert import convert

    models = tmp_path_factory.mktemp("comfy_quantized")
    write_tiny_models(comfy_inprocess.folder_paths, models, {
        "diffusion_models": "tiny.safetensors", "text_encoders": "tiny_te.safetensors", "vae": "tiny_vae.safetensors"})
    dit = models / "diffusion_models"
    for name in QUANTIZED:
        qtype = name[len("tiny-"):].split(".")[0]
        convert(dit / "tiny.safetensors", dit / name, qtype)
    te = models / "text_encoders"
    convert(te / "tiny_te.safetensors", te / "tiny_te-Q8_0.gguf", "Q8_0")
    (te / "tiny_te-Q8_0_tokenizer").symlink_to(te / "tiny_te_tokenizer")
    (models / "loras").mkdir()
    comfy_inprocess.folder_paths.add_model_folder_path("loras", str(models / "loras"), is_default=True)
    with pack_on_comfyui_host() as nodes:
        yield nodes, models


@pytest.fixture(scope="module")
def conditioning(pack):
    nodes, _ = pack
    encoder, = nodes["MMDiTTextEncoderLoader"]().load("tiny_te.safetensors", QWEN)
    positive, = nodes["MMDiTTextEncode"]().encode(encoder, PROMPT)
    negative, = nodes["MMDiTTextEncode"]().encode(encoder, " ")
    latent, = nodes["MMDiTEmptyLatent"]().generate(QWEN, "custom (width x height)", 80, 48, 2)
    return dict(positive=positive, negative=negative, latent=latent)


def _load(nodes, name):
    return nodes["MMDiTModelLoader"]().load(name)[0]


def _sample(nodes, conditioning, model):
    samples, = nodes["MMDiTSampler"]().sample(model, conditioning["positive"], conditioning["negative"],
                                              conditioning["latent"], 7, steps=3, cfg=4.0)
    return samples["samples"]


def _relative(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_gguf_files_are_listed_by_the_loaders(comfy_inprocess, pack):
    nodes, _ = pack
    models = nodes["MMDiTModelLoader"].INPUT_TYPES()["required"]["model_name"][0]
    assert {"tiny.safetensors", *QUANTIZED} <= set(models)
    encoders = nodes["MMDiTTextEncoderLoader"].INPUT_TYPES()["required"]["text_encoder_name"][0]
    assert "tiny_te-Q8_0.gguf" in encoders
    # ComfyUI's own lists see them too (other loaders, the frontend's model browser)
    assert "tiny-Q4_0.gguf" in comfy_inprocess.folder_paths.get_filename_list("diffusion_models")


@pytest.mark.parametrize("name", QUANTIZED)
def test_quantized_file_is_a_native_model_close_to_bf16(comfy_inprocess, pack, conditioning, name):
    from comfyui_mmdit.loaders.quant.tensor import QuantizedTensor

    nodes, _ = pack
    model = _load(nodes, name)
    assert isinstance(model, comfy_inprocess.comfy.model_patcher.ModelPatcher)
    assert isinstance(model.model, comfy_inprocess.comfy.model_base.QwenImage)
    to_q = model.model.diffusion_model.transformer_blocks[0].attn.to_q
    assert isinstance(to_q.weight, QuantizedTensor) and hasattr(to_q, "comfy_cast_weights")
    reference = _sample(nodes, conditioning, _load(nodes, "tiny.safetensors"))
    out = _sample(nodes, conditioning, model)
    assert isinstance(to_q.weight, QuantizedTensor)  # still quantized after ComfyUI loaded and ran it
    error = _relative(out, reference)
    print(f"{name}: sampled latents differ from bf16 by {error:.4%}")
    assert error < SAMPLE_REL_ERROR[name]


def test_low_vram_partial_loading_of_a_quantized_model(pack):
    nodes, _ = pack
    model = _load(nodes, "tiny-Q4_0.gguf")
    reference = network_forward(model)
    with partially_loaded(model) as partial:
        torch.testing.assert_close(network_forward(partial), reference, atol=1e-5, rtol=1e-5)
        assert streamed_layers(partial)  # still streamed while it ran


def _write_lora(models, network, name="detail.safetensors"):
    """A rank-4 LoRA in the diffusers/Qwen key format on every attention projection of every block."""
    g = torch.Generator().manual_seed(5)
    lora = {}
    for i, _ in enumerate(network.transformer_blocks):
        for projection in ("to_q", "to_k", "to_v", "add_q_proj"):
            layer = network.get_submodule(f"transformer_blocks.{i}.attn.{projection}")
            out_features, in_features = layer.out_features, layer.in_features
            key = f"transformer.transformer_blocks.{i}.attn.{projection}"
            lora[f"{key}.lora_A.weight"] = torch.randn(4, in_features, generator=g) * 0.3
            lora[f"{key}.lora_B.weight"] = torch.randn(out_features, 4, generator=g) * 0.3
    save_file(lora, str(models / "loras" / name))
    return name, len(lora) // 2


@pytest.mark.parametrize("name, weight_tolerance", [("tiny-Q8_0.gguf", 0.01), ("tiny-fp8_scaled.safetensors", 0.04)])
def test_core_lora_loader_on_a_quantized_model(comfy_inprocess, pack, conditioning, monkeypatch, name,
                                               weight_tolerance):
    """LoraLoaderModelOnly on the quantized model matches the same LoRA on bf16; the patched weights are
    merged once when the model loads (kept at 8 bits), not recomputed on every forward."""
    from comfyui_mmdit.loaders.quant.tensor import QuantizedTensor

    comfy = comfy_inprocess.comfy
    nodes, models = pack
    bf16, quantized = _load(nodes, "tiny.safetensors"), _load(nodes, name)
    lora_name, layers = _write_lora(models, bf16.model.diffusion_model)
    loader = comfy_inprocess.nodes.LoraLoaderModelOnly()
    bf16_lora, = loader.load_lora_model_only(bf16, lora_name, 0.8)
    quantized_lora, = loader.load_lora_model_only(quantized, lora_name, 0.8)
    assert len(quantized_lora.patches) == layers

    calls = []
    calculate = comfy.lora.calculate_weight
    monkeypatch.setattr(comfy.lora, "calculate_weight", lambda *a, **k: calls.append(a[2]) or calculate(*a, **k))
    out = _sample(nodes, conditioning, quantized_lora)  # ComfyUI loads the model (merging) and samples
    assert len(calls) == layers  # once per patched weight, not once per forward (3 steps x 2 CFG passes)
    network = quantized_lora.model.diffusion_model
    merged = network.transformer_blocks[1].attn.to_k.weight
    assert isinstance(merged, QuantizedTensor) and merged.element_size() == 1  # kept at 8 bits

    reference = _sample(nodes, conditioning, bf16_lora)
    bf16_lora.patch_model(device_to=torch.device("cpu"))
    try:
        expected = bf16_lora.model.diffusion_model.transformer_blocks[1].attn.to_k.weight.float()
        weight_error = _relative(merged.dequantize(torch.float32), expected)
    finally:
        bf16_lora.unpatch_model(torch.device("cpu"))
    sample_error = _relative(out, reference)
    print(f"{name} + LoRA: merged weight {weight_error:.4%}, sampled latents {sample_error:.4%} from bf16 + LoRA")
    assert weight_error < weight_tolerance
    assert sample_error < SAMPLE_REL_ERROR[name] * 2
    # The LoRA really changed the result, by far more than quantization did (a dropped LoRA would also
    # leave the result "close" to bf16 + LoRA if the LoRA did little).
    lora_effect = _relative(out, _sample(nodes, conditioning, quantized))
    assert lora_effect > 10 * sample_error, (lora_effect, sample_error)


def test_lora_on_a_quantized_model_in_low_vram_mode(comfy_inprocess, pack):
    """Streamed layers get the LoRA as they run (ComfyUI's weight_function, applied to the dequantized
    weight); fully loaded ones have it merged and re-quantized to Q8_0. Both must give the merged result."""
    nodes, models = pack
    quantized = _load(nodes, "tiny-Q8_0.gguf")
    lora_name, _ = _write_lora(models, quantized.model.diffusion_model, "lowvram.safetensors")
    patched, = comfy_inprocess.nodes.LoraLoaderModelOnly().load_lora_model_only(quantized, lora_name, 1.0)
    without_lora = network_forward(quantized)
    patched.patch_model(device_to=torch.device("cpu"), load_weights=True)
    try:
        merged = network_forward(patched)
    finally:
        patched.unpatch_model(torch.device("cpu"))
    with partially_loaded(patched) as partial:
        with_functions = [m for m in streamed_layers(partial) if getattr(m, "weight_function", None)]
        assert with_functions  # the LoRA is applied at run time on these layers
        streamed = network_forward(partial)
    error, effect = _relative(streamed, merged), _relative(merged, without_lora)
    print(f"LoRA streamed vs merged: {error:.4%} (the LoRA itself changes the output by {effect:.2%})")
    # merged weights were re-quantized to Q8_0, streamed ones used in full precision
    assert error < 0.01 and effect > 10 * error


def test_quantized_text_encoder_in_comfyui(pack, conditioning):
    from comfyui_mmdit.loaders.quant.tensor import QuantizedTensor

    nodes, _ = pack
    encoder, = nodes["MMDiTTextEncoderLoader"]().load("tiny_te-Q8_0.gguf", QWEN)
    assert isinstance(encoder.encoders["qwen25_vl"].model.layers[0].self_attn.q_proj.weight, QuantizedTensor)
    positive, = nodes["MMDiTTextEncode"]().encode(encoder, PROMPT)
    got, expected = positive[0][0], conditioning["positive"][0][0]
    assert got.shape == expected.shape
    # Q8_0 weights in a random two-layer language model: ~2.5% on the last hidden state (see test_quant_gguf)
    assert _relative(got, expected) < 0.05
