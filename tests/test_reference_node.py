"""MMDiTReferenceImages on tiny real files (standalone host): bad input is converted with a note or refused
with a clear message, each reference keeps its own size, the output latent follows the image the official
pipeline takes it from, and the conditioning carries what both hosts read (reference latents, the forced
reference method, the family marker) in the positive and the negative alike."""

from __future__ import annotations

import dataclasses
import logging
import math

import pytest
import torch

from comfyui_mmdit.model_defs import reference_images
from comfyui_mmdit.model_defs.families import FAMILIES
from comfyui_mmdit.model_defs.qwen_image import edit_text
from comfyui_mmdit.model_defs.spec import ReferenceModel, ReferenceSpec
from comfyui_mmdit.nodes import NODE_CLASS_MAPPINGS as NODES
from comfyui_mmdit.nodes.host import set_host
from comfyui_mmdit.nodes.host.standalone import StandaloneHost
from comfyui_mmdit.tools.tiny_models import write_tiny_component

from helpers import write_tiny_model_set

FROM_FILE = "Qwen-Image-Edit-2509 / 2511 (from the model file)"
EDIT_2511 = "Qwen-Image-Edit-2511"
EDIT_2509 = "Qwen-Image-Edit-2509"
EDIT = "Qwen-Image-Edit"
QWEN_TE = "qwen_2.5_vl_tiny.safetensors"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny Qwen-Image-Edit files, and HunyuanImage 2.1's (DiT, ByT5, VAE; its Qwen2.5-VL is the same file)."""
    root = write_tiny_model_set(tmp_path_factory.mktemp("models"), "qwen_image_edit_tiny.safetensors", QWEN_TE,
                                "qwen_image_vae_tiny.safetensors")
    write_tiny_component("diffusion_models", root / "diffusion_models" / "hunyuanimage2.1_tiny.safetensors")
    write_tiny_component("text_encoders", root / "text_encoders" / "byt5_small_glyphxl_tiny.safetensors")
    write_tiny_component("vae", root / "vae" / "hunyuan_image_2.1_vae_tiny.safetensors")
    set_host(StandaloneHost(models_dir=root, device="cpu"))
    yield root
    set_host(None)


@pytest.fixture(scope="module")
def qwen(models):
    encoder, = NODES["MMDiTTextEncoderLoader"]().load(QWEN_TE, "Qwen-Image")
    vae, = NODES["MMDiTVAELoader"]().load("qwen_image_vae_tiny.safetensors")
    return dict(encoder=encoder, vae=vae)


@pytest.fixture
def small_edit_vision_area(monkeypatch):
    """Qwen-Image-Edit (not 2509/2511) reads every image at about 1 megapixel in its vision path, seconds on
    the CPU even for the tiny tower; nothing tested with it here depends on that size, so it reads 384x384."""
    small = dataclasses.replace(edit_text.VARIANTS["edit"], vision_area=384 * 384)
    monkeypatch.setitem(edit_text.VARIANTS, "edit", small)


def image(height: int, width: int, batch: int = 1, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """A ComfyUI IMAGE [batch, height, width, channels] on 8-bit levels, as LoadImage gives it."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, height, width, channels, generator=g) * 255).round() / 255


def condition(qwen, img, model=EDIT_2509, resolution="native", prompt="make the sky red", negative=" ",
              encoder=None, vae=None, **more_images):
    return NODES["MMDiTReferenceImages"]().condition(encoder or qwen["encoder"], vae or qwen["vae"], img, prompt,
                                                     negative, model, resolution, **more_images)


def reference_shapes(conditioning) -> list[tuple[int, ...]]:
    return [tuple(latent.shape) for latent in conditioning[0][1]["reference_latents"]]


def assert_same_conditioning(a, b):
    """Two node outputs (positive, negative, latent) are identical: context, reference latents, extras."""
    for left, right in zip(a[:2], b[:2]):
        assert torch.equal(left[0][0], right[0][0])
        assert left[0][1].keys() == right[0][1].keys()
        for one, other in zip(left[0][1]["reference_latents"], right[0][1]["reference_latents"]):
            assert torch.equal(one, other)
    assert torch.equal(a[2]["samples"], b[2]["samples"])


def official_size(width: int, height: int, area: int = 1024 * 1024) -> tuple[int, int]:
    """The official pipelines' size rule written out: `area` pixels at the aspect ratio, sides rounded to
    multiples of 32."""
    ratio = width / height
    new_width = math.sqrt(area * ratio)
    return round(new_width / 32) * 32, round(new_width / ratio / 32) * 32


# --- how many images ----------------------------------------------------------------------------------------
def test_more_images_than_the_model_takes_are_refused(qwen):
    with pytest.raises(ValueError, match=r"Qwen-Image-Edit takes at most 1 reference image, got 2 "
                                         r"\(image, image_2\)"):
        condition(qwen, image(32, 32), model=EDIT, image_2=image(32, 48))
    for label in (EDIT_2509, FROM_FILE):  # a batch counts as that many images
        with pytest.raises(ValueError, match=r"takes at most 3 reference images, got 4 \(image\[0\], image\[1\], "
                                             r"image\[2\], image_2\)"):
            condition(qwen, image(32, 32, batch=3), model=label, image_2=image(32, 32))


# --- sizes ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("resolution", reference_images.POLICIES)
def test_an_image_smaller_than_one_latent_cell_is_refused(qwen, resolution):
    """8x40 pixels: the native policy would crop it to nothing, the official one blow it up 57 times to about a
    megapixel; both refuse it, naming the image's size and the smallest one."""
    with pytest.raises(ValueError, match=r"^image: an image of 40x8 pixels is smaller than one latent cell "
                                         r"\(16x16 pixels\)"):
        condition(qwen, image(8, 40), resolution=resolution)
    with pytest.raises(ValueError, match=r"^image_2: an image of 15x64 pixels is smaller than one latent cell"):
        condition(qwen, image(32, 32), resolution=resolution, image_2=image(64, 15))


def test_native_references_keep_their_own_sizes_and_the_output_follows_the_last(qwen):
    """Sockets of different sizes and a batch of two in one socket: each reference is its own image, centre-
    cropped to whole 16-pixel cells (70x50 -> 64x48, 97x143 -> 96x128); 2509/2511's output takes the last
    image's size."""
    positive, negative, latent = condition(qwen, image(50, 70, batch=2), image_2=image(143, 97, seed=1))
    assert reference_shapes(positive) == [(1, 16, 1, 6, 8), (1, 16, 1, 6, 8), (1, 16, 1, 16, 12)]
    assert tuple(latent["samples"].shape) == (1, 16, 16, 12)  # the last image's, neither the first nor the largest


def test_official_sizes_are_the_pipelines_and_each_reference_keeps_its_own(qwen):
    """The official policy: every image at the official size for its own aspect ratio. The rule itself is
    checked at its real area (1 megapixel) without running the VAE there; the node runs with a 128x128 area
    (seconds saved per image), which is all that changes."""
    spec = FAMILIES["qwen_image"]
    for width, height in ((70, 50), (97, 143), (3000, 2000), (1024, 1024)):
        assert spec.references.official_size(width, height) == official_size(width, height)
    assert official_size(70, 50) == (1216, 864) and official_size(97, 143) == (832, 1248)

    small = lambda width, height: official_size(width, height, 128 * 128)  # noqa: E731
    references = dataclasses.replace(spec.references, official_size=small)
    encoder = dataclasses.replace(qwen["encoder"], family=dataclasses.replace(spec, references=references))
    positive, _, latent = condition(qwen, image(50, 70, batch=2), image_2=image(143, 97, seed=1),
                                    resolution="official", encoder=encoder)
    assert small(70, 50) == (160, 96) and small(97, 143) == (96, 160)
    assert reference_shapes(positive) == [(1, 16, 1, 12, 20)] * 2 + [(1, 16, 1, 20, 12)]
    assert tuple(latent["samples"].shape) == (1, 16, 20, 12)  # the last image's


@pytest.mark.parametrize("resolution", reference_images.POLICIES)
def test_edit_output_follows_its_image(qwen, resolution, small_edit_vision_area):
    """Qwen-Image-Edit (one image): the output takes that image's size under either policy."""
    spec = FAMILIES["qwen_image"]
    small = lambda width, height: official_size(width, height, 128 * 128)  # noqa: E731
    encoder = dataclasses.replace(qwen["encoder"], family=dataclasses.replace(
        spec, references=dataclasses.replace(spec.references, official_size=small)))
    positive, _, latent = condition(qwen, image(50, 70), model=EDIT, resolution=resolution, encoder=encoder)
    expected = (6, 8) if resolution == "native" else (12, 20)
    assert reference_shapes(positive) == [(1, 16, 1) + expected]
    assert tuple(latent["samples"].shape) == (1, 16) + expected
    assert positive[0][1]["reference_latents_method"] == "index"  # Edit has no timestep-zero references


# --- channels and pixel values -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def grey_rgb(qwen):
    """A grey image as RGB (three equal channels) and the node's output for it."""
    rgb = image(32, 48)[..., :1].expand(-1, -1, -1, 3)
    return rgb, condition(qwen, rgb)


@pytest.mark.parametrize("kind", ["alpha", "grey", "grey with alpha"])
def test_channels_are_converted_with_a_note(qwen, grey_rgb, caplog, kind):
    """An alpha channel is dropped (as the official convert("RGB") drops it) and grey-scale is repeated to
    RGB, each with a note in the log; the result is exactly the RGB image's."""
    rgb, expected = grey_rgb
    alpha = image(32, 48, channels=1, seed=5)
    given = {"alpha": torch.cat([rgb, alpha], dim=-1), "grey": rgb[..., :1],
             "grey with alpha": torch.cat([rgb[..., :1], alpha], dim=-1)}[kind]
    with caplog.at_level(logging.INFO, logger="ComfyUI-MMDiT"):
        converted = condition(qwen, given)
    assert ("alpha" in caplog.text) == ("alpha" in kind), caplog.text
    assert ("grey-scale" in caplog.text) == ("grey" in kind), caplog.text
    assert_same_conditioning(converted, expected)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_pixels_are_refused(qwen, value):
    """A NaN image (a failed upstream node) is refused by name rather than encoded into a black picture or
    reported as the VAE's overflow."""
    bad = image(32, 32, batch=2)
    bad[1, 5, 7, 2] = value
    with pytest.raises(ValueError, match=r"image_2 has 1 NaN or infinite pixel value \(of 6144\)"):
        condition(qwen, image(32, 32), image_2=bad)
    with pytest.raises(ValueError, match="NaN or infinite"):
        reference_images.rgb_frames(bad[..., 2:3], "image")  # grey-scale
    with_alpha = torch.cat([image(32, 32), bad[1:, ..., 2:3]], dim=-1)  # the NaN in the alpha, which is dropped
    assert torch.isfinite(reference_images.rgb_frames(with_alpha, "image")[0][0]).all()


def test_an_image_that_is_not_an_image_is_refused():
    with pytest.raises(ValueError, match=r"image has 5 channels"):
        reference_images.rgb_frames(torch.zeros(1, 16, 16, 5), "image")
    with pytest.raises(ValueError, match=r"not an image"):
        reference_images.rgb_frames(torch.zeros(16, 16), "image")
    with pytest.raises(ValueError, match=r"empty batch"):
        reference_images.rgb_frames(torch.zeros(0, 16, 16, 3), "image")


# --- what the conditioning carries -------------------------------------------------------------------------
@pytest.mark.parametrize("label,method", [(FROM_FILE, None), (EDIT_2511, "index_timestep_zero"),
                                          (EDIT_2509, "index")])
def test_the_conditioning_carries_the_references_and_the_chosen_method(qwen, label, method):
    """The explicit 2511 / 2509 choices put their reference method in the conditioning (ComfyUI's
    reference_latents_method, which both hosts pass to the network); "from the model file" leaves it to the
    file. The negative conditioning carries the same reference latents (the official pipelines read the
    negative prompt with the same images), and both the family marker."""
    positive, negative, _ = condition(qwen, image(32, 48), model=label, image_2=image(48, 32, seed=1))
    for conditioning in (positive, negative):
        extras = conditioning[0][1]
        assert extras.get("reference_latents_method") == method
        assert ("reference_latents_method" in extras) == (method is not None)
        assert extras["mmdit_family"] == "qwen_image"
    assert reference_shapes(positive) == [(1, 16, 1, 4, 6), (1, 16, 1, 6, 4)]
    for one, other in zip(positive[0][1]["reference_latents"], negative[0][1]["reference_latents"], strict=True):
        assert torch.equal(one, other)
    assert not torch.equal(positive[0][0], negative[0][0])  # the prompts differ, the images not


def test_a_prompt_over_the_limit_is_refused(qwen):
    long = "a red fox in the snow, " * 300
    with pytest.raises(ValueError, match=r"the edit prompt is \d+ tokens long after the template; the limit is 1024"):
        condition(qwen, image(32, 32), prompt=long)
    with pytest.raises(ValueError, match=r"the limit is 1024"):
        condition(qwen, image(32, 32), negative=long)
    with pytest.raises(ValueError, match=r"unknown resolution 'full'; expected one of official, native"):
        condition(qwen, image(32, 32), resolution="full")


# --- families that do not fit -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hunyuan(models):
    encoder, = NODES["MMDiTTextEncoderLoader"]().load(QWEN_TE, "HunyuanImage 2.1",
                                                      "byt5_small_glyphxl_tiny.safetensors")
    vae, = NODES["MMDiTVAELoader"]().load("hunyuan_image_2.1_vae_tiny.safetensors")
    model, = NODES["MMDiTModelLoader"]().load("hunyuanimage2.1_tiny.safetensors")
    return dict(encoder=encoder, vae=vae, model=model)


def test_a_text_to_image_family_takes_no_reference_images(qwen, hunyuan):
    with pytest.raises(ValueError, match=r"HunyuanImage 2.1 takes no reference images \(its models are "
                                         r"text-to-image\); reference images work with Qwen-Image"):
        condition(qwen, image(32, 32), encoder=hunyuan["encoder"], vae=hunyuan["vae"])


def test_a_model_label_of_another_family_or_none_is_refused(qwen, monkeypatch):
    with pytest.raises(ValueError, match=r"model 'FLUX.2 \[dev\]' is not a model this pack knows, but the text "
                                         r"encoder is loaded for Qwen-Image; its edit models are: "
                                         r"Qwen-Image-Edit-2509 / 2511 \(from the model file\), "):
        condition(qwen, image(32, 32), model="FLUX.2 [dev]")
    other = dataclasses.replace(FAMILIES["hunyuan_image"], name="other_edit", display_name="OtherEdit",
                                references=ReferenceSpec(models=(ReferenceModel("OtherEdit-1", "edit", 4),),
                                                         encode=None, official_size=None, official_note=""))
    monkeypatch.setitem(FAMILIES, "other_edit", other)
    with pytest.raises(ValueError, match=r"model 'OtherEdit-1' is a OtherEdit model, but the text encoder is "
                                         r"loaded for Qwen-Image"):
        condition(qwen, image(32, 32), model="OtherEdit-1")


def test_a_vae_of_another_family_is_refused(qwen, hunyuan):
    with pytest.raises(ValueError, match=r"the VAE is .*HunyuanImage.*, but the text encoder is loaded for "
                                         r"Qwen-Image: load the Qwen-Image VAE"):
        condition(qwen, image(32, 32), vae=hunyuan["vae"])


def test_reference_latents_reaching_a_text_to_image_model_are_refused(qwen, hunyuan):
    """A HunyuanImage 2.1 prompt with reference latents added (as ComfyUI's ReferenceLatent node adds them):
    the sampler refuses it before sampling, and the standalone host's conditioning adapter, should anything
    reach it, refuses too; both say what to do instead."""
    positive, = NODES["MMDiTTextEncode"]().encode(hunyuan["encoder"], "a red fox")
    negative, = NODES["MMDiTTextEncode"]().encode(hunyuan["encoder"], " ")
    latent = torch.zeros(1, 64, 2, 2)
    positive = [[context, {**extras, "reference_latents": [latent]}] for context, extras in positive]
    with pytest.raises(ValueError, match=r"the positive conditioning holds 1 reference image, but HunyuanImage 2.1 "
                                         r"models take none \(they are text-to-image\)"):
        NODES["MMDiTSampler"]().sample(hunyuan["model"], positive, negative, {"samples": latent}, seed=0, steps=1,
                                       cfg=1.0)
    spec = FAMILIES["hunyuan_image"]
    with pytest.raises(ValueError, match=r"takes no reference images.*use .*edit"):
        spec.conditioning.reference_inputs(positive[0][1], spec.latent_format)


def test_native_size_far_above_the_trained_area_is_warned_about():
    from comfyui_mmdit.model_defs.qwen_image.references import official_size
    from comfyui_mmdit.model_defs.reference_images import large_size_warning

    assert large_size_warning(1024, 1024, official_size) is None
    assert large_size_warning(2048, 2048, official_size) is None  # 4x: still quiet
    warning = large_size_warning(4032, 3024, official_size)
    assert "11.5x the area the model was trained at (1184x896)" in warning
