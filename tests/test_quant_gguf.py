"""GGUF weights: the converter's files for every type it writes, llama.cpp text-encoder files, restored
shapes, per-type accuracy bounds, and damaged or foreign files."""

import numpy as np
import pytest
import torch

from comfyui_mmdit.loaders.checkpoints import open_checkpoint
from comfyui_mmdit.loaders.diffusion_model import read_diffusion_model
from comfyui_mmdit.loaders.errors import ModelFileError
from comfyui_mmdit.loaders.quant.tensor import QuantizedTensor
from comfyui_mmdit.loaders.text_encoder import load_text_encoder
from comfyui_mmdit.loaders.tokenizers import load_tokenizer
from comfyui_mmdit.model_defs.qwen_image.transformer import QwenImageConfig
from comfyui_mmdit.tools.convert import GGUF_TYPES, convert
from comfyui_mmdit.tools.tiny_models import tiny_qwen_dit_state_dict, tiny_qwen_text_state_dict, write_safetensors
from comfyui_mmdit.tools.tiny_tokenizer import write_tiny_qwen_tokenizer

from helpers import encode_qwen_prompts, load_and_run_dit

gguf = pytest.importorskip("gguf")

# Relative error of the tiny transformer's output against its bf16 original, per file type (measured:
# Q8_0 0.03%, Q5_1 0.18%, Q5_0 0.21%, Q4_1 0.36%, Q4_0 0.42%). Per-block modulation stays at Q8_0 and the
# embeddings / final layer at bf16 in every type, so the bounds are loose multiples of those figures.
# K types are tested on a wider model (their super-blocks need rows of 256), whose errors are larger for
# every type (measured there: Q8_0 0.27%, Q6_K 0.88%, Q5_0 1.8%, Q4_K 3.4%, Q4_0 4.1%).
REL_ERROR = {"Q8_0": 0.002, "Q6_K": 0.02, "Q5_1": 0.01, "Q5_0": 0.01, "Q4_K": 0.07, "Q4_1": 0.02, "Q4_0": 0.02}
WIDE_QWEN_DIT = QwenImageConfig(in_channels=64, out_channels=16, patch_size=2, num_layers=2, attention_head_dim=128,
                                num_attention_heads=2, joint_attention_dim=256, axes_dims_rope=(16, 56, 56))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    return root, write_safetensors(tiny_qwen_dit_state_dict(seed=3), root / "qwen_bf16.safetensors",
                                   dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def wide_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf_wide")
    return root, write_safetensors(tiny_qwen_dit_state_dict(WIDE_QWEN_DIT, seed=3), root / "qwen_bf16.safetensors",
                                   dtype=torch.bfloat16)


@pytest.mark.parametrize("qtype", GGUF_TYPES)
def test_converted_gguf_stays_quantized_and_is_accurate(source, wide_source, qtype):
    root, bf16 = wide_source if qtype.endswith("_K") else source
    _, reference = load_and_run_dit(bf16)
    path = convert(bf16, root / f"qwen-{qtype}.gguf", qtype)
    checkpoint = open_checkpoint(path)
    assert checkpoint.architecture == "qwen_image"  # the family, recorded in the file
    model, out = load_and_run_dit(path)
    weights = dict(model.network.named_parameters())
    to_q = weights["transformer_blocks.0.attn.to_q.weight"]
    assert isinstance(to_q, QuantizedTensor) and to_q.qtype == int(gguf.GGMLQuantizationType[qtype])
    assert weights["transformer_blocks.0.img_mod.1.weight"].qtype == int(gguf.GGMLQuantizationType.Q8_0)
    assert not isinstance(weights["proj_out.weight"], QuantizedTensor)
    assert to_q.nbytes < to_q.logical_shape.numel() * 2  # fewer bytes than bf16: stored as blocks
    error = ((out - reference).norm() / reference.norm()).item()
    print(f"{qtype}: relative output error {error:.5f}")
    assert error < REL_ERROR[qtype]


def _write_gguf(path, arch, tensors, metadata=None):
    writer = gguf.GGUFWriter(str(path), arch=arch)
    for key, value in (metadata or {}).items():
        if isinstance(value, list):
            writer.add_array(key, value)
        else:
            writer.add_string(key, value)
    for name, (array, qtype) in tensors.items():
        if qtype is None:
            writer.add_tensor(name, array)
        else:
            writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


LLAMA_CPP = [("model.embed_tokens.", "token_embd."), ("model.norm.", "output_norm."),
             ("model.layers.", "blk."), (".input_layernorm.", ".attn_norm."),
             (".post_attention_layernorm.", ".ffn_norm."), (".self_attn.q_proj.", ".attn_q."),
             (".self_attn.k_proj.", ".attn_k."), (".self_attn.v_proj.", ".attn_v."),
             (".self_attn.o_proj.", ".attn_output."), (".mlp.gate_proj.", ".ffn_gate."),
             (".mlp.up_proj.", ".ffn_up."), (".mlp.down_proj.", ".ffn_down.")]


def _llama_cpp_name(name):
    for old, new in LLAMA_CPP:
        name = name.replace(old, new)
    return name


@torch.no_grad()
def test_llama_cpp_text_encoder_gguf(tmp_path):
    """A Qwen2.5-VL text encoder as llama.cpp writes it (its names, Q8_0 weights, quantized token table)."""
    tokenizer_dir = write_tiny_qwen_tokenizer(tmp_path / "qwen-te-Q8_0_tokenizer")
    state = tiny_qwen_text_state_dict(len(load_tokenizer(tokenizer_dir)), seed=4)
    reference_file = write_safetensors(state, tmp_path / "reference" / "te.safetensors")
    tensors = {_llama_cpp_name(k): (v.numpy(), None if v.ndim == 1 else gguf.GGMLQuantizationType.Q8_0)
               for k, v in state.items()}
    path = _write_gguf(tmp_path / "qwen-te-Q8_0.gguf", "qwen2vl", tensors)

    quantized = load_text_encoder(path)
    assert isinstance(quantized.model.embed_tokens.weight, QuantizedTensor)
    reference = load_text_encoder(reference_file, tokenizer_path=tokenizer_dir)
    prompts = ["a cat on a chair", ""]
    got, expected = encode_qwen_prompts(quantized, prompts), encode_qwen_prompts(reference, prompts)
    # Q8_0 moves each weight by ~0.5% (relative); a random two-layer language model amplifies that to
    # ~2.5% in its last hidden state (measured 2.5%; an unquantized GGUF of the same weights gives 0).
    assert ((got - expected).norm() / expected.norm()).item() < 0.05


def test_reshaped_tensors_get_their_shape_back(source, tmp_path):
    """Converters store some tensors flattened, with the original shape in comfy.gguf.orig_shape.*."""
    root, bf16 = source
    state = open_checkpoint(bf16)
    tensors, metadata = {}, {}
    for key in state.keys():
        value = state.tensor(key).float().numpy()
        if key == "img_in.weight":  # stored flat, as a converter may do for odd shapes
            metadata["comfy.gguf.orig_shape." + key] = list(value.shape)
            value = value.reshape(-1)
        tensors[key] = (value, None)
    path = _write_gguf(tmp_path / "flat.gguf", "qwen_image", tensors, metadata)
    assert open_checkpoint(path).shape("img_in.weight") == tuple(state.shape("img_in.weight"))
    _, out = load_and_run_dit(path)
    _, reference = load_and_run_dit(bf16)
    torch.testing.assert_close(out, reference, atol=5e-2, rtol=5e-2)


def test_damaged_and_foreign_gguf_files(source, tmp_path):
    root, _ = source
    good = convert(source[1], tmp_path / "good.gguf", "Q8_0")
    data = good.read_bytes()

    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + b"\xff" * 60)
    with pytest.raises(ModelFileError, match="not a readable GGUF file"):
        open_checkpoint(corrupt)

    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelFileError, match="truncated|not a readable GGUF"):
        open_checkpoint(truncated)

    unknown_type = tmp_path / "unknown_type.gguf"
    unknown_type.write_bytes(data)
    reader = gguf.GGUFReader(str(unknown_type), "r+")
    reader.tensors[0].field.parts[4][0] = 99  # a quantization type no reader knows
    del reader
    with pytest.raises(ModelFileError, match="tensor type unknown"):
        open_checkpoint(unknown_type)

    iq2 = gguf.GGMLQuantizationType.IQ2_XXS  # raw blocks: the gguf package has no quantizer for it
    writer = gguf.GGUFWriter(str(tmp_path / "iq2.gguf"), arch="qwen_image")
    writer.add_tensor("img_in.weight", np.zeros((64, gguf.GGML_QUANT_SIZES[iq2][1]), np.uint8), raw_dtype=iq2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    unsupported = tmp_path / "iq2.gguf"
    with pytest.raises(ModelFileError, match=r"GGUF types this pack cannot dequantize \(IQ2_XXS for img_in.weight\)"):
        open_checkpoint(unsupported)

    foreign = _write_gguf(tmp_path / "flux1-dev-Q4_0.gguf", "flux", {
        "img_in.weight": (np.zeros((64, 64), np.float32), gguf.GGMLQuantizationType.Q4_0),
        "final_layer.linear.weight": (np.zeros((64, 64), np.float32), gguf.GGMLQuantizationType.Q4_0),
        "double_blocks.0.img_attn.qkv.weight": (np.zeros((192, 64), np.float32), gguf.GGMLQuantizationType.Q4_0),
    })
    with pytest.raises(ModelFileError, match="FLUX.1 diffusion model, which this pack does not run yet"):
        read_diffusion_model(foreign)


def test_convert_command(source, tmp_path, capsys):
    from comfyui_mmdit import cli

    _, bf16 = source
    target = tmp_path / "qwen-cli-Q5_0.gguf"
    assert cli.main(["convert", str(bf16), str(target), "--type", "Q5_0"]) == 0
    assert open_checkpoint(target).tensor("transformer_blocks.0.attn.to_q.weight").qtype == int(
        gguf.GGMLQuantizationType.Q5_0)
    out = capsys.readouterr().out
    assert "tensors" in out and f"wrote {target}" in out
    assert cli.main(["convert", str(bf16), str(target), "--type", "Q5_0"]) == 2  # never overwrites silently
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert cli.main(["convert", str(bf16), str(tmp_path / "fp8.gguf"), "--type", "fp8_scaled"]) == 2
    assert "fp8_scaled is written as a .safetensors file" in capsys.readouterr().err
    assert cli.main(["convert", str(target), str(tmp_path / "again.gguf"), "--type", "Q4_0"]) == 2
    assert "is already quantized" in capsys.readouterr().err
