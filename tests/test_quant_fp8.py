"""FP8 weights: plain, ComfyUI "scaled fp8" and the newer comfy_quant layout, for diffusion models and text
encoders; kept as FP8 in memory, dequantized per layer; damaged files refused."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyui_mmdit.loaders.checkpoints import open_checkpoint
from comfyui_mmdit.loaders.errors import ModelFileError
from comfyui_mmdit.loaders.quant.tensor import FP8_SCALED, QuantizedTensor
from comfyui_mmdit.tools.convert import convert
from comfyui_mmdit.tools.tiny_models import tiny_qwen_dit_state_dict, write_safetensors
from helpers import encode_qwen_prompts, fp8_variants, load_and_run_dit

# Relative output error of the tiny transformer against its bf16 original. FP8 e4m3 keeps 3 mantissa
# bits (~3% per weight); errors average out over each dot product. Measured ~0.12%; bound with margin.
FP8_REL_ERROR = 0.01


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp8")
    bf16 = write_safetensors(tiny_qwen_dit_state_dict(seed=3), root / "qwen_bf16.safetensors", dtype=torch.bfloat16)
    scaled = convert(bf16, root / "qwen_fp8_scaled.safetensors", "fp8_scaled")
    return root, bf16, scaled


def _comfy_quant_variant(scaled, path):
    """The same weights in ComfyUI's newer layout: weight_scale + comfy_quant, no root marker."""
    state = load_file(str(scaled))
    del state["scaled_fp8"]
    out = {}
    for key, value in state.items():
        if key.endswith(".scale_weight"):
            layer = key[: -len(".scale_weight")]
            out[layer + ".weight_scale"] = value
            out[layer + ".comfy_quant"] = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()),
                                                       dtype=torch.uint8)
        else:
            out[key] = value
    save_file(out, str(path))
    return path


def test_scaled_fp8_layouts_match_bf16(files, tmp_path):
    root, bf16, scaled = files
    _, reference = load_and_run_dit(bf16)
    for path in (scaled, _comfy_quant_variant(scaled, tmp_path / "qwen_fp8_mixed.safetensors")):
        model, out = load_and_run_dit(path)
        weights = dict(model.network.named_parameters())
        fp8 = [n for n, p in weights.items() if isinstance(p, QuantizedTensor)]
        assert fp8 and all(weights[n].dtype == torch.float8_e4m3fn for n in fp8)  # kept as FP8 in memory
        assert "transformer_blocks.0.attn.to_q.weight" in fp8
        assert not isinstance(weights["proj_out.weight"], QuantizedTensor)  # final layer kept precise
        error = ((out - reference).norm() / reference.norm()).item()
        assert error < FP8_REL_ERROR, error


def test_plain_fp8_file(files, tmp_path):
    root, bf16, _ = files
    state = {k: (v.to(torch.float8_e4m3fn) if v.ndim == 2 and "transformer_blocks" in k else v)
             for k, v in load_file(str(bf16)).items()}
    path = tmp_path / "qwen_image_fp8_e4m3fn.safetensors"
    save_file(state, str(path))
    model, out = load_and_run_dit(path)
    assert model.network.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("layout", ["plain", "comfyui_scaled"])
def test_fp8_files_compute_exactly_the_values_they_stand_for(tmp_path, layout):
    """Plain FP8 (value = the fp8 number) and the scaled FP8 layout ComfyUI 0.3.64 saves, whose Linear
    biases are FP8 without a scale (ComfyUI casts them: value = the fp8 number): matrices stay FP8 as
    QuantizedTensor, biases stay FP8, and the output equals a float32 model holding the same values."""
    fp8_file, reference_file = fp8_variants(tiny_qwen_dit_state_dict(seed=4), tmp_path)[layout]
    model, out = load_and_run_dit(fp8_file)
    _, reference = load_and_run_dit(reference_file)
    weights = dict(model.network.named_parameters())
    to_q, bias = weights["transformer_blocks.0.attn.to_q.weight"], weights["transformer_blocks.0.attn.to_q.bias"]
    assert isinstance(to_q, QuantizedTensor) and to_q.dtype == torch.float8_e4m3fn
    assert (to_q.scale is None) == (layout == "plain")
    assert bias.dtype == torch.float8_e4m3fn and not isinstance(bias, QuantizedTensor)
    assert all(p.element_size() == 1 for n, p in weights.items() if n.endswith((".weight", ".bias")) and p.ndim >= 2)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)


def test_plain_fp8_dequantizes_straight_to_the_compute_dtype():
    data = torch.randn(64, 32).to(torch.float8_e5m2)
    weight = QuantizedTensor(data, FP8_SCALED, data.shape)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        out = weight.dequantize(dtype)
        assert out.dtype == dtype and torch.equal(out, data.to(dtype)) and torch.equal(out.float(), data.float())
    assert torch.equal(weight.dequantize_rows(torch.tensor([3, 1]), torch.bfloat16), data[[3, 1]].to(torch.bfloat16))
    assert weight.to(torch.float8_e5m2) is weight  # asking for its own dtype keeps it quantized
    # ComfyUI's cast_to passes copy=: same values, a copy only when asked
    assert torch.equal(weight.to(dtype=torch.float32, copy=False), data.float())
    copied = weight.to(copy=True)
    assert isinstance(copied, QuantizedTensor) and copied.data_ptr() != weight.data_ptr()


@torch.no_grad()
def test_plain_fp8_vae(tmp_path):
    """FP8 conv kernels (QuantizedTensor without a scale) decode as a float32 VAE of the same values."""
    from comfyui_mmdit.loaders.vae import load_vae
    from comfyui_mmdit.tools.tiny_models import tiny_qwen_vae_state_dict

    fp8 = {k: v.to(torch.float8_e4m3fn) for k, v in tiny_qwen_vae_state_dict(seed=2).items()}
    save_file(fp8, str(tmp_path / "vae_fp8.safetensors"))
    save_file({k: v.float() for k, v in fp8.items()}, str(tmp_path / "vae_fp32.safetensors"))
    ours, reference = load_vae(tmp_path / "vae_fp8.safetensors"), load_vae(tmp_path / "vae_fp32.safetensors")
    assert all(p.element_size() == 1 for p in ours.module.parameters())
    latent = torch.randn(1, 16, 1, 4, 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours.module.decode(latent), reference.module.decode(latent), atol=1e-5, rtol=1e-5)


def test_scaled_file_still_refuses_an_unscaled_fp8_matrix_but_not_a_bias(tmp_path):
    fp8_file, _ = fp8_variants(tiny_qwen_dit_state_dict(seed=4), tmp_path)["comfyui_scaled"]
    state = load_file(str(fp8_file))
    assert state["img_in.bias"].dtype == torch.float8_e4m3fn and "img_in.scale_weight" in state
    del state["img_in.scale_weight"]
    save_file(state, str(tmp_path / "no_scale.safetensors"))
    with pytest.raises(ModelFileError, match="1 FP8 weights have no scale tensor.*no scale for img_in.weight"):
        open_checkpoint(tmp_path / "no_scale.safetensors")


def _official_release(bf16, folder, weights_name="qwen_fp8.pt", map_name="qwen_fp8_map.pt"):
    """An official-style FP8 release: per-layer scaled FP8 weights wrapped as {"module": ...} in a .pt, and
    a separate {layer name: scale} map."""
    weights, scales = {}, {}
    for key, value in load_file(str(bf16)).items():
        if value.ndim == 2 and "transformer_blocks" in key:
            scale = value.float().abs().amax() / 448.0
            weights[key] = (value.float() / scale).to(torch.float8_e4m3fn)
            scales[key[: -len(".weight")]] = scale.to(torch.bfloat16)
        else:
            weights[key] = value
    folder.mkdir(exist_ok=True)
    save = (lambda d, p: torch.save(d, p)) if weights_name.endswith(".pt") else (lambda d, p: save_file(d, str(p)))
    save({"module": weights} if weights_name.endswith(".pt") else weights, folder / weights_name)
    save_map = torch.save if map_name.endswith(".pt") else (lambda d, p: save_file(d, str(p)))
    save_map(scales, folder / map_name)
    return folder / weights_name, folder / map_name


@pytest.mark.parametrize("names", [("qwen_fp8.pt", "qwen_fp8_map.pt"),
                                   ("qwen_fp8.safetensors", "qwen_fp8_map.safetensors")])
def test_official_release_with_scale_map(files, tmp_path, names):
    root, bf16, _ = files
    weights, _ = _official_release(bf16, tmp_path, *names)
    _, reference = load_and_run_dit(bf16)
    model, out = load_and_run_dit(weights)
    to_q = model.network.transformer_blocks[0].attn.to_q.weight
    assert isinstance(to_q, QuantizedTensor) and to_q.dtype == torch.float8_e4m3fn and to_q.scale.numel() == 1
    error = ((out - reference).norm() / reference.norm()).item()
    assert error < FP8_REL_ERROR, error


def test_official_release_errors(files, tmp_path):
    root, bf16, _ = files
    weights, scale_map = _official_release(bf16, tmp_path)
    with pytest.raises(ModelFileError, match="is an FP8 scale map, not a model.*qwen_fp8.pt"):
        open_checkpoint(scale_map)
    torch.save({"double_blocks.0.img_attn_qkv": torch.tensor(0.1)}, scale_map)
    with pytest.raises(ModelFileError, match="scales 1 layers that qwen_fp8.pt does not contain"):
        open_checkpoint(weights)
    scale_map.unlink()
    with pytest.raises(ModelFileError, match="FP8 weights but no scales.*qwen_fp8_map.pt beside it"):
        open_checkpoint(weights)


class _Payload:  # any class outside torch's allow-list: unpickling it would run code of the file's choosing
    def __reduce__(self):
        return (print, ("unpickled",))


def test_scale_map_is_never_fully_unpickled(files, tmp_path, capsys):
    _, bf16, _ = files
    weights, scale_map = _official_release(bf16, tmp_path)
    torch.save({"transformer_blocks.0.attn.to_q": _Payload()}, scale_map)
    with pytest.raises(ModelFileError, match="could not be read as a PyTorch weights file"):
        open_checkpoint(weights)
    assert "unpickled" not in capsys.readouterr().out


def test_missing_scale_is_refused(files, tmp_path):
    _, _, scaled = files
    state = load_file(str(scaled))
    del state["transformer_blocks.1.attn.to_v.scale_weight"]
    path = tmp_path / "broken_fp8.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelFileError, match="1 FP8 weights have no scale tensor.*transformer_blocks.1.attn.to_v"):
        open_checkpoint(path)


def test_unknown_comfy_quant_format_is_refused(files, tmp_path):
    _, _, scaled = files
    path = _comfy_quant_variant(scaled, tmp_path / "nvfp4.safetensors")
    state = load_file(str(path))
    state["transformer_blocks.0.attn.to_q.comfy_quant"] = torch.tensor(list(b'{"format": "nvfp4"}'), dtype=torch.uint8)
    save_file(state, str(path))
    with pytest.raises(ModelFileError, match="quantization format this pack cannot compute.*nvfp4"):
        open_checkpoint(path)


def test_converter_refuses_quantized_input_and_unknown_types(files, tmp_path):
    _, bf16, scaled = files
    with pytest.raises(ModelFileError, match="already quantized"):
        convert(scaled, tmp_path / "again.safetensors", "fp8_scaled")
    with pytest.raises(ValueError, match="unknown target type"):
        convert(bf16, tmp_path / "x.gguf", "Q3_X")


def test_converter_records_the_family(files):
    _, _, scaled = files
    checkpoint = open_checkpoint(scaled)
    assert checkpoint.metadata["mmdit.family"] == "qwen_image"
    assert checkpoint.metadata["mmdit.quantization"] == "fp8_scaled"


@torch.no_grad()
def test_scaled_fp8_text_encoder(tmp_path):
    """A Qwen2.5-VL text encoder in scaled FP8 (as qwen_2.5_vl_7b_fp8_scaled.safetensors is published):
    projections kept FP8, the token table precise, hidden states close to the bf16 encoder's."""
    from comfyui_mmdit.loaders.text_encoder import load_text_encoder
    from comfyui_mmdit.loaders.tokenizers import load_tokenizer
    from comfyui_mmdit.tools.tiny_models import tiny_qwen_text_state_dict
    from comfyui_mmdit.tools.tiny_tokenizer import write_tiny_qwen_tokenizer

    tokenizer_dir = write_tiny_qwen_tokenizer(tmp_path / "tokenizer")
    state = tiny_qwen_text_state_dict(len(load_tokenizer(tokenizer_dir)), seed=6)
    bf16 = write_safetensors(state, tmp_path / "te_bf16.safetensors", dtype=torch.bfloat16)
    fp8 = convert(bf16, tmp_path / "te_fp8_scaled.safetensors", "fp8_scaled")
    quantized = load_text_encoder(fp8, tokenizer_path=tokenizer_dir)
    q_proj = quantized.model.layers[0].self_attn.q_proj.weight
    assert isinstance(q_proj, QuantizedTensor) and q_proj.dtype == torch.float8_e4m3fn
    assert not isinstance(quantized.model.embed_tokens.weight, QuantizedTensor)
    reference = load_text_encoder(bf16, tokenizer_path=tokenizer_dir)
    prompts = ["a cat on a chair", "neon sign that reads OPEN"]
    got, expected = encode_qwen_prompts(quantized, prompts), encode_qwen_prompts(reference, prompts)
    # Exact: an fp32 encoder holding the dequantized values (fp8 * scale) computes the same.
    dequantized = {k: (v.dequantize(torch.float32) if isinstance(v, QuantizedTensor) else v.float())
                   for k, v in quantized.model.state_dict().items()}
    exact_file = write_safetensors({"model." + k: v for k, v in dequantized.items()}, tmp_path / "exact" / "te.safetensors")
    exact = load_text_encoder(exact_file, tokenizer_path=tokenizer_dir)
    torch.testing.assert_close(got, encode_qwen_prompts(exact, prompts), atol=1e-4, rtol=1e-4)
    # Close to bf16: FP8 moves each weight ~3% and this random two-layer model amplifies weight errors
    # about 5x into its last hidden state (Q8_0's 0.5% gives 2.5%); measured 11.7%.
    error = ((got - expected).norm() / expected.norm()).item()
    assert error < 0.2, error
