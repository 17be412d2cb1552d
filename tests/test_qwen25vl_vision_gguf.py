"""Qwen2.5-VL's vision tower from llama.cpp's mmproj GGUF (loaders/layouts/llama_cpp_vision.py), and finding
it beside a text encoder (locate_vision_tower).

The tiny mmproj files are written as llama.cpp's convert_hf_to_gguf.py --mmproj writes them
(tools/tiny_models.write_llama_cpp_mmproj); the writer's names are checked against gguf-py's own tensor map,
and the values a file stands for are read back with gguf-py's reader and dequantizer, independently of the
pack's reader. The tower's width is the published head size (2 x 80), its FFN 120 wide so that, as in the
7B tower (3420), ffn_down's rows do not fill Q8_0 blocks and llama.cpp stores it F16 in a Q8_0 file.
"""

import shutil

import pytest
import torch

from comfyui_mmdit.loaders.errors import ModelFileError
from comfyui_mmdit.loaders.quant.tensor import QuantizedTensor
from comfyui_mmdit.loaders.text_encoder import (
    find_vision_tower, load_vision_tower, locate_vision_tower, model_name_tokens, read_vision_tower)
from comfyui_mmdit.model_defs.text_encoders import qwen25vl_vision as vision
from comfyui_mmdit.model_defs.text_encoders import qwen_image_processor as processor
from comfyui_mmdit.tools.tiny_models import (
    llama_cpp_mmproj_tensors, tiny_qwen_text_state_dict, tiny_qwen_vision_state_dict, write_llama_cpp_mmproj,
    write_llama_cpp_text_encoder, write_safetensors)

from helpers import smooth_image

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType

CONFIG = vision.QwenVisionConfig(hidden_size=160, depth=8, intermediate_size=120, out_hidden_size=128)
FEATURE_ATOL = 1e-5  # fp32, the same weights: the tower is transformers' own modules (as test_qwen25vl_vision)
TEXT_ENCODER = "Qwen2.5-VL-7B-Instruct-Q8_0.gguf"


@pytest.fixture(scope="module")
def weights():
    return tiny_qwen_vision_state_dict(CONFIG, seed=7)  # ComfyUI names: visual.*


@pytest.fixture(scope="module")
def files(tmp_path_factory, weights):
    root = tmp_path_factory.mktemp("mmproj")
    return {t: write_llama_cpp_mmproj(weights, root / f"mmproj-tiny-{t}.gguf", t, name="Qwen2.5 VL Tiny")
            for t in ("F32", "F16", "BF16", "Q8_0")}


def file_values(path) -> dict[str, tuple[torch.Tensor, int, bytes]]:
    """{GGUF name: (float32 values in torch order, GGML type, stored bytes)} read with gguf-py alone."""
    reader = gguf.GGUFReader(str(path))
    out = {}
    for t in reader.tensors:
        values = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).astype("float32").copy())
        out[t.name] = (values.reshape(tuple(int(d) for d in reversed(t.shape))), int(t.tensor_type),
                       t.data.tobytes())
    return out


def stood_for(path, weights) -> dict[str, torch.Tensor]:
    """The tower's weights (transformers' visual names) as the file stores them: each HF tensor's parts, as
    the converter split it, read back with gguf-py and put together again."""
    stored = file_values(path)
    out = {}
    for key, tensor in weights.items():
        parts = [stored[name][0] for name in llama_cpp_mmproj_tensors({key: tensor})]
        out[key[len("visual."):]] = torch.stack(parts, dim=2) if len(parts) == 2 else torch.cat(parts)
    return out


@pytest.fixture(scope="module")
def reference():
    """transformers' full Qwen2.5-VL (a tiny language model, CONFIG's tower); its tower's weights are set
    per comparison."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=64, hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1,
                         rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
                         bos_token_id=None, eos_token_id=None),
        vision_config=vision.transformers_vision_config(CONFIG).to_dict(),
    )
    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def images():
    # sides multiples of 28: several attention windows, partial ones at the edges, two sizes in one call
    return processor.preprocess([smooth_image(224, 168, 11), smooth_image(56, 308, 12)])


@torch.no_grad()
def reference_features(reference, tower_weights, images):
    result = reference.model.visual.load_state_dict(tower_weights, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    features = reference.get_image_features(*images).pooler_output
    return torch.cat(list(features))


@torch.no_grad()
def our_features(path, images, **kwargs):
    loaded = load_vision_tower(path, **kwargs)
    return loaded, vision.encode_images(loaded.model, *images, dtype=torch.float32)


# --- the file as llama.cpp writes it ------------------------------------------------------------------------
def test_writer_follows_llama_cpp(files, weights):
    """Names from gguf-py's own tensor map (what convert_hf_to_gguf.py uses), the converter's stored types
    and the metadata clip.cpp reads."""
    mapping = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, CONFIG.depth)
    for key, tensor in weights.items():
        written = list(llama_cpp_mmproj_tensors({key: tensor}))
        stem, suffix = key.rsplit(".", 1)
        if key == "visual.patch_embed.proj.weight":
            patch = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.V_ENC_EMBD_PATCH]
            assert written == [patch + ".weight", patch + ".weight.1"]
        elif ".attn.qkv." in key:  # split by the converter, each part mapped under its generated name
            assert written == [mapping.get_name(stem.replace("qkv", p)) + "." + suffix for p in "qkv"]
        else:
            assert written == [mapping.get_name(stem) + "." + suffix], key

    reader = gguf.GGUFReader(str(files["Q8_0"]))
    meta = {f.name: f.contents() for f in reader.fields.values()}
    assert meta["general.architecture"] == "clip" and meta["general.type"] == "mmproj"
    assert meta["clip.projector_type"] == gguf.VisionProjectorType.QWEN25VL == "qwen2.5vl_merger"
    assert meta["clip.vision.n_wa_pattern"] == 8 and meta["clip.vision.projection_dim"] == 128
    assert meta["clip.vision.attention.head_count"] == 2 and meta["clip.use_silu"] is True

    f16, q8 = file_values(files["F16"]), file_values(files["Q8_0"])
    assert f16["v.patch_embd.weight.1"][1] == T.F16 and q8["v.patch_embd.weight.1"][1] == T.F32
    assert f16["v.blk.0.attn_q.weight"][1] == T.F16 and q8["v.blk.0.attn_q.weight"][1] == T.Q8_0
    assert q8["v.blk.0.ffn_down.weight"][1] == T.F16  # rows of 120: no whole Q8_0 blocks (7B: 3420)
    assert q8["v.blk.0.ffn_gate.weight"][1] == T.Q8_0 and q8["mm.2.weight"][1] == T.Q8_0
    assert all(q8[n][1] == T.F32 for n in ("v.blk.0.ln1.weight", "v.post_ln.weight", "v.blk.0.attn_q.bias"))
    assert tuple(q8["v.patch_embd.weight"][0].shape) == (160, 3, 14, 14)


# --- loading ------------------------------------------------------------------------------------------------
def test_f32_mmproj_matches_transformers(files, weights, reference, images):
    checked = read_vision_tower(files["F32"])
    assert checked.layout == "llama_cpp_mmproj" and checked.config == CONFIG
    assert "llama.cpp mmproj" in checked.description
    expected = reference_features(reference, {k[len("visual."):]: v for k, v in weights.items()}, images)
    loaded, got = our_features(files["F32"], images)
    assert got.shape == expected.shape == (12 * 16 // 4 + 4 * 22 // 4, 128)
    difference = (got - expected).abs().max().item()
    print(f"F32 mmproj vs transformers: max abs {difference:.2e}")
    torch.testing.assert_close(got, expected, atol=FEATURE_ATOL, rtol=0)


@pytest.mark.parametrize("file_type", ["F16", "BF16", "Q8_0"])
def test_stored_types_compute_the_values_they_store(files, weights, reference, images, file_type):
    """Each file computes what transformers computes on the values it stores (gguf-py's dequantization):
    nothing is lost in joining q/k/v or the patch slices, and Q8_0 stays quantized."""
    path = files[file_type]
    expected = reference_features(reference, stood_for(path, weights), images)
    loaded, got = our_features(path, images)
    torch.testing.assert_close(got, expected, atol=FEATURE_ATOL, rtol=0)
    unquantized = reference_features(reference, {k[len("visual."):]: v for k, v in weights.items()}, images)
    print(f"{file_type}: max abs vs its stored values {(got - expected).abs().max().item():.2e}; relative "
          f"difference from the unquantized tower {((got - unquantized).norm() / unquantized.norm()).item():.4f}")

    qkv = loaded.model.blocks[3].attn.qkv.weight
    stored = file_values(path)
    parts = [stored[f"v.blk.3.attn_{p}.weight"] for p in "qkv"]
    if file_type == "Q8_0":
        assert isinstance(qkv, QuantizedTensor) and qkv.qtype == int(T.Q8_0)
        assert qkv.raw().numpy().tobytes() == b"".join(p[2] for p in parts)  # the stored bytes, joined
        assert not isinstance(loaded.model.blocks[3].mlp.down_proj.weight, QuantizedTensor)  # F16 as stored
    assert torch.equal(qkv.dequantize(torch.float32) if isinstance(qkv, QuantizedTensor) else qkv.float(),
                       torch.cat([p[0] for p in parts]))
    patch = loaded.model.patch_embed.proj.weight.float()
    assert torch.equal(patch[:, :, 0], stored["v.patch_embd.weight"][0])
    assert torch.equal(patch[:, :, 1], stored["v.patch_embd.weight.1"][0])


def test_surgery_placeholder_is_skipped(tmp_path, weights, files):
    """The old qwen2_vl_surgery.py wrote a dummy v.position_embd.weight beside the tower."""
    stored = file_values(files["F32"])
    writer = gguf.GGUFWriter(str(tmp_path / "mmproj-surgery.gguf"), arch="clip")
    writer.add_clip_projector_type("qwen2.5vl_merger")
    for name, (values, _, _) in stored.items():
        writer.add_tensor(name, values.numpy())
    writer.add_tensor("v.position_embd.weight", torch.zeros(10, 10).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert read_vision_tower(tmp_path / "mmproj-surgery.gguf").config == CONFIG


# --- refused files ------------------------------------------------------------------------------------------
def refused(path, *fragments):
    with pytest.raises(ModelFileError) as info:
        read_vision_tower(path)
    message = str(info.value)
    assert path.name in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, weights, files):
    root = tmp_path_factory.mktemp("damaged")
    data = files["Q8_0"].read_bytes()
    (root / "mmproj-truncated.gguf").write_bytes(data[: len(data) - 1000])
    return {
        "truncated": root / "mmproj-truncated.gguf",
        "no_k": write_llama_cpp_mmproj(weights, root / "mmproj-no-k.gguf", "F16", leave_out=("v.blk.3.attn_k.weight",)),
        "one_slice": write_llama_cpp_mmproj(weights, root / "mmproj-one-slice.gguf", "F16",
                                            leave_out=("v.patch_embd.weight.1",)),
        "no_merger": write_llama_cpp_mmproj(weights, root / "mmproj-no-merger.gguf", "F16",
                                            leave_out=("mm.2.weight", "mm.2.bias")),
        "pattern": write_llama_cpp_mmproj(weights, root / "mmproj-pattern.gguf", "F16", n_wa_pattern=4),
        "qwen2vl": write_llama_cpp_mmproj(weights, root / "mmproj-qwen2vl.gguf", "F16",
                                          projector_type="qwen2vl_merger"),
        "gemma": write_llama_cpp_mmproj(weights, root / "mmproj-gemma-3-4b-it-f16.gguf", "F16",
                                        projector_type="gemma3"),
    }


def test_damaged_or_foreign_mmproj_is_refused(damaged):
    refused(damaged["truncated"], "truncated")
    refused(damaged["no_k"], "split into parts, with parts missing", "v.blk.3.attn_q.weight", "v.blk.3.attn_k.weight")
    refused(damaged["one_slice"], "only one of the patch embedding's two temporal slices", "v.patch_embd.weight.1")
    refused(damaged["no_merger"], "merger.mlp.2")
    refused(damaged["pattern"], "clip.vision.n_wa_pattern 4", "every 8th")
    refused(damaged["qwen2vl"], "Qwen2-VL projector", "not Qwen2.5-VL's vision tower")
    refused(damaged["gemma"], "Gemma 3 projector", "qwen2.5vl_merger")


# --- finding the tower beside a text encoder ----------------------------------------------------------------
@pytest.fixture(scope="module")
def text_encoder_state():
    return tiny_qwen_text_state_dict(vocab_size=300, seed=1)  # 128 wide, as CONFIG's output


def folder_with(tmp_path, text_encoder_state, files, **copies):
    """A text_encoders folder: the llama.cpp text encoder and copies of mmproj files under the given names."""
    text_encoder = write_llama_cpp_text_encoder(text_encoder_state, tmp_path / TEXT_ENCODER)
    for name, source in copies.items():
        shutil.copy(source, tmp_path / name)
    return text_encoder


@pytest.mark.parametrize("name", ["mmproj-Qwen2.5-VL-7B-Instruct-f16.gguf", "Qwen2.5-VL-7B-Instruct-mmproj-F16.gguf",
                                  "mmproj-F16.gguf", "qwen2.5-vl-7b-instruct-vision-MMPROJ.gguf"])
def test_mmproj_beside_a_gguf_text_encoder_is_found(tmp_path, text_encoder_state, files, damaged, name, caplog):
    text_encoder = folder_with(tmp_path, text_encoder_state, files,
                               **{name: files["F16"], "mmproj-gemma-3-4b-it-f16.gguf": damaged["gemma"],
                                  "Qwen2.5-VL-7B-Instruct-Q4_K_M.gguf": tmp_path / TEXT_ENCODER})
    with caplog.at_level("INFO", logger="ComfyUI-MMDiT"):
        assert locate_vision_tower(text_encoder) == tmp_path / name
    assert name in caplog.text
    assert load_vision_tower(tmp_path / name).config == CONFIG


def test_several_mmproj_files_prefer_the_model_name(tmp_path, text_encoder_state, files):
    text_encoder = folder_with(tmp_path, text_encoder_state, files,
                               **{"mmproj-F16.gguf": files["F16"],
                                  "mmproj-Qwen2.5-VL-7B-Instruct-Q8_0.gguf": files["Q8_0"],
                                  "mmproj-Qwen2.5-VL-3B-Instruct-f16.gguf": files["F16"]})
    choice = find_vision_tower(text_encoder)
    assert choice.path.name == "mmproj-Qwen2.5-VL-7B-Instruct-Q8_0.gguf"
    assert "shares the text encoder's model name" in choice.note and "also found" in choice.note
    assert "mmproj-F16.gguf" in choice.note
    assert model_name_tokens("Qwen2.5-VL-7B-Instruct-UD-Q4_K_XL.gguf") == model_name_tokens(
        "Qwen2.5-VL-7B-Instruct-mmproj-BF16.gguf") == {"qwen2", "5", "vl", "7b", "instruct"}
    assert model_name_tokens("mmproj-F16.gguf") == frozenset()


def test_tower_found_by_content_and_in_other_folders(tmp_path, text_encoder_state, files, weights):
    home, other = tmp_path / "text_encoders", tmp_path / "clip"
    other.mkdir()
    text_encoder = folder_with(home, text_encoder_state, files,
                               **{"qwen2.5-vl-7b-instruct-vision.gguf": files["F16"]})  # the surgery script's name
    assert locate_vision_tower(text_encoder) == home / "qwen2.5-vl-7b-instruct-vision.gguf"
    (home / "qwen2.5-vl-7b-instruct-vision.gguf").unlink()
    shutil.copy(files["Q8_0"], other / "mmproj-Qwen2.5-VL-7B-Instruct-Q8_0.gguf")
    assert locate_vision_tower(text_encoder, folders=[other]) == other / "mmproj-Qwen2.5-VL-7B-Instruct-Q8_0.gguf"


def test_files_holding_the_tower_are_their_own(tmp_path, text_encoder_state, weights, files):
    comfyui = write_safetensors({**text_encoder_state, **weights}, tmp_path / "qwen_2.5_vl_tiny.safetensors")
    assert locate_vision_tower(comfyui) == comfyui
    assert locate_vision_tower(files["F16"]) == files["F16"]  # an mmproj given directly


def test_no_tower_found_is_refused_clearly(tmp_path, text_encoder_state, files, damaged, weights):
    text_encoder = folder_with(tmp_path, text_encoder_state, files)
    with pytest.raises(ModelFileError) as info:
        locate_vision_tower(text_encoder)
    message = str(info.value)
    for fragment in (TEXT_ENCODER, "no vision tower was found beside it", str(tmp_path), "no other .gguf file",
                     "mmproj-Qwen2.5-VL-7B-Instruct-f16.gguf"):
        assert fragment in message, message
    with pytest.raises(ModelFileError, match="llama.cpp keeps the vision tower in that separate file"):
        load_vision_tower(text_encoder)  # the language model alone, given to the tower loader

    # what is there, and why each does not fit: another model's projector, a damaged file, another size
    shutil.copy(damaged["gemma"], tmp_path / "mmproj-gemma-3-4b-it-f16.gguf")
    shutil.copy(damaged["truncated"], tmp_path / "mmproj-Qwen2.5-VL-7B-Instruct-f16.gguf")
    narrow = vision.QwenVisionConfig(hidden_size=160, depth=8, intermediate_size=120, out_hidden_size=64)
    write_llama_cpp_mmproj(tiny_qwen_vision_state_dict(narrow), tmp_path / "mmproj-Qwen2.5-VL-3B-Instruct-f16.gguf")
    with pytest.raises(ModelFileError) as info:
        locate_vision_tower(text_encoder)
    message = str(info.value)
    for fragment in ("mmproj-gemma-3-4b-it-f16.gguf: is a Gemma 3 projector",
                     "mmproj-Qwen2.5-VL-7B-Instruct-f16.gguf: unreadable", "truncated",
                     "mmproj-Qwen2.5-VL-3B-Instruct-f16.gguf: a Qwen2.5-VL vision tower for a 64-wide language model"):
        assert fragment in message, message


@pytest.mark.parametrize("qtype,suffix", [("Q8_0", "gguf"), ("fp8_scaled", "safetensors")])
def test_converted_text_encoder_keeps_its_tower(tmp_path, text_encoder_state, weights, images, qtype, suffix):
    """cli.py convert keeps a text encoder's visual.* tensors (in ComfyUI's names): the converted file is its
    own vision tower, quantized like the rest."""
    from comfyui_mmdit.tools.convert import convert

    source = write_safetensors({**text_encoder_state, **weights}, tmp_path / "qwen_2.5_vl_tiny.safetensors",
                               dtype=torch.bfloat16)
    converted = convert(source, tmp_path / f"qwen_2.5_vl_tiny-{qtype}.{suffix}", qtype)
    assert locate_vision_tower(converted) == converted
    _, expected = our_features(source, images)
    loaded, got = our_features(converted, images)
    assert isinstance(loaded.model.blocks[0].attn.qkv.weight, QuantizedTensor)
    error = ((got - expected).norm() / expected.norm()).item()
    print(f"converted {qtype}: relative feature difference from bf16 {error:.4f}")
    assert error < 0.1  # 8-bit weights in a random 8-block tower (measured: Q8_0 ~1.6%, FP8 ~9%)


def test_4_bit_conversion_keeps_the_tower_at_8_bits(tmp_path, text_encoder_state, weights, images):
    """A 4-bit text encoder keeps its vision tower at Q8_0 (the language model's matrices go to Q4_0): at
    4 bits the tiny tower's features were 26% off, at Q8_0 1.6%."""
    import gguf

    from comfyui_mmdit.tools.convert import convert

    source = write_safetensors({**text_encoder_state, **weights}, tmp_path / "qwen_2.5_vl_tiny.safetensors",
                               dtype=torch.bfloat16)
    converted = convert(source, tmp_path / "qwen_2.5_vl_tiny-Q4_0.gguf", "Q4_0")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(converted).tensors}
    assert types["visual.blocks.0.attn.qkv.weight"] == "Q8_0"
    assert types["model.layers.0.mlp.gate_proj.weight"] == "Q4_0"
    _, expected = our_features(source, images)
    _, got = our_features(converted, images)
    assert ((got - expected).norm() / expected.norm()).item() < 0.05
