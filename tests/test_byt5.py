"""The ByT5 glyph encoder: parity with transformers' T5 encoder, its tokenizer against transformers' and
the folder ComfyUI ships, and every file it loads from (ComfyUI single file, Hugging Face folder, FP8,
GGUF in llama.cpp's and in the ComfyUI names), with bad inputs."""

import warnings

import numpy as np
import pytest
import torch

from comfyui_mmdit.loaders.errors import ModelFileError
from comfyui_mmdit.loaders.quant.tensor import QuantizedTensor
from comfyui_mmdit.loaders.text_encoder import load_text_encoder, read_text_encoder, t5_encoder_names
from comfyui_mmdit.loaders.tokenizers import BUILTIN_BYT5
from comfyui_mmdit.model_defs.ops import StandaloneOps
from comfyui_mmdit.model_defs.text_encoders import byt5
from comfyui_mmdit.model_defs.text_encoders.byt5_tokenizer import (
    BASE_VOCAB, GLYPH_VOCAB, ByteTokenizer, glyph_markup_tokens, with_glyph_markup)
from comfyui_mmdit.tools.tiny_models import (
    TINY_BYT5, random_state_dict, tiny_byt5_state_dict, tiny_qwen_text_state_dict, write_safetensors)
from comfyui_mmdit.tools.tiny_tokenizer import byt5_tokenizer, write_byt5_tokenizer

from helpers import manifest, manifest_shapes

# Same weights, same ids, fp32: only the summation order differs (measured max abs ~2e-6).
ATOL = 1e-5

STRINGS = [
    "", " ", "hello", 'Text "Hello World". ', "Text \"it's\". Text 'x'. ",
    "中文标题 “新年快乐” ‘福’", "emoji 😀🎉 and accents: café, naïve, Ærøskøbing", "tabs\tand\nnew lines\r\n",
    "a" * 200,  # longer than the 128-token limit: the tokenizer itself does not cut
    "漢字" * 30,  # 180 bytes
    "<pad></s><unk>", "a </s> b", "x</s>", "</s> </s>", "\u3000<pad>\u3000",
    "<extra_id_0> <extra_id_124>", "<extra_id_125> <extra_id_01>",
    "<color-0> <color-137> <color-138>", "<en-font-511><cn-font-0><jp-font-210><kr-font-121>",
    "<kr-font-122> <de-font-1> <color-1<color-2>", "<<color-5>>",
]


def _transformers_encoder(config: byt5.ByT5Config, state: dict):
    from transformers import T5Config, T5EncoderModel

    tf_config = T5Config(vocab_size=config.vocab_size, d_model=config.d_model, d_kv=config.d_kv, d_ff=config.d_ff,
                         num_layers=config.num_layers, num_heads=config.num_heads, feed_forward_proj="gated-gelu",
                         relative_attention_num_buckets=config.relative_attention_num_buckets,
                         is_encoder_decoder=False, use_cache=False, dropout_rate=0.0)
    model = T5EncoderModel(tf_config).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert missing == ["encoder.embed_tokens.weight"] and not unexpected  # the tied alias of shared.weight
    return model


@pytest.fixture(scope="module")
def state():
    return tiny_byt5_state_dict(seed=1)


@pytest.fixture(scope="module")
def reference(state):
    return _transformers_encoder(TINY_BYT5, state)


@pytest.fixture(scope="module")
def comfyui_file(state, tmp_path_factory):
    return write_safetensors(state, tmp_path_factory.mktemp("byt5") / "byt5_small_glyphxl_fp32.safetensors")


# --- the network ---------------------------------------------------------------------------------------------
def test_full_size_build_matches_the_published_files():
    shapes = manifest_shapes("byt5_small_glyphxl.comfyui")
    config = byt5.config_from_shapes(shapes)
    assert config == byt5.ByT5Config(vocab_size=1510, d_model=1472, d_kv=64, d_ff=3584, num_layers=12, num_heads=6)
    ours = {k: tuple(v.shape) for k, v in byt5.build_encoder(config).state_dict().items()}
    assert ours == shapes
    published = manifest("byt5_small_glyphxl.comfyui")["config"]
    assert (published["d_model"], published["num_layers"], published["vocab_size"]) == (1472, 12, 1510)
    # transformers' T5EncoderModel: the same tensors plus the tied alias of the token table.
    hf = manifest_shapes("byt5_small_glyphxl.transformers")
    assert hf.keys() - ours.keys() == {"encoder.embed_tokens.weight"} and all(hf[k] == v for k, v in ours.items())


def test_meta_build_allocates_nothing():
    model = byt5.build_encoder(byt5.ByT5Config())
    assert all(t.is_meta for t in model.state_dict().values())


def test_config_from_nonsense_shapes_raises():
    shapes = manifest_shapes("byt5_small_glyphxl.comfyui")
    with pytest.raises(KeyError):
        byt5.config_from_shapes({k: v for k, v in shapes.items() if "relative_attention_bias" not in k})
    with pytest.raises(ValueError, match="not a gated-GELU"):
        byt5.config_from_shapes({k: v for k, v in shapes.items() if "wi_0" not in k})
    with pytest.raises(ValueError, match="not a multiple of 6 heads"):
        byt5.config_from_shapes({**shapes, "encoder.block.0.layer.0.SelfAttention.q.weight": (385, 1472)})


@torch.no_grad()
def test_matches_transformers_with_padding(state, reference):
    torch.manual_seed(0)
    ours = byt5.ByT5Encoder(TINY_BYT5, StandaloneOps)
    ours.load_state_dict(state)
    # 150 tokens: relative distances past max_distance 128 (the last, logarithmic buckets) are used too.
    ids = torch.randint(3, TINY_BYT5.vocab_size, (3, 150))
    mask = torch.ones(3, 150, dtype=torch.long)
    mask[1, 40:] = 0
    mask[2, 7:] = 0
    expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    got = ours(ids, attention_mask=mask)
    print(f"ByT5 vs transformers: max abs {(got - expected).abs().max().item():.2e}")
    assert (got - expected).abs().max() <= ATOL
    # The padding is really masked: a padded row's real tokens equal the same tokens run alone.
    alone = ours(ids[1:2, :40])
    assert (got[1, :40] - alone[0]).abs().max() <= ATOL
    # And the mask matters (a test that could not fail would prove nothing).
    assert (ours(ids[1:2])[0, :40] - alone[0]).abs().max() > 1e-3


@torch.no_grad()
def test_encode_texts_pads_refuses_and_skips(state, reference):
    model = byt5.ByT5Encoder(TINY_BYT5, StandaloneOps)
    model.load_state_dict(state)
    tokenizer = ByteTokenizer()
    texts = ['Text "Hi". ', None, 'Text "a longer one". Text "<color-3>x". ']
    states, mask = byt5.encode_texts(model, tokenizer, texts, 128)
    lengths = [len(tokenizer(t)["input_ids"]) if t else 0 for t in texts]
    assert mask.sum(-1).tolist() == lengths and states.shape == (3, max(lengths), TINY_BYT5.d_model)
    for i, text in enumerate(texts):
        if text is None:
            assert not states[i].any()
            continue
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        expected = reference(input_ids=ids).last_hidden_state[0]
        assert (states[i, :lengths[i]] - expected).abs().max() <= ATOL
        assert not states[i, lengths[i]:].any()  # padding is zeros
    assert byt5.encode_texts(model, tokenizer, [None, None], 128) is None
    with pytest.raises(ValueError, match="is 201 tokens long.*the limit is 128"):
        byt5.encode_texts(model, tokenizer, ["a" * 200], 128)
    assert len(byt5.check_length(tokenizer, "a" * 127, 128)) == 128  # 127 bytes + the end token fit


# --- the tokenizer ---------------------------------------------------------------------------------------------
def test_markup_tokens_fill_the_glyph_table():
    tokens = glyph_markup_tokens()
    assert BASE_VOCAB + len(tokens) == GLYPH_VOCAB == 1510 == len(ByteTokenizer())
    assert len(set(tokens)) == len(tokens)
    assert (tokens[0], tokens[137], tokens[138], tokens[-1]) == ("<color-0>", "<color-137>", "<en-font-0>",
                                                                 "<kr-font-121>")
    assert len(ByteTokenizer(markup=False)) == 384


def test_byte_tokenizer_matches_transformers():
    """Our tokenizer against transformers' ByT5Tokenizer as google/byt5-small's files define it, with the
    markup tokens added as the official code adds them (and without, as plain ByT5)."""
    plain = byt5_tokenizer()
    with_markup = with_glyph_markup(plain)
    assert len(plain) == BASE_VOCAB and len(with_markup) == GLYPH_VOCAB
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "This sequence already has </s>"
        for text in STRINGS:
            assert ByteTokenizer()(text)["input_ids"] == with_markup(text)["input_ids"], text
            assert ByteTokenizer(markup=False)(text)["input_ids"] == plain(text)["input_ids"], text
    assert ByteTokenizer()("Hi")["input_ids"] == [ord("H") + 3, ord("i") + 3, 1]
    # diffusers / the official code pad to 128 with <pad> (0) and cut at 128 keeping </s>: the same ids.
    padded = with_markup('Text "Hi". ', padding="max_length", max_length=128, truncation=True)["input_ids"]
    ours = ByteTokenizer()('Text "Hi". ')["input_ids"]
    assert padded == ours + [0] * (128 - len(ours))


# --- files ---------------------------------------------------------------------------------------------------------
def _encode(loaded, texts=('Text "Hello". ', 'Text "新年快乐". Text "<color-5>OPEN". ')):
    with torch.no_grad():
        return byt5.encode_texts(loaded.model, loaded.tokenizer, list(texts), 128, dtype=torch.float32)[0]


@torch.no_grad()
def test_comfyui_single_file(comfyui_file, reference):
    loaded = load_text_encoder(comfyui_file)
    assert (loaded.encoder_kind, loaded.layout) == ("byt5", "comfyui")
    assert "2 layers, width 64, 1510 tokens" in loaded.description
    assert loaded.tokenizer_source == BUILTIN_BYT5 and len(loaded.tokenizer) == GLYPH_VOCAB
    ids = torch.tensor([loaded.tokenizer('Text "<color-5>OPEN". ')["input_ids"]])
    assert BASE_VOCAB + 5 in ids  # the markup token, one id
    expected = reference(input_ids=ids).last_hidden_state
    assert (loaded.model(ids) - expected).abs().max() <= ATOL


@torch.no_grad()
def test_hf_folder_with_its_tokenizer(reference, comfyui_file, tmp_path):
    """A transformers T5EncoderModel folder (config.json + model.safetensors) in a diffusers-like repo:
    its tokenizer comes from tokenizer_2/ (the Qwen2.5 tokenizer in tokenizer/ is passed over)."""
    from comfyui_mmdit.tools.tiny_tokenizer import write_tiny_qwen_tokenizer

    reference.save_pretrained(tmp_path / "repo" / "text_encoder_2")
    write_byt5_tokenizer(tmp_path / "repo" / "tokenizer_2")
    write_tiny_qwen_tokenizer(tmp_path / "repo" / "tokenizer")
    loaded = load_text_encoder(tmp_path / "repo" / "text_encoder_2")
    assert loaded.encoder_kind == "byt5"
    assert loaded.tokenizer_source.folder == tmp_path / "repo" / "tokenizer_2"
    assert len(loaded.tokenizer) == GLYPH_VOCAB  # the folder's 384 tokens + the markup
    torch.testing.assert_close(_encode(loaded), _encode(load_text_encoder(comfyui_file)), atol=0, rtol=0)


def test_transformers_names_with_the_tied_alias(state, tmp_path):
    """Older transformers save both names of the token table: the alias is skipped (or used when alone)."""
    both = write_safetensors({**state, "encoder.embed_tokens.weight": state["shared.weight"].clone()},
                             tmp_path / "both.safetensors")
    checked = read_text_encoder(both)
    assert checked.identity.layout == "transformers" and "shared.weight" in checked.names.values()
    assert "encoder.embed_tokens.weight" not in checked.names
    alone = {("encoder.embed_tokens.weight" if k == "shared.weight" else k): v for k, v in state.items()}
    path = write_safetensors(alone, tmp_path / "alias_only.safetensors")
    from comfyui_mmdit.loaders.checkpoints import open_checkpoint

    assert t5_encoder_names(open_checkpoint(path), "")["encoder.embed_tokens.weight"] == "shared.weight"
    assert read_text_encoder(path).encoder_kind == "byt5"


def test_tokenizer_given_or_beside_the_file(comfyui_file, tmp_path):
    folder = write_byt5_tokenizer(comfyui_file.parent / f"{comfyui_file.stem}_tokenizer")
    try:
        checked = read_text_encoder(comfyui_file)
        assert checked.tokenizer_source.folder == folder and len(checked.tokenizer) == GLYPH_VOCAB
    finally:
        for file in folder.iterdir():
            file.unlink()
        folder.rmdir()
    from comfyui_mmdit.tools.tiny_tokenizer import write_tiny_qwen_tokenizer

    qwen = write_tiny_qwen_tokenizer(tmp_path / "qwen_tok")
    with pytest.raises(ModelFileError, match="does not hold a ByT5 byte tokenizer"):
        read_text_encoder(comfyui_file, tokenizer_path=qwen)
    # The host's places are asked with the kind's tokenizer name.
    asked = []
    read_text_encoder(comfyui_file, tokenizer_places=lambda name: asked.append(name) or [])
    assert asked == ["byt5"]


@torch.no_grad()
def test_plain_fp8_file(state, comfyui_file, tmp_path):
    """Every tensor cast to float8_e4m3fn, no scales: matrices stay FP8 and are dequantized per layer."""
    fp8 = write_safetensors({k: v.to(torch.float8_e4m3fn) for k, v in state.items()}, tmp_path / "byt5_fp8.safetensors")
    loaded = load_text_encoder(fp8)
    q = loaded.model.encoder.block[0].layer[0].SelfAttention.q.weight
    assert isinstance(q, QuantizedTensor) and q.dtype == torch.float8_e4m3fn
    assert isinstance(loaded.model.shared.weight, QuantizedTensor)
    exact = write_safetensors({k: v.to(torch.float8_e4m3fn).float() for k, v in state.items()},
                              tmp_path / "exact" / "byt5.safetensors")
    torch.testing.assert_close(_encode(loaded), _encode(load_text_encoder(exact)), atol=1e-5, rtol=1e-5)
    reference = _encode(load_text_encoder(comfyui_file))
    error = ((_encode(loaded) - reference).norm() / reference.norm()).item()
    # FP8 moves each weight ~3%; the tiny random encoder amplifies weight errors ~4x (measured 11.4%).
    print(f"fp8 output error {error:.4f}")
    assert error < 0.25, error


LLAMA_CPP_T5 = [("shared.", "token_embd."), ("encoder.final_layer_norm.", "enc.output_norm."),
                ("encoder.block.", "enc.blk."), (".layer.0.SelfAttention.relative_attention_bias.", ".attn_rel_b."),
                (".layer.0.SelfAttention.q.", ".attn_q."), (".layer.0.SelfAttention.k.", ".attn_k."),
                (".layer.0.SelfAttention.v.", ".attn_v."), (".layer.0.SelfAttention.o.", ".attn_o."),
                (".layer.0.layer_norm.", ".attn_norm."), (".layer.1.DenseReluDense.wi_0.", ".ffn_gate."),
                (".layer.1.DenseReluDense.wi_1.", ".ffn_up."), (".layer.1.DenseReluDense.wo.", ".ffn_down."),
                (".layer.1.layer_norm.", ".ffn_norm.")]


def _llama_cpp_t5_name(name: str) -> str:
    for old, new in LLAMA_CPP_T5:
        name = name.replace(old, new)
    return name


def _write_gguf(path, arch, tensors) -> dict:
    """Matrices (and the token table) as Q8_0, norms and the [32, heads] relative-position table as F32;
    returns the values the file stands for (float32, by name)."""
    import gguf

    q8_0 = gguf.GGMLQuantizationType.Q8_0
    writer = gguf.GGUFWriter(str(path), arch=arch)
    values = {}
    for name, value in tensors.items():
        array = value.numpy().astype(np.float32)
        if value.ndim == 2 and value.shape[1] % 32 == 0:
            blocks = gguf.quants.quantize(array, q8_0)
            writer.add_tensor(name, blocks, raw_dtype=q8_0)
            values[name] = torch.from_numpy(gguf.quants.dequantize(blocks, q8_0).copy())
        else:
            writer.add_tensor(name, array)
            values[name] = value.float()
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return values


@pytest.mark.parametrize("names", ["llama_cpp", "comfyui"])
@torch.no_grad()
def test_gguf_q8_0(state, comfyui_file, tmp_path, names):
    """A Q8_0 GGUF in llama.cpp's T5 names (architecture t5encoder; ComfyUI-GGUF maps them the same way)
    or in the single file's own names."""
    pytest.importorskip("gguf")
    tensors = {(_llama_cpp_t5_name(k) if names == "llama_cpp" else k): v for k, v in state.items()}
    path = tmp_path / f"byt5-{names}-Q8_0.gguf"
    values = _write_gguf(path, "t5encoder", tensors)
    loaded = load_text_encoder(path)
    assert (loaded.encoder_kind, loaded.layout) == ("byt5", names)
    assert isinstance(loaded.model.shared.weight, QuantizedTensor)
    assert isinstance(loaded.model.encoder.block[1].layer[1].DenseReluDense.wo.weight, QuantizedTensor)
    # Exact: a float32 file of the values the GGUF stands for computes the same.
    exact = write_safetensors({k: values[(_llama_cpp_t5_name(k) if names == "llama_cpp" else k)] for k in state},
                              tmp_path / "exact" / "byt5.safetensors")
    torch.testing.assert_close(_encode(loaded), _encode(load_text_encoder(exact)), atol=1e-5, rtol=1e-5)
    reference = _encode(load_text_encoder(comfyui_file))
    error = ((_encode(loaded) - reference).norm() / reference.norm()).item()
    print(f"Q8_0 output error {error:.4f}")
    assert error < 0.05, error  # Q8_0 moves each weight ~0.5%, amplified ~4x here (measured 1.9%)


def test_bad_files(state, tmp_path):
    # A T5-XXL-sized token table is T5, not ByT5: recognised, not run.
    t5 = dict(state)
    t5["shared.weight"] = torch.zeros(32128, TINY_BYT5.d_model)
    path = write_safetensors(t5, tmp_path / "t5xxl.safetensors")
    with pytest.raises(ModelFileError, match="holds a T5 text encoder, which this pack does not run yet"):
        read_text_encoder(path)
    # A tensor missing.
    broken = write_safetensors({k: v for k, v in state.items() if "block.1.layer.1.DenseReluDense.wo" not in k},
                               tmp_path / "broken.safetensors")
    with pytest.raises(ModelFileError, match="1 tensors are missing.*block.1.layer.1.DenseReluDense.wo"):
        read_text_encoder(broken)
    # A Qwen2.5-VL file where a ByT5 one is wanted (and the reverse).
    qwen = write_safetensors(tiny_qwen_text_state_dict(600), tmp_path / "qwen.safetensors")
    with pytest.raises(ModelFileError, match="holds a Qwen2.5-VL text encoder.*the ByT5 glyph text encoder is wanted here"):
        read_text_encoder(qwen, kinds=("byt5",))
    byt5_file = write_safetensors(state, tmp_path / "byt5.safetensors")
    with pytest.raises(ModelFileError, match="holds a ByT5 glyph text encoder.*Qwen2.5-VL text encoder is wanted here"):
        read_text_encoder(byt5_file, kinds=("qwen25_vl",))


def test_plain_byt5_small_has_no_markup(tmp_path):
    """google/byt5-small itself (384 tokens): loads, and its tokenizer has no Glyph-SDXL-v2 markup."""
    config = byt5.ByT5Config(vocab_size=384, d_model=64, d_kv=32, d_ff=128, num_layers=1, num_heads=2)
    path = write_safetensors(random_state_dict(byt5.build_encoder(config), 0), tmp_path / "byt5_small.safetensors")
    loaded = load_text_encoder(path)
    assert len(loaded.tokenizer) == 384 and loaded.tokenizer("<color-1>")["input_ids"][0] == ord("<") + 3


@pytest.mark.parametrize("qtype", ["Q8_0", "fp8_scaled"])
@torch.no_grad()
def test_the_converter_writes_loadable_byt5_files(state, comfyui_file, tmp_path, qtype):
    """`cli.py convert` on the ComfyUI file: the result loads as ByT5, quantized, close to the original
    (the relative-position table, 6 values wide, stays precise)."""
    pytest.importorskip("gguf")
    from comfyui_mmdit.tools.convert import convert

    target = tmp_path / ("byt5-Q8_0.gguf" if qtype == "Q8_0" else "byt5_fp8_scaled.safetensors")
    loaded = load_text_encoder(convert(comfyui_file, target, qtype))
    assert loaded.encoder_kind == "byt5"
    assert isinstance(loaded.model.encoder.block[0].layer[0].SelfAttention.q.weight, QuantizedTensor)
    bias = loaded.model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
    assert not isinstance(bias, QuantizedTensor)
    reference = _encode(load_text_encoder(comfyui_file))
    error = ((_encode(loaded) - reference).norm() / reference.norm()).item()
    print(f"converted {qtype}: output error {error:.4f}")
    assert error < {"Q8_0": 0.05, "fp8_scaled": 0.2}[qtype], error  # measured 1.9% and 8.7%
