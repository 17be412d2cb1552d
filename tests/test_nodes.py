"""The nodes on the standalone host: sizes, settings, VAE nodes, image-to-image, errors, the command line."""

import json

import pytest
import torch

from comfyui_mmdit import cli
from comfyui_mmdit.model_defs.qwen_image import family
from comfyui_mmdit.nodes import NODE_CLASS_MAPPINGS as NODES
from comfyui_mmdit.nodes.host import set_host
from comfyui_mmdit.nodes.host.standalone import StandaloneHost
from comfyui_mmdit.nodes.sampler import schedule
from comfyui_mmdit.model_defs.families import QWEN_IMAGE
from comfyui_mmdit.tools.tiny_models import write_tiny_component

from helpers import ROOT, write_tiny_model_set

QWEN = family.DISPLAY_NAME


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = write_tiny_model_set(tmp_path_factory.mktemp("models"), "tiny.safetensors", "tiny.safetensors",
                                "tiny_vae.safetensors")
    set_host(StandaloneHost(models_dir=root, device="cpu"))
    yield root
    set_host(None)


@pytest.fixture(scope="module")
def loaded(models):
    model, = NODES["MMDiTModelLoader"]().load("tiny.safetensors")
    encoder, = NODES["MMDiTTextEncoderLoader"]().load("tiny.safetensors", QWEN)
    vae, = NODES["MMDiTVAELoader"]().load("tiny_vae.safetensors")
    positive, = NODES["MMDiTTextEncode"]().encode(encoder, "a red fox in the snow")
    negative, = NODES["MMDiTTextEncode"]().encode(encoder, " ")
    return dict(model=model, encoder=encoder, vae=vae, positive=positive, negative=negative)


@pytest.mark.parametrize("aspect,size", [("1:1", (1328, 1328)), ("16:9", (1664, 928)), ("4:3", (1472, 1136)),
                                         ("2:3", (1056, 1584))])
def test_empty_latent_presets(aspect, size):
    width, height = size  # 4:3 is 1472x1140 in the release notes; the pipeline rounds 1140 down to 1136
    latent, = NODES["MMDiTEmptyLatent"]().generate(QWEN, aspect, width, height, 2)
    assert latent["samples"].shape == (2, 16, height // 8, width // 8)


def test_empty_latent_never_makes_a_size_it_does_not_show():
    """A preset with other width/height values would show one size and make another: refused, saying how
    to fix it. The node's defaults are the default preset's size."""
    with pytest.raises(ValueError, match=r"16:9 makes 1664x928 .* width and height are 1328x1328"):
        NODES["MMDiTEmptyLatent"]().generate(QWEN, "16:9", 1328, 1328, 1)
    required = NODES["MMDiTEmptyLatent"].INPUT_TYPES()["required"]
    default_size = family.ASPECT_PRESETS[required["aspect"][1]["default"]]
    assert (required["width"][1]["default"], required["height"][1]["default"]) == default_size
    # The web extension reads the preset table from the node definition.
    assert required["aspect"][1]["mmdit_presets"][QWEN]["16:9"] == [1664, 928]


def test_empty_latent_custom_sizes_round_down_to_16():
    latent, = NODES["MMDiTEmptyLatent"]().generate(QWEN, "custom (width x height)", 1000, 721, 1)
    assert latent["samples"].shape == (1, 16, 720 // 8, 992 // 8)
    with pytest.raises(ValueError, match="at least 16x16"):
        NODES["MMDiTEmptyLatent"]().generate(QWEN, "custom (width x height)", 8, 64, 1)


def test_sampler_shows_the_values_it_uses():
    """No 0-means-default widgets: the defaults are the official values, and there is no shift widget that
    the official schedule would ignore (ComfyUI's schedulers take the MODEL's shift)."""
    required = NODES["MMDiTSampler"].INPUT_TYPES()["required"]
    assert required["steps"][1]["default"] == family.DEFAULT_STEPS == 50
    assert required["cfg"][1]["default"] == family.DEFAULT_CFG == 4.0
    assert required["steps"][1]["min"] >= 1 and required["cfg"][1]["min"] >= 1
    assert required["scheduler"][1]["default"] == "official"
    assert "shift" not in required


def test_official_and_host_schedules(models, loaded):
    host = StandaloneHost(models_dir=models, device="cpu")
    official = schedule(host, loaded["model"], QWEN_IMAGE, "official", 10, (1, 16, 128, 128), 1.0)
    assert len(official) == 11 and official[0] == 1 and official[-1] == 0
    assert abs(official[-2].item() - 0.02) < 1e-6  # the official terminal sigma
    # One step: pure noise to the image (the terminal stretch would divide 0 by 0 there: it is skipped).
    torch.testing.assert_close(schedule(host, loaded["model"], QWEN_IMAGE, "official", 1, (1, 16, 128, 128), 1.0),
                               torch.tensor([1.0, 0.0]))
    partial = schedule(host, loaded["model"], QWEN_IMAGE, "official", 10, (1, 16, 128, 128), 0.5)
    assert len(partial) == 11 and 0 < partial[0] < 1  # the tail of a 20-step schedule
    torch.testing.assert_close(partial, schedule(host, loaded["model"], QWEN_IMAGE, "official", 20,
                                                 (1, 16, 128, 128), 1.0)[-11:])
    # Outside ComfyUI, 'simple' is the linear grid under the family's common shift (3.1 for Qwen-Image).
    simple = schedule(host, loaded["model"], QWEN_IMAGE, "simple", 4, (1, 16, 128, 128), 1.0)
    grid = torch.tensor([1.0, 0.75, 0.5, 0.25])
    torch.testing.assert_close(simple[:-1], 3.1 * grid / (1 + 2.1 * grid))
    with pytest.raises(ValueError, match="needs ComfyUI"):
        host.scheduler_sigmas(loaded["model"], "karras", 10)


def test_conditioning_is_native(loaded):
    (context, extras), = loaded["positive"]
    assert context.shape[0] == 1 and context.shape[2] == 128 and context.dtype == torch.float32
    assert extras == {"mmdit_family": "qwen_image"}  # one prompt: no padding, no mask; the family it is for


def test_text_to_image_and_back(loaded):
    latent, = NODES["MMDiTEmptyLatent"]().generate(QWEN, "custom (width x height)", 80, 48, 2)
    samples, = NODES["MMDiTSampler"]().sample(loaded["model"], loaded["positive"], loaded["negative"], latent,
                                              seed=7, steps=2, cfg=3.0)
    assert samples["samples"].shape == (2, 16, 1, 6, 10)  # ComfyUI's layout for this family: [B, C, 1, h, w]
    images, = NODES["MMDiTVAEDecode"]().decode(samples, loaded["vae"], tiling="off")
    assert images.shape == (2, 48, 80, 3) and 0 <= images.min() and images.max() <= 1
    # Same seed, same result; another seed, another image.
    again, = NODES["MMDiTSampler"]().sample(loaded["model"], loaded["positive"], loaded["negative"], latent,
                                            seed=7, steps=2, cfg=3.0)
    other, = NODES["MMDiTSampler"]().sample(loaded["model"], loaded["positive"], loaded["negative"], latent,
                                            seed=8, steps=2, cfg=3.0)
    assert torch.equal(again["samples"], samples["samples"])
    assert not torch.allclose(other["samples"], samples["samples"])


def test_image_to_image_keeps_the_input_at_low_denoise(loaded):
    image = torch.rand(1, 50, 70, 4)  # odd size and an alpha channel, as a user's PNG may have
    latent, = NODES["MMDiTVAEEncode"]().encode(image, loaded["vae"], tiling="off")
    assert latent["samples"].shape == (1, 16, 1, 6, 8)  # centre-cropped to 48x64 before encoding
    def change(denoise):
        out, = NODES["MMDiTSampler"]().sample(loaded["model"], loaded["positive"], loaded["negative"], latent,
                                              seed=1, steps=2, cfg=1.0, denoise=denoise)
        return ((out["samples"] - latent["samples"]).abs().mean() / latent["samples"].abs().mean()).item()

    low, full = change(0.05), change(1.0)
    print(f"relative change: denoise 0.05 -> {low:.3f}, denoise 1.0 -> {full:.3f}")
    assert 0 < low < full / 3  # random weights: only the amount of change is meaningful


def test_tiled_decode_node_matches_whole_image(loaded):
    latent = {"samples": torch.randn(1, 16, 1, 40, 24)}
    whole, = NODES["MMDiTVAEDecode"]().decode(latent, loaded["vae"], tiling="off")
    tiled, = NODES["MMDiTVAEDecode"]().decode(latent, loaded["vae"], tiling="on", tile_size=128, tile_overlap=64)
    assert tiled.shape == whole.shape == (1, 320, 192, 3)
    assert (tiled - whole).abs().mean() < 0.02  # blended seams only


def test_wrong_latent_is_a_clear_error(loaded):
    flux_like = {"samples": torch.zeros(1, 4, 8, 8)}
    with pytest.raises(ValueError, match="latent has 4 channels but Qwen-Image works on 16-channel latents"):
        NODES["MMDiTSampler"]().sample(loaded["model"], loaded["positive"], loaded["negative"], flux_like, seed=0)
    with pytest.raises(ValueError, match="4 channels; the .* decodes 16-channel latents: load the VAE"):
        NODES["MMDiTVAEDecode"]().decode(flux_like, loaded["vae"])


def test_prompt_too_long(loaded):
    with pytest.raises(ValueError, match="limit is 1024"):
        NODES["MMDiTTextEncode"]().encode(loaded["encoder"], "word " * 1100)


def test_loader_lists_show_a_hint_when_folders_are_empty(tmp_path):
    set_host(StandaloneHost(models_dir=tmp_path, device="cpu"))
    try:
        names = NODES["MMDiTModelLoader"].INPUT_TYPES()["required"]["model_name"][0]
        assert names == ["(no files in models/diffusion_models)"]
    finally:
        set_host(None)


def _small_workflow(tmp_path):
    workflow = json.loads((ROOT / "workflows" / "api" / "qwen_image_t2i.api.json").read_text())
    workflow["5"]["inputs"].update(aspect="custom (width x height)", width=64, height=48)
    workflow["6"]["inputs"].update(steps=2)
    path = tmp_path / "small.api.json"
    path.write_text(json.dumps(workflow))
    return path


def test_command_line_demo_mode(tmp_path, capsys):
    (tmp_path / "empty").mkdir()  # an existing folder without model files (a missing folder is an error)
    code = cli.main(["run", str(_small_workflow(tmp_path)), "--models", str(tmp_path / "empty"),
                     "--output", str(tmp_path / "out"), "--demo-dir", str(tmp_path / "demo"), "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "PIPELINE CHECK, NOT A PICTURE" in printed
    from PIL import Image

    (png,) = (tmp_path / "out" / "MMDiT").glob("qwen_image_*.png")
    assert Image.open(png).size == (64, 48)


def test_command_line_names_missing_files(tmp_path, capsys):
    models = tmp_path / "models"
    write_tiny_component("vae", models / "vae" / "qwen_image_vae.safetensors")
    code = cli.main(["run", str(_small_workflow(tmp_path)), "--models", str(models), "--output", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "models/diffusion_models/qwen_image_bf16.safetensors" in err
    assert "models/text_encoders/qwen_2.5_vl_7b.safetensors" in err


def test_conditioning_encoded_for_another_family_is_refused(loaded):
    """Families can share an encoder file but not its template: the sampler names the mismatch."""
    (context, extras), = loaded["positive"]
    foreign = [[context, {**extras, "mmdit_family": "hunyuan_image"}]]
    latent, = NODES["MMDiTEmptyLatent"]().generate(QWEN, "custom (width x height)", 32, 32, 1)
    with pytest.raises(ValueError, match="encoded for HunyuanImage 2.1 .* but the model is Qwen-Image"):
        NODES["MMDiTSampler"]().sample(loaded["model"], foreign, loaded["negative"], latent, seed=1, steps=1, cfg=2.0)
