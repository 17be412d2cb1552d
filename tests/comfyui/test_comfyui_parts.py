"""The real tokenizers ComfyUI ships against the families' template constants and our byte tokenizer, and
ComfyUI's own implementations of the families' parts against ours."""

import json
import subprocess
import sys
import textwrap
import warnings

from comfyui_mmdit.loaders.tokenizers import load_tokenizer
from comfyui_mmdit.model_defs.hunyuan_image import text as hunyuan_text
from comfyui_mmdit.model_defs.qwen_image.family import PROMPT_TEMPLATE, PROMPT_TEMPLATE_DROP
from comfyui_mmdit.model_defs.text_encoders import qwen25vl
from comfyui_mmdit.model_defs.text_encoders.byt5_tokenizer import ByteTokenizer, with_glyph_markup

from comfy_harness import require_comfyui
from helpers import ROOT
from test_byt5 import STRINGS
from test_hunyuan_vae import PARITY_ATOL


def test_qwen_image_edit_template_drops_the_official_64_tokens():
    from comfyui_mmdit.model_defs.qwen_image import edit_text

    tokenizer = load_tokenizer(require_comfyui() / "comfy" / "text_encoders" / "qwen25_tokenizer")
    assert edit_text.template_drop(tokenizer) == edit_text.TEMPLATE_DROP == 64


def test_real_tokenizer_template_prefix_is_34_tokens():
    tokenizer = load_tokenizer(require_comfyui() / "comfy" / "text_encoders" / "qwen25_tokenizer")
    assert qwen25vl.template_prefix_tokens(tokenizer, PROMPT_TEMPLATE) == PROMPT_TEMPLATE_DROP == 34


def test_hunyuan_image_template_prefix_is_34_tokens():
    tokenizer = load_tokenizer(require_comfyui() / "comfy" / "text_encoders" / "qwen25_tokenizer")
    assert qwen25vl.template_prefix_tokens(tokenizer, hunyuan_text.PROMPT_TEMPLATE) == hunyuan_text.PROMPT_TEMPLATE_DROP
    from diffusers import HunyuanImagePipeline

    pipe = HunyuanImagePipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                                tokenizer_2=None, transformer=None)
    assert (pipe.prompt_template_encode, pipe.prompt_template_encode_start_idx, pipe.tokenizer_max_length,
            pipe.tokenizer_2_max_length) == (hunyuan_text.PROMPT_TEMPLATE, hunyuan_text.PROMPT_TEMPLATE_DROP,
                                             hunyuan_text.MAX_PROMPT_TOKENS, hunyuan_text.GLYPH_MAX_TOKENS)


def test_byte_tokenizer_matches_the_folder_comfyui_ships():
    folder = require_comfyui() / "comfy" / "text_encoders" / "byt5_tokenizer"
    from transformers import AutoTokenizer

    comfy = AutoTokenizer.from_pretrained(str(folder))
    comfy_markup = with_glyph_markup(comfy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for text in STRINGS:
            assert ByteTokenizer(markup=False)(text)["input_ids"] == comfy(text)["input_ids"], text
            assert ByteTokenizer()(text)["input_ids"] == comfy_markup(text)["input_ids"], text


def test_hunyuan_image_vae_matches_comfyui_implementation():
    """ComfyUI's own Encoder/Decoder (comfy/ldm/hunyuan_video/vae.py), run in a child process so ComfyUI's
    modules stay out of this one; also covers the sampler widths diffusers cannot build (match_channel off)."""
    comfyui = str(require_comfyui())
    script = textwrap.dedent(f"""
        import sys, types, json
        package = types.ModuleType("comfyui_mmdit"); package.__path__ = [{str(ROOT)!r}]
        sys.modules["comfyui_mmdit"] = package
        sys.path[:0] = [{str(ROOT / ".cache" / "torchvision_shim")!r}, {comfyui!r}]
        sys.argv = [sys.argv[0]]
        import torch
        import comfy.cli_args
        comfy.cli_args.args.cpu = True
        import comfy.ldm.hunyuan_video.vae as comfy_vae
        from comfyui_mmdit.model_defs.hunyuan_image.vae import HunyuanImageVAE, vae_config_from_shapes
        from comfyui_mmdit.tools.tiny_models import randomise_vae_
        worst = 0.0
        for match in (True, False):
            config = dict(block_out_channels=[32, 32, 64, 64, 128, 128], in_channels=3, out_channels=3,
                          num_res_blocks=2, ffactor_spatial=32, downsample_match_channel=match,
                          upsample_match_channel=match, z_channels=64)
            halves = torch.nn.ModuleDict(dict(encoder=comfy_vae.Encoder(**config), decoder=comfy_vae.Decoder(**config)))
            randomise_vae_(halves, 0)
            state = halves.state_dict()
            ours = HunyuanImageVAE(vae_config_from_shapes({{k: v.shape for k, v in state.items()}}))
            ours.load_state_dict(state)
            generator = torch.Generator().manual_seed(1)
            images = torch.rand(2, 3, 64, 96, generator=generator) * 2 - 1
            latent = torch.randn(2, 64, 2, 3, generator=generator)
            with torch.no_grad():
                worst = max(worst, (ours.encode(images) - halves.encoder(images)[:, :64]).abs().max().item(),
                            (ours.decoder(latent) - halves.decoder(latent)).abs().max().item())
        print(json.dumps({{"max_abs": worst}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["max_abs"] <= PARITY_ATOL
