"""HunyuanImage 2.1's text conditioning: quoted-text extraction and formatting, and encode_prompt parity
with diffusers' HunyuanImagePipeline (tiny random Qwen2.5-VL and ByT5), limits and missing encoders."""

import pytest
import torch

from comfyui_mmdit.loaders.text_encoder import load_text_encoder
from comfyui_mmdit.loaders.tokenizers import load_tokenizer
from comfyui_mmdit.model_defs.hunyuan_image import text as hunyuan_text
from comfyui_mmdit.model_defs.hunyuan_image.glyph import format_glyph_texts, glyph_prompt, quoted_texts
from comfyui_mmdit.model_defs.text_encoders import qwen25vl
from comfyui_mmdit.model_defs.text_encoders.byt5_tokenizer import with_glyph_markup
from comfyui_mmdit.tools.tiny_models import TINY_BYT5, random_state_dict, tiny_byt5_state_dict, write_safetensors
from comfyui_mmdit.tools.tiny_tokenizer import byt5_tokenizer, write_tiny_qwen_tokenizer

from helpers import comfyui_qwen25vl_names, transformers_qwen25vl

ATOL = 1e-5  # same weights, same ids, fp32: summation order only

PROMPTS = [
    "a watercolor painting of mountains at sunrise",
    'A neon sign that says "OPEN" above a door',
    "A poster with “新年快乐” in red and ‘福’ below, and the words 'Happy New Year'",
    "a cat's toy and a dog's bone",  # apostrophes: the official single-quote pattern matches between them
    "",
    'two lines "first\nsecond" and "third"',  # `.` stops at a line break: the pairs shift
    'empty quotes "" count',
]


# --- quoted text ----------------------------------------------------------------------------------------------
def _official_glyph_prompt(prompt: str):
    """The official code's steps (hyimage HunyuanImagePipeline._encode_glyph + MultilingualPromptFormat
    .format_prompt with no colour or font), restated: for a test against the official formula."""
    import re

    texts = []
    for pattern in (r'\'(.*?)\'', r'\"(.*?)\"', r'‘(.*?)’', r'“(.*?)”'):
        texts.extend(re.findall(pattern, prompt))
    if not texts:
        return None
    return "".join(f'Text "{text}". ' for text in texts)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_glyph_prompt_is_the_official_and_diffusers_one(prompt):
    from diffusers.pipelines.hunyuan_image.pipeline_hunyuanimage import extract_glyph_text

    assert glyph_prompt(prompt) == _official_glyph_prompt(prompt) == extract_glyph_text(prompt)


def test_glyph_prompt_examples():
    assert glyph_prompt(PROMPTS[0]) is None
    assert glyph_prompt(PROMPTS[1]) == 'Text "OPEN". '
    # By quote kind first (single, double, Chinese single, Chinese double), then by position.
    assert quoted_texts(PROMPTS[2]) == ["Happy New Year", "福", "新年快乐"]
    assert glyph_prompt(PROMPTS[3]) == 'Text "s toy and a dog". '
    assert quoted_texts(PROMPTS[5]) == [" and "]  # "first\nsecond" cannot match, so second" pairs with "third
    assert format_glyph_texts([]) is None and format_glyph_texts(["a", "b"]) == 'Text "a". Text "b". '


# --- encode_prompt parity ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("hunyuan_text")
    return root, write_tiny_qwen_tokenizer(root / "qwen_tokenizer")


@pytest.fixture(scope="module")
def pipeline(files):
    """diffusers' pipeline around a tiny random Qwen2.5-VL (4 layers, so the third-from-last hidden state
    is a layer's output) and a tiny random ByT5 with Glyph-SDXL-v2's 1510-token table."""
    from diffusers import HunyuanImagePipeline
    from transformers import T5Config, T5EncoderModel

    root, qwen_tokenizer_dir = files
    qwen_tokenizer = load_tokenizer(qwen_tokenizer_dir)
    qwen = transformers_qwen25vl(len(qwen_tokenizer), layers=4)
    qwen.load_state_dict(random_state_dict(qwen, seed=11, scale=0.1))
    c = TINY_BYT5
    t5 = T5EncoderModel(T5Config(vocab_size=c.vocab_size, d_model=c.d_model, d_kv=c.d_kv, d_ff=c.d_ff,
                                 num_layers=c.num_layers, num_heads=c.num_heads, feed_forward_proj="gated-gelu",
                                 is_encoder_decoder=False, use_cache=False, dropout_rate=0.0)).eval()
    t5.load_state_dict(tiny_byt5_state_dict(seed=12), strict=False)
    pipe = HunyuanImagePipeline(scheduler=None, vae=None, text_encoder=qwen, tokenizer=qwen_tokenizer,
                                text_encoder_2=t5, tokenizer_2=with_glyph_markup(byt5_tokenizer()), transformer=None)
    # The tiny tokenizer splits the template differently from Qwen2.5's (34 tokens, checked below).
    pipe.prompt_template_encode_start_idx = qwen25vl.template_prefix_tokens(qwen_tokenizer, hunyuan_text.PROMPT_TEMPLATE)
    return pipe


@pytest.fixture(scope="module")
def encoders(pipeline, files):
    """Our loaders on the same weights, written as ComfyUI's single files."""
    root, qwen_tokenizer_dir = files
    qwen_state = comfyui_qwen25vl_names(pipeline.text_encoder.state_dict(), language_model_only=True)
    qwen = load_text_encoder(write_safetensors(qwen_state, root / "qwen.safetensors"), tokenizer_path=qwen_tokenizer_dir)
    glyph = load_text_encoder(write_safetensors(tiny_byt5_state_dict(seed=12), root / "byt5.safetensors"))
    assert (qwen.encoder_kind, glyph.encoder_kind) == ("qwen25_vl", "byt5")
    return qwen, glyph


def _ours(encoders, prompts, **kwargs):
    qwen, glyph = encoders
    with torch.no_grad():
        return hunyuan_text.encode_hunyuan_image(qwen.model, qwen.tokenizer, glyph.model, glyph.tokenizer, prompts,
                                                 **kwargs)


BATCHES = [[p] for p in PROMPTS[:4]] + [[PROMPTS[0], PROMPTS[2]], [PROMPTS[1], PROMPTS[3]], [PROMPTS[0], PROMPTS[4]]]


@pytest.mark.parametrize("prompts", BATCHES, ids=lambda b: " | ".join(p[:16] for p in b))
@torch.no_grad()
def test_matches_diffusers_encode_prompt(pipeline, encoders, prompts):
    expected, expected_mask, expected_glyphs, expected_glyph_mask = pipeline.encode_prompt(
        prompts, device="cpu", batch_size=len(prompts))
    got = _ours(encoders, prompts)

    # Qwen2.5-VL: diffusers pads to 1000 tokens; ours stops at the longest prompt.
    mask = got["attention_mask"]
    length = mask.shape[1]
    assert mask.dtype == torch.bool and torch.equal(mask, expected_mask[:, :length].bool())
    assert not expected_mask[:, length:].any()
    assert got["context"].shape == (len(prompts), length, 128)
    valid = mask.unsqueeze(-1)
    error = ((got["context"] - expected[:, :length]) * valid).abs().max().item()
    print(f"Qwen2.5-VL states: max abs {error:.2e}")
    assert error <= ATOL
    assert not got["context"][~mask].any()  # padding is zeros

    # ByT5: diffusers pads to 128 (a prompt without quotes: 128 zeros, mask all false); ours gives None
    # when no prompt has quoted text, else the longest quoted text's tokens.
    if got["byt5"] is None:
        assert got["byt5_mask"] is None and not expected_glyph_mask.any()
        return
    glyph_mask = got["byt5_mask"]
    glyph_length = glyph_mask.shape[1]
    assert torch.equal(glyph_mask, expected_glyph_mask[:, :glyph_length].bool())
    assert not expected_glyph_mask[:, glyph_length:].any()
    error = ((got["byt5"] - expected_glyphs[:, :glyph_length]) * glyph_mask.unsqueeze(-1)).abs().max().item()
    print(f"ByT5 states: max abs {error:.2e}")
    assert error <= ATOL
    assert not got["byt5"][~glyph_mask].any()


@torch.no_grad()
def test_single_prompt_gives_only_real_tokens(encoders):
    got = _ours(encoders, [PROMPTS[1]])
    assert bool(got["attention_mask"].all()) and bool(got["byt5_mask"].all())
    assert got["byt5"].shape[:2] == (1, len(encoders[1].tokenizer('Text "OPEN". ')["input_ids"]))


@torch.no_grad()
def test_third_from_last_hidden_state(pipeline, encoders):
    """The state taken is transformers' hidden_states[-3] (layer N-2's output, before the final norm), not
    the last one: the two differ, and ours equals the former."""
    qwen, _ = encoders
    prompt = PROMPTS[0]
    states, _ = hunyuan_text.encode_qwen(qwen.model, qwen.tokenizer, [prompt])
    last, _ = qwen25vl.encode_prompts(qwen.model, qwen.tokenizer, [prompt], hunyuan_text.PROMPT_TEMPLATE,
                                      hunyuan_text.MAX_PROMPT_TOKENS)
    assert (states - last).abs().max() > 0.1
    ids = qwen.tokenizer(hunyuan_text.PROMPT_TEMPLATE.format(prompt), return_tensors="pt")["input_ids"]
    hidden = pipeline.text_encoder(input_ids=ids, output_hidden_states=True).hidden_states
    drop = qwen25vl.template_prefix_tokens(qwen.tokenizer, hunyuan_text.PROMPT_TEMPLATE)
    assert (states[0] - hidden[-3][0, drop:]).abs().max() <= ATOL


# --- limits and missing encoders ------------------------------------------------------------------------------
def test_prompt_too_long_is_refused(encoders):
    with pytest.raises(ValueError, match=r"tokens long after the template; the limit is 1000"):
        _ours(encoders, ["cat " * 1010])


def test_quoted_text_too_long_is_refused_before_qwen_runs(encoders):
    _, glyph = encoders
    prompt = 'a sign reading "' + "x" * 120 + '"'  # 'Text "...". ' is 129 bytes, 130 tokens with </s>
    with pytest.raises(ValueError, match=r"quoted text, formatted for the glyph encoder, is 130 tokens long.*"
                                         r"the limit is 128"):
        hunyuan_text.encode_hunyuan_image(None, None, glyph.model, glyph.tokenizer, [prompt])
    ok = 'a sign reading "' + "x" * 118 + '"'  # 128 tokens: fits exactly
    assert len(hunyuan_text.glyph_texts([ok], glyph.model, glyph.tokenizer)[0].encode()) == 127


def test_quoted_text_needs_the_glyph_encoder(encoders):
    qwen, _ = encoders
    with pytest.raises(ValueError, match="no ByT5 glyph encoder is loaded"):
        hunyuan_text.encode_hunyuan_image(qwen.model, qwen.tokenizer, None, None, [PROMPTS[1]])
    got = hunyuan_text.encode_hunyuan_image(qwen.model, qwen.tokenizer, None, None, [PROMPTS[0]])
    assert got["byt5"] is None and got["byt5_mask"] is None


@torch.no_grad()
def test_none_and_unpadded_glyphs_are_what_the_network_sees():
    """Why returning None (no quoted text) and unpadded ByT5 states is exact: in diffusers'
    HunyuanImageTransformer2DModel, 128 zero vectors with an all-false mask give the same output as no glyph
    tokens, and real tokens padded to 128 the same as the real tokens alone (masked keys add exactly 0)."""
    from diffusers import HunyuanImageTransformer2DModel

    torch.manual_seed(0)
    network = HunyuanImageTransformer2DModel(
        in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=16, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, text_embed_dim=32, text_embed_2_dim=24, rope_axes_dim=(8, 8)).eval()
    latent, timestep = torch.randn(1, 8, 4, 4), torch.tensor([500.0])
    context, mask = torch.randn(1, 6, 32), torch.ones(1, 6, dtype=torch.long)

    def run(glyphs, glyph_mask):
        return network(latent, timestep, context, mask, encoder_hidden_states_2=glyphs,
                       encoder_attention_mask_2=glyph_mask).sample

    none = run(None, None)
    zeros = run(torch.zeros(1, 128, 24), torch.zeros(1, 128, dtype=torch.long))
    assert (zeros - none).abs().max() <= ATOL
    glyphs = torch.randn(1, 10, 24)
    padded, padded_mask = torch.zeros(1, 128, 24), torch.zeros(1, 128, dtype=torch.long)
    padded[:, :10], padded_mask[:, :10] = glyphs, 1
    unpadded = run(glyphs, torch.ones(1, 10, dtype=torch.long))
    assert (run(padded, padded_mask) - unpadded).abs().max() <= ATOL
    assert (unpadded - none).abs().max() > 1e-3  # and the glyph tokens do matter
