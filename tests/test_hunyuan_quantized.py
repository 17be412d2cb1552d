"""HunyuanImage 2.1 in quantized files: the DiT from plain FP8, ComfyUI's scaled FP8, the official Tencent FP8
release (split q/k/v + `<name>_scale.safetensors`) and GGUF (written by `cli.py convert` from the ComfyUI and
the Tencent layout, and in the fused-original names ComfyUI-GGUF's tools keep); the ByT5 glyph encoder
converted; the converter's precise-tensor policy; and the errors for incomplete or misfit files.

Exactness: every quantized file stands for definite values (fp8 x scale, GGUF blocks dequantized). For each
file, a float32 file of exactly those values (computed independently: by the formula, or by the gguf
package's reference dequantizer) is loaded the same way, and the two networks' outputs must agree to
ATOL (only the order of float32 operations differs: measured max abs <= 5e-7 on outputs of magnitude ~1).
The weights must stay quantized in memory (QuantizedTensor). The error against the bf16 original is
printed (informative) and bounded loosely per format (measured figures next to each bound)."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyui_mmdit.loaders.checkpoints import open_checkpoint
from comfyui_mmdit.loaders.diffusion_model import read_diffusion_model
from comfyui_mmdit.loaders.errors import ModelFileError
from comfyui_mmdit.loaders.quant.tensor import FP8_SCALED, GGUF, QuantizedTensor
from comfyui_mmdit.loaders.text_encoder import build_text_encoder, read_text_encoder
from comfyui_mmdit.model_defs.hunyuan_image.family import EIGHT_BIT_TENSORS, PRECISE_TENSORS
from comfyui_mmdit.model_defs.text_encoders import byt5
from comfyui_mmdit.nodes.host.standalone import StandaloneHost
from comfyui_mmdit.tools.convert import convert
from comfyui_mmdit.tools.tiny_models import (
    TINY_HUNYUAN_DISTILLED_DIT, TINY_HUNYUAN_DIT, tiny_byt5_state_dict, tiny_hunyuan_dit_state_dict,
    write_safetensors)
from comfyui_mmdit.tools.tiny_tokenizer import write_byt5_tokenizer

from helpers import fp8_variants, official_fp8_release
from hunyuan_layouts import in_layout

ATOL = 1e-5
TYPES = gguf.GGMLQuantizationType
CONFIGS = {"dit": TINY_HUNYUAN_DIT, "distilled_dit": TINY_HUNYUAN_DISTILLED_DIT}
HIDDEN = TINY_HUNYUAN_DIT.hidden_size


# --- running the tiny DiT ------------------------------------------------------------------------------------
def _load(path):
    """The file read and built by the standalone host on the CPU (float32 compute)."""
    return StandaloneHost(models_dir=path.parent, device="cpu").load_diffusion_model(read_diffusion_model(path))


@torch.no_grad()
def _run(model) -> torch.Tensor:
    """The network's velocity for fixed inputs: a 4x6 latent, 7 text tokens (2 padded), 5 glyph tokens (1
    padded), embedded guidance and a MeanFlow end time (ignored by the base network)."""
    g = torch.Generator().manual_seed(0)
    config = model.network.config
    mask, glyph_mask = torch.ones(1, 7), torch.ones(1, 5)
    mask[0, 5:], glyph_mask[0, 4:] = 0, 0
    return model.network(torch.randn(1, config.in_channels, 4, 6, generator=g), torch.tensor([500.0]),
                         torch.randn(1, 7, config.context_dim, generator=g), attention_mask=mask,
                         txt_byt5=torch.randn(1, 5, config.byt5_in_dim, generator=g), txt_byt5_mask=glyph_mask,
                         guidance=torch.tensor([3.25]), timestep_r=torch.tensor([250.0]))


def _quantized(model) -> dict[str, QuantizedTensor]:
    return {n: p for n, p in model.network.named_parameters() if isinstance(p, QuantizedTensor)}


def _relative(out: torch.Tensor, reference: torch.Tensor) -> float:
    return ((out - reference).norm() / reference.norm()).item()


def _check_exact(out, reference, what):
    difference = (out - reference).abs().max().item()
    print(f"{what}: max abs vs the float32 network of the same values {difference:.1e}")
    assert difference <= ATOL, (what, difference)


@pytest.fixture(scope="module")
def bf16(tmp_path_factory):
    """{variant: (ComfyUI-layout values (bf16-exact, float32), bf16 file, its output)}."""
    root = tmp_path_factory.mktemp("hunyuan_bf16")
    out = {}
    for variant, config in CONFIGS.items():
        state = {k: v.to(torch.bfloat16).float() for k, v in tiny_hunyuan_dit_state_dict(config, seed=2).items()}
        path = write_safetensors(state, root / f"hunyuanimage21_{variant}_bf16.safetensors", dtype=torch.bfloat16)
        out[variant] = (state, path, _run(_load(path)))
    return out


# --- FP8 -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["plain", "comfyui_scaled"])
def test_fp8_files_compute_the_values_they_stand_for(bf16, tmp_path, layout):
    """Plain FP8 (every tensor cast, value = the fp8 number) and ComfyUI's scaled FP8 (scale_weight per
    matrix, FP8 biases without a scale): every matrix stays FP8 in memory."""
    state, _, original = bf16["distilled_dit"]
    fp8_file, values_file = fp8_variants(state, tmp_path, "hunyuanimage21")[layout]
    model = _load(fp8_file)
    quantized = _quantized(model)
    matrices = {k for k, v in state.items() if v.ndim >= 2}
    assert set(quantized) == matrices, matrices ^ set(quantized)
    assert all(q.qformat == FP8_SCALED and q.dtype == torch.float8_e4m3fn for q in quantized.values())
    assert all((q.scale is None) == (layout == "plain") for q in quantized.values())
    out = _run(model)
    _check_exact(out, _run(_load(values_file)), f"{layout} FP8")
    error = _relative(out, original)
    print(f"{layout} FP8: relative error vs bf16 {error:.4f}")
    # The tiny random weights (~0.05) lie in e4m3's subnormal range, so an unscaled cast moves them by
    # several percent: every tensor in the plain file, the biases in ComfyUI's scaled one (measured 3.9%
    # and 3.7%; the converter's scaled file, biases precise: 0.2%).
    assert error < 0.1, error


@pytest.mark.parametrize("variant, in_file_scales", [("dit", False), ("distilled_dit", True)],
                         ids=["base-scale-file-only", "distilled-weight_scale-in-file-too"])
def test_official_tencent_fp8_release(bf16, tmp_path, variant, in_file_scales):
    """Split q/k/v (and q/k/v/mlp) with a scale each are fused into one FP8 tensor with one scale per row;
    the network computes exactly the values fp8 x scale."""
    state, _, original = bf16[variant]
    tencent = in_layout(state, "tencent", variant, HIDDEN)
    path, values, scales = official_fp8_release(tencent, tmp_path / "fp8", in_file_scales)
    model = _load(path)
    quantized = _quantized(model)
    fp8_layers = {k for k in state if k.startswith(("double_blocks.", "single_blocks.")) and state[k].ndim == 2}
    assert set(quantized) == fp8_layers, fp8_layers ^ set(quantized)
    qkv = quantized["double_blocks.1.img_attn.qkv.weight"]
    assert qkv.dtype == torch.float8_e4m3fn and qkv.scale.shape == (3 * HIDDEN,)
    assert qkv.scale.unique().numel() == 3  # q, k and v keep their own scales
    assert torch.equal(qkv.scale, torch.cat([scales[f"double_blocks.1.img_attn_{x}"].expand(HIDDEN) for x in "qkv"]))
    assert quantized["single_blocks.0.linear1.weight"].scale.unique().numel() == 4  # q, k, v, mlp
    assert quantized["single_blocks.0.linear2.weight"].scale.ndim == 0  # a single tensor keeps its scalar
    out = _run(model)
    values_file = write_safetensors(values, tmp_path / "values" / "hunyuanimage2.1_fp32.safetensors")
    _check_exact(out, _run(_load(values_file)), f"official FP8 ({variant})")
    error = _relative(out, original)
    print(f"official FP8 ({variant}): relative error vs bf16 {error:.4f}")
    assert error < 0.01, error  # measured 0.2%


# --- GGUF --------------------------------------------------------------------------------------------------------
def _gguf_values(path) -> dict[str, torch.Tensor]:
    """Every tensor of a GGUF file dequantized by the gguf package's reference code (not ours), in the
    logical shape (GGUF stores dimensions reversed)."""
    values = {}
    for tensor in gguf.GGUFReader(str(path)).tensors:
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        values[tensor.name] = torch.from_numpy(np.array(array, dtype=np.float32)).reshape(shape)
    return values


def _gguf_types(path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


def _architecture(path) -> str:
    field = gguf.GGUFReader(str(path)).fields["general.architecture"]
    return bytes(field.parts[field.data[0]]).decode()


# Relative output error vs bf16 (measured: Q8_0 0.04%, Q4_0 0.6%, Q4_K 0.3% (at hidden 64 only the
# 256-wide MLP output projections have rows long enough for Q4_K's super-blocks; the rest falls back to
# Q8_0)).
GGUF_REL_ERROR = {"Q8_0": 0.003, "Q4_0": 0.03, "Q4_K": 0.02}


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_K"])
def test_converted_gguf_from_the_comfyui_and_the_tencent_layout(bf16, tmp_path, qtype):
    """`cli.py convert` of a bf16 file in the ComfyUI layout and of the same weights in the official Tencent
    layout: both outputs are in the ComfyUI names (q/k/v fused), identical, tagged "hyvid", and load
    quantized, computing exactly the values the blocks stand for."""
    state, source, original = bf16["distilled_dit"]
    tencent = write_safetensors(in_layout(state, "tencent", "distilled_dit", HIDDEN),
                                tmp_path / "hunyuanimage2.1_distilled_bf16.safetensors", dtype=torch.bfloat16)
    assert read_diffusion_model(tencent).identity.layout == "tencent"
    from_comfyui = convert(source, tmp_path / f"comfyui-{qtype}.gguf", qtype)
    from_tencent = convert(tencent, tmp_path / f"tencent-{qtype}.gguf", qtype)
    assert _architecture(from_comfyui) == _architecture(from_tencent) == "hyvid"
    values = _gguf_values(from_comfyui)
    assert values.keys() == state.keys()  # the ComfyUI names: no split q/k/v left
    assert _gguf_types(from_tencent) == _gguf_types(from_comfyui)
    tencent_values = _gguf_values(from_tencent)
    assert all(torch.equal(tencent_values[k], v) for k, v in values.items())  # fusing before quantizing is exact

    model = _load(from_tencent)
    assert model.network.config == TINY_HUNYUAN_DISTILLED_DIT
    quantized = _quantized(model)
    types = _gguf_types(from_tencent)
    assert {n for n, t in types.items() if t not in ("F32", "BF16")} == set(quantized)
    assert all(q.qformat == GGUF for q in quantized.values())
    wide = "double_blocks.0.img_mlp.2.weight"  # rows of 256: wide enough for K-type super-blocks
    assert quantized[wide].qtype == int(TYPES[qtype])
    assert quantized["double_blocks.0.img_attn.qkv.weight"].qtype == int(TYPES["Q8_0" if qtype == "Q4_K" else qtype])
    out = _run(model)
    values_file = write_safetensors(values, tmp_path / "values" / "hunyuanimage2.1_fp32.safetensors")
    _check_exact(out, _run(_load(values_file)), f"converted {qtype}")
    error = _relative(out, original)
    print(f"converted {qtype}: relative error vs bf16 {error:.5f}")
    assert error < GGUF_REL_ERROR[qtype], error


def _is_precise(name: str, shape) -> bool:
    return len(shape) < 2 or name.startswith(PRECISE_TENSORS)


def test_converter_keeps_precise_tensors_precise(bf16, tmp_path):
    """The family's policy, read back from the written files: input/time/guidance/MeanFlow embeddings, the
    text refiner, the glyph mapper, the final layer and every 1-D tensor precise; per-block modulation at
    8 bits at least (Q8_0 in a Q4_0 file, FP8 in an FP8 one); everything else in the requested type."""
    state, source, _ = bf16["distilled_dit"]
    assert PRECISE_TENSORS == ("img_in.", "txt_in.", "time_in.", "time_r_in.", "guidance_in.", "byt5_in.",
                               "final_layer.")
    assert all(any(k.startswith(p) and state[k].ndim >= 2 for k in state) for p in PRECISE_TENSORS)
    modulation = {k for k in state if state[k].ndim >= 2 and any(p in k for p in EIGHT_BIT_TENSORS)}
    assert {k.split(".")[2] for k in modulation} == {"img_mod", "txt_mod", "modulation"}

    types = _gguf_types(convert(source, tmp_path / "hunyuanimage2.1-Q4_0.gguf", "Q4_0"))
    for name, value in state.items():
        expected = ("F32" if value.ndim < 2 else "BF16") if _is_precise(name, value.shape) else (
            "Q8_0" if name in modulation else "Q4_0")
        assert types[name] == expected, (name, types[name], expected)

    fp8 = convert(source, tmp_path / "hunyuanimage2.1_fp8_scaled.safetensors", "fp8_scaled")
    stored = load_file(str(fp8))
    for name, value in state.items():
        expected = torch.bfloat16 if _is_precise(name, value.shape) else torch.float8_e4m3fn
        assert stored[name].dtype == expected, (name, stored[name].dtype)
        assert (name[: -len(".weight")] + ".scale_weight" in stored) == (expected == torch.float8_e4m3fn)
    metadata = open_checkpoint(fp8).metadata
    assert (metadata["mmdit.family"], metadata["mmdit.quantization"]) == ("hunyuan_image", "fp8_scaled")


def _write_gguf(path, tensors: dict, arch: str = "hyvid"):
    """As ComfyUI-GGUF's tools write a DiT (city96's convert.py keeps the source's names): matrices whose
    rows fill Q8_0 blocks as Q8_0, the rest F32."""
    writer = gguf.GGUFWriter(str(path), arch=arch)
    for name, tensor in tensors.items():
        array = tensor.float().numpy()
        if array.ndim == 2 and array.shape[-1] % 32 == 0:
            writer.add_tensor(name, gguf.quants.quantize(array, TYPES.Q8_0), raw_dtype=TYPES.Q8_0)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_in_the_fused_original_names(bf16, tmp_path):
    """A Q8_0 "hyvid" GGUF in the fused-original names (img_attn_qkv, img_mod.linear, ...), as a HunyuanImage
    GGUF made with ComfyUI-GGUF's tools is named."""
    state, _, original = bf16["dit"]
    fused = in_layout(state, "fused_original", "dit", HIDDEN)
    assert "double_blocks.0.img_attn_qkv.weight" in fused
    path = _write_gguf(tmp_path / "hunyuanimage2.1-Q8_0.gguf", fused)
    model_file = read_diffusion_model(path)
    assert (model_file.identity.layout, model_file.quantized) == ("fused_original", True)
    model = _load(path)
    assert model.network.double_blocks[0].img_attn.qkv.weight.qtype == int(TYPES.Q8_0)
    out = _run(model)
    values_file = write_safetensors(_gguf_values(path), tmp_path / "values" / "hunyuanimage2.1_fp32.safetensors")
    _check_exact(out, _run(_load(values_file)), "fused-original Q8_0")
    error = _relative(out, original)
    print(f"fused-original Q8_0: relative error vs bf16 {error:.5f}")
    assert error < 0.02, error  # every matrix Q8_0 here, embeddings and final layer too: measured 0.5%


# --- ByT5 ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def byt5_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("byt5")
    state = {k: v.to(torch.bfloat16).float() for k, v in tiny_byt5_state_dict(seed=3).items()}
    write_byt5_tokenizer(root / "byt5_small_glyphxl_bf16_tokenizer")
    return state, write_safetensors(state, root / "byt5_small_glyphxl_bf16.safetensors", dtype=torch.bfloat16)


def _encode_byt5(checked) -> torch.Tensor:
    loaded = build_text_encoder(checked, dtype=None)
    texts = ['Text "Hello". ', 'Text "新年快乐". Text "<color-5>OPEN". ']
    with torch.no_grad():
        return byt5.encode_texts(loaded.model, loaded.tokenizer, texts, 128, dtype=torch.float32)[0], loaded


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "fp8_scaled"])
def test_converted_byt5(byt5_source, tmp_path, capsys, qtype):
    """`cli.py convert` of the ByT5 glyph encoder: the token table and the relative-position table (both read
    by row) stay precise, the tokenizer is copied beside the output, the result loads with quantized
    matrices and computes exactly the values the file stands for."""
    from comfyui_mmdit import cli

    state, source = byt5_source
    suffix = ".safetensors" if qtype == "fp8_scaled" else ".gguf"
    target = tmp_path / f"byt5_small_glyphxl-{qtype}{suffix}"
    assert cli.main(["convert", str(source), str(target), "--type", qtype]) == 0
    copy = tmp_path / f"{target.stem}_tokenizer"
    assert f"copied the source's tokenizer to {copy}" in capsys.readouterr().out

    tables = ("shared.weight", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    if qtype == "fp8_scaled":
        stored = load_file(str(target))
        assert all(stored[t].dtype == torch.bfloat16 for t in tables)
        assert stored["encoder.block.1.layer.1.DenseReluDense.wo.weight"].dtype == torch.float8_e4m3fn
        values = {k: v.float() * stored[k[: -len(".weight")] + ".scale_weight"] if v.dtype == torch.float8_e4m3fn
                  else v.float() for k, v in stored.items() if not k.endswith(".scale_weight") and k != "scaled_fp8"}
    else:
        assert _architecture(target) == "t5encoder"
        types = _gguf_types(target)
        assert all(types[t] == "BF16" for t in tables)
        assert types["encoder.block.0.layer.0.SelfAttention.q.weight"] == qtype
        values = _gguf_values(target)
    assert values.keys() == state.keys()

    checked = read_text_encoder(target)
    assert checked.encoder_kind == "byt5" and checked.tokenizer_source.folder == copy
    out, loaded = _encode_byt5(checked)
    assert isinstance(loaded.model.encoder.block[0].layer[0].SelfAttention.q.weight, QuantizedTensor)
    assert not isinstance(loaded.model.shared.weight, QuantizedTensor)
    values_file = write_safetensors(values, tmp_path / "values" / "byt5_small_glyphxl.safetensors")
    reference, _ = _encode_byt5(read_text_encoder(values_file))
    _check_exact(out, reference, f"ByT5 {qtype}")
    original, _ = _encode_byt5(read_text_encoder(source))
    error = _relative(out, original)
    print(f"ByT5 {qtype}: relative error vs bf16 {error:.4f}")
    # The tiny random encoder amplifies weight errors ~4x (test_byt5.py): Q8_0 moves each weight ~0.5%,
    # FP8 ~3%, Q4_0 ~7%; measured 1.5%, 7.7% and 26% (informative: exactness is checked above).
    assert error < {"Q8_0": 0.05, "Q4_0": 0.5, "fp8_scaled": 0.2}[qtype], error


def test_byt5_tokenizer_copied_from_a_diffusers_repo_is_the_byt5_one(byt5_source, tmp_path):
    """In a diffusers HunyuanImage repo ByT5 is text_encoder_2/ with its tokenizer in tokenizer_2/; the
    Qwen2.5 tokenizer/ beside it must not be copied as the glyph encoder's."""
    from comfyui_mmdit.tools.convert import copy_tokenizer
    from comfyui_mmdit.tools.tiny_tokenizer import write_tiny_qwen_tokenizer

    state, _ = byt5_source
    repo = tmp_path / "repo"
    write_safetensors(state, repo / "text_encoder_2" / "model.safetensors", dtype=torch.bfloat16)
    (repo / "text_encoder_2" / "config.json").write_text(json.dumps({"architectures": ["T5EncoderModel"]}))
    write_byt5_tokenizer(repo / "tokenizer_2")
    write_tiny_qwen_tokenizer(repo / "tokenizer")
    target = convert(repo / "text_encoder_2", tmp_path / "out" / "byt5-Q8_0.gguf", "Q8_0")
    copy = copy_tokenizer(repo / "text_encoder_2", target)
    config = json.loads((copy / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "ByT5Tokenizer" and not (copy / "vocab.json").exists()


# --- errors ----------------------------------------------------------------------------------------------------
def test_official_fp8_with_a_layer_missing_from_its_scale_map(bf16, tmp_path):
    state, _, _ = bf16["dit"]
    path, _, scales = official_fp8_release(in_layout(state, "tencent", "dit", HIDDEN), tmp_path, in_file_scales=False)
    scale_file = tmp_path / "hunyuanimage2.1_fp8_scale.safetensors"
    save_file({k: v for k, v in scales.items() if k != "double_blocks.1.txt_attn_k"}, str(scale_file))
    with pytest.raises(ModelFileError) as info:
        read_diffusion_model(path)
    message = str(info.value)
    assert ("hunyuanimage2.1_fp8.safetensors: has 1 FP8 layers that neither it nor its scale map "
            "hunyuanimage2.1_fp8_scale.safetensors gives a scale") in message
    assert "no scale for layer double_blocks.1.txt_attn_k." in message

    scale_file.unlink()  # the weights alone: each layer would be off by its scale, so they are refused
    with pytest.raises(ModelFileError, match="holds FP8 weights scaled to the format's full range, but no scales.*"
                                             "hunyuanimage2.1_fp8_scale.safetensors"):
        read_diffusion_model(path)
    plain, _ = fp8_variants(state, tmp_path / "plain", "hunyuanimage21")["plain"]  # a plain FP8 file still loads
    assert read_diffusion_model(plain).quantized


def test_gguf_that_does_not_fit_the_network(bf16, tmp_path):
    state, source, _ = bf16["dit"]
    narrow = dict(state)
    narrow["double_blocks.1.img_mlp.0.weight"] = state["double_blocks.1.img_mlp.0.weight"][:, :32]
    del narrow["single_blocks.1.linear2.weight"]
    path = _write_gguf(tmp_path / "hunyuanimage2.1-Q8_0.gguf", narrow)
    with pytest.raises(ModelFileError) as info:
        read_diffusion_model(path)
    message = str(info.value)
    assert "does not fit the HunyuanImage 2.1 diffusion model (ComfyUI layout)" in message
    assert "single_blocks.1.linear2.weight" in message
    assert "double_blocks.1.img_mlp.0.weight with shape [256, 32]" in message
    # The converter checks its source the same way before writing anything.
    misfit = write_safetensors(narrow, tmp_path / "misfit_bf16.safetensors", dtype=torch.bfloat16)
    with pytest.raises(ModelFileError, match="does not fit the HunyuanImage 2.1 diffusion model"):
        convert(misfit, tmp_path / "never.gguf", "Q8_0")
    assert not (tmp_path / "never.gguf").exists()


def test_bf16_conversion_rewrites_an_official_file_fused_and_loads_mapped(tmp_path):
    """--type bf16 quantizes nothing: the official split-q/k/v file comes out in the network's own names,
    every tensor the value it had (in bf16), and the result loads without copying anything."""
    from comfyui_mmdit.loaders.diffusion_model import read_diffusion_model
    from comfyui_mmdit.tools.convert import convert
    from comfyui_mmdit.tools.tiny_models import TINY_HUNYUAN_DIT, tiny_hunyuan_dit_state_dict, write_safetensors
    from hunyuan_layouts import in_layout

    comfy = tiny_hunyuan_dit_state_dict(seed=5)
    official = write_safetensors(in_layout(comfy, "tencent", "dit", TINY_HUNYUAN_DIT.hidden_size),
                                 tmp_path / "hunyuanimage2.1.safetensors", dtype=torch.bfloat16)
    assert read_diffusion_model(official).copied_bytes > 0
    out = read_diffusion_model(convert(official, tmp_path / "hunyuanimage2.1_bf16.safetensors", "bf16"))
    assert out.identity.layout == "comfyui" and out.copied_bytes == 0 and out.stored_dtype == torch.bfloat16
    assert set(out.state_dict) == set(comfy)
    for name, value in comfy.items():
        assert torch.equal(out.state_dict[name], value.to(torch.bfloat16)), name
