"""The HunyuanImage 2.1 refiner VAE: real layouts, parity with diffusers' AutoencoderKLHunyuanImageRefiner
(ComfyUI's own module: tests/comfyui/test_comfyui_hunyuan_refiner_vae.py), its latent format, loading every
layout through MMDiTVAELoader, detection against the base VAE, damaged files, tiling."""

import json

import pytest
import torch
from safetensors.torch import save_file

from comfyui_mmdit.loaders.errors import ModelFileError
from comfyui_mmdit.loaders.keymaps.hunyuan_image_refiner_vae import (comfyui_to_network, diffusers_key_to_comfyui,
                                                                     diffusers_to_comfyui)
from comfyui_mmdit.loaders.vae import load_vae, read_vae
from comfyui_mmdit.model_defs.hunyuan_image.family import LATENT_FORMAT, REFINER_LATENT_FORMAT
from comfyui_mmdit.model_defs.hunyuan_image.refiner_vae import (HunyuanImageRefinerVAE, HunyuanImageRefinerVAEConfig,
                                                                refiner_vae_config_from_shapes)
from comfyui_mmdit.model_defs.vae_tiling import tile_spans
from comfyui_mmdit.tools.tiny_models import (TINY_HUNYUAN_REFINER_VAE, randomise_refiner_vae_,
                                             tiny_hunyuan_refiner_vae_state_dict, tiny_hunyuan_vae_state_dict,
                                             write_tiny_component)

from helpers import manifest, manifest_shapes

# fp32 on CPU, same weights. Differences are float rounding: the order of the three temporal taps' additions
# (we sum the taps' weights, diffusers sums their products in a 3-D conv) and of the attention's reductions.
# Measured at most 6.3e-6 (encode, latents up to ~4.3) and 1.5e-6 (decode, images of magnitude ~0.2); a
# posterior sample (values up to ~20) 2.2e-5, within rtol 1e-5. diffusers' own fp32 encode is 1.3e-5 away
# from a float64 run of itself where latents reach ~14 (full-gain residual branches), which is why the tiny
# weights keep the residual stream of order one (randomise_refiner_vae_).
PARITY_ATOL = 1e-5

# Tiny configs (diffusers kwargs), latent channels 32 (detection reads them). "real_shape": the released
# structure (five stages, 16x, the last two downsamplings and the first two upsamplings temporal, 2 residual
# blocks); "short": 8x with one temporal sampler on each side, one block per stage, samplers that keep the
# width (`*_match_channel=False`), so residual blocks change width through shortcut convs.
TINY_CONFIGS = {
    "real_shape": dict(block_out_channels=TINY_HUNYUAN_REFINER_VAE.block_out_channels, layers_per_block=2),
    "short": dict(block_out_channels=(32, 64, 64, 128), layers_per_block=1, spatial_compression_ratio=8,
                  temporal_compression_ratio=2, downsample_match_channel=False, upsample_match_channel=False),
}


def reference_vae(name: str, seed: int = 0):
    """diffusers' AutoencoderKLHunyuanImageRefiner at a tiny config, every weight random (seeded)."""
    from diffusers import AutoencoderKLHunyuanImageRefiner

    reference = AutoencoderKLHunyuanImageRefiner(latent_channels=32, **TINY_CONFIGS[name]).eval()
    randomise_refiner_vae_(reference, seed)
    return reference


def comfyui_state(reference) -> dict:
    """The reference's weights under the ComfyUI / Tencent names, through the key map."""
    state = reference.state_dict()
    return {name: state[key].detach().clone() for key, name in diffusers_to_comfyui(state).items()}


def build_ours(state: dict) -> HunyuanImageRefinerVAE:
    """Our VAE, configured from the shapes in `state` alone, holding `state`."""
    ours = HunyuanImageRefinerVAE(refiner_vae_config_from_shapes({k: t.shape for k, t in state.items()})).eval()
    ours.load_state_dict(state, strict=True)
    return ours


@pytest.fixture(scope="module")
def pairs():
    built = {}

    def pair(name):
        if name not in built:
            reference = reference_vae(name)
            built[name] = reference, build_ours(comfyui_state(reference))
        return built[name]

    return pair


@pytest.fixture(scope="module")
def tiny():
    """The tiny refiner VAE tools/tiny_models.py writes: its ComfyUI-named state and our module holding it."""
    state = tiny_hunyuan_refiner_vae_state_dict(seed=1)
    return state, build_ours(state)


# --- (1) real layouts ---------------------------------------------------------------------------------


def test_full_size_network_is_the_comfyui_and_tencent_file():
    shapes = manifest_shapes("hunyuanimage21_refiner_vae.comfyui")
    assert manifest_shapes("hunyuanimage21_refiner_vae.tencent") == shapes
    config = refiner_vae_config_from_shapes(shapes)
    assert config == HunyuanImageRefinerVAEConfig()  # (128, 256, 512, 1024, 1024), 32 channels, 16x / 4x
    vae = HunyuanImageRefinerVAE(config, device="meta")
    ours = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    assert list(ours.items()) == list(shapes.items())  # same names, shapes and order
    assert sum(v.numel() for v in vae.state_dict().values()) == manifest("hunyuanimage21_refiner_vae.comfyui")[
        "total_params"] == 1_260_634_115
    assert (vae.downscale, vae.latent_channels, vae.latent_dims) == (16, 32, 3)
    # The samplers the config calls temporal are those whose convs are half (down) / twice (up) as wide.
    assert [config.encoder_temporal(i) for i in range(4)] == [False, False, True, True]
    assert [config.decoder_temporal(i) for i in range(4)] == [True, True, False, False]


def test_key_map_renames_the_diffusers_file_into_the_comfyui_one():
    """Whole file (218 names, none collapsing, shapes equal, config equal) and every entry of the traced
    reference mapping (the diffusers conversion script)."""
    diffusers = manifest_shapes("hunyuanimage21_refiner_vae.diffusers")
    renamed = {new: diffusers[old] for old, new in diffusers_to_comfyui(diffusers).items()}
    assert len(renamed) == 218 and renamed == manifest_shapes("hunyuanimage21_refiner_vae.comfyui")

    reference = manifest("mapping.hunyuanimage21_refiner_vae.tencent_to_diffusers")["mapping"]
    assert {entry["op"] for entry in reference} == {"rename"} and len(reference) == 218
    assert {e["dst"]: e["src"] for e in reference if diffusers_key_to_comfyui(e["dst"]) != e["src"]} == {}

    config = manifest("hunyuanimage21_refiner_vae.diffusers")["config"]
    ours = refiner_vae_config_from_shapes(renamed)
    assert (list(ours.block_out_channels), ours.latent_channels, ours.num_res_blocks, ours.ffactor_spatial,
            ours.ffactor_temporal) == (config["block_out_channels"], config["latent_channels"],
                                       config["layers_per_block"], config["spatial_compression_ratio"],
                                       config["temporal_compression_ratio"])


def test_key_map_details():
    assert diffusers_key_to_comfyui("decoder.up_blocks.2.resnets.1.conv_shortcut.weight") == \
        "decoder.up.2.block.1.nin_shortcut.weight"
    assert diffusers_key_to_comfyui("encoder.mid_block.attentions.0.to_v.bias") == "encoder.mid.attn_1.v.bias"
    assert diffusers_key_to_comfyui("encoder.down_blocks.0.downsamplers.1.conv.conv.weight") == \
        "encoder.down_blocks.0.downsamplers.1.conv.conv.weight"  # a second sampler: unknown, left unchanged
    assert diffusers_key_to_comfyui("decoder.foo.weight") == "decoder.foo.weight"
    # ComfyUI's module builds a width-changing shortcut as a causal conv; the official name has no `.conv`.
    assert comfyui_to_network(["encoder.down.1.block.0.nin_shortcut.conv.weight", "encoder.conv_in.conv.bias"]) == {
        "encoder.down.1.block.0.nin_shortcut.conv.weight": "encoder.down.1.block.0.nin_shortcut.weight",
        "encoder.conv_in.conv.bias": "encoder.conv_in.conv.bias"}


def test_config_from_shapes_refuses_nonsense():
    shapes = manifest_shapes("hunyuanimage21_refiner_vae.comfyui")
    with pytest.raises(KeyError):
        refiner_vae_config_from_shapes({k: v for k, v in shapes.items() if k != "decoder.conv_in.conv.weight"})
    with pytest.raises(ValueError, match="residual blocks"):
        refiner_vae_config_from_shapes({k: v for k, v in shapes.items() if not k.startswith("encoder.down.3.block.1.")})
    with pytest.raises(ValueError, match="downsamplings after stages"):
        refiner_vae_config_from_shapes({k: v for k, v in shapes.items()
                                        if not k.startswith("encoder.down.1.downsample")})
    temporal_first = dict(shapes)
    temporal_first["encoder.down.0.downsample.conv.conv.weight"] = (32, 128, 3, 3, 3)  # 1/8 of 256: temporal
    with pytest.raises(ValueError, match="temporal samplers at encoder stages .0, 2, 3."):
        refiner_vae_config_from_shapes(temporal_first)
    odd = dict(shapes)
    odd["decoder.up.3.upsample.conv.conv.weight"] = (384, 256, 3, 3, 3)  # 3 rows per output channel
    with pytest.raises(ValueError, match="rows per output channel"):
        refiner_vae_config_from_shapes(odd)
    with pytest.raises(ValueError, match="multiple of 2 x 32"):
        HunyuanImageRefinerVAE(HunyuanImageRefinerVAEConfig(block_out_channels=(32, 32, 64, 64, 96)), device="meta")
    with pytest.raises(ValueError, match="exceeds"):
        HunyuanImageRefinerVAEConfig(ffactor_temporal=32).check()


def test_latent_format_is_the_official_one():
    """Scale 1.03682 (diffusers' config, ComfyUI's HunyuanImage21Refiner, no shift), [B, 32, 1, h, w] at 16x;
    the DiT's 64 channels pair a copy of the frame with it, as diffusers' refiner pipeline does."""
    from diffusers import HunyuanImageRefinerPipeline

    assert manifest("hunyuanimage21_refiner_vae.diffusers")["config"]["scaling_factor"] == REFINER_LATENT_FORMAT.scale
    assert (REFINER_LATENT_FORMAT.scale, REFINER_LATENT_FORMAT.channels, REFINER_LATENT_FORMAT.downscale,
            REFINER_LATENT_FORMAT.dims, REFINER_LATENT_FORMAT.mean) == (1.03682, 32, 16, 3, ())
    assert LATENT_FORMAT.scale == 0.75289  # the base family's format is untouched
    z = torch.randn(2, 32, 1, 3, 5)
    packed = HunyuanImageRefinerPipeline._reorder_image_tokens(z)
    assert torch.equal(packed, torch.cat([z, z], dim=1))
    assert torch.equal(HunyuanImageRefinerPipeline._restore_image_tokens_order(packed), packed[:, 32:])
    assert not any("scal" in name for name in HunyuanImageRefinerVAE(device="meta").state_dict())


# --- (2) parity with diffusers ------------------------------------------------------------------------


@pytest.mark.parametrize("config, height, width, batch", [("real_shape", 48, 80, 2), ("real_shape", 64, 64, 1),
                                                           ("real_shape", 112, 48, 2), ("short", 40, 56, 2)])
def test_encode_and_decode_match_diffusers(pairs, config, height, width, batch):
    reference, ours = pairs(config)
    scale = ours.downscale
    shape = (batch, 32, 1, height // scale, width // scale)
    generator = torch.Generator().manual_seed(height * width + batch)
    images = torch.rand(batch, 3, height, width, generator=generator) * 2 - 1
    latent = torch.randn(shape, generator=generator)
    with torch.no_grad():
        posterior = reference.encode(images[:, :, None]).latent_dist
        expected_mean = posterior.mode()
        expected_sample = posterior.sample(generator=torch.Generator().manual_seed(7))
        expected_images = reference.decode(latent).sample

    ours_mean = ours.encode(images)
    assert ours_mean.shape == expected_mean.shape == shape
    assert expected_mean.abs().max() > 1  # latents of order one: the bound is not loose by their scale
    torch.testing.assert_close(ours_mean, expected_mean, atol=PARITY_ATOL, rtol=0)
    torch.testing.assert_close(ours.encode(images[:, :, None]), ours_mean, atol=0, rtol=0)  # one frame, 5-D
    ours_sample = ours.encode(images, generator=torch.Generator().manual_seed(7))
    assert (ours_sample - ours_mean).abs().max() > 0.01  # the posterior's spread is visible
    # A sample multiplies the log-variance's rounding by its std (up to ~5 here): compared relative as well.
    torch.testing.assert_close(ours_sample, expected_sample, atol=PARITY_ATOL, rtol=1e-5)

    with torch.no_grad():
        raw = ours.decoder(latent[:, :, 0])
    assert expected_images.shape == (batch, 3, 1, height, width) and raw.shape == (batch, 3, height, width)
    assert (raw.abs() < 1).float().mean() > 0.9  # hardly clamped, so the comparison means something
    torch.testing.assert_close(raw, expected_images[:, :, 0], atol=PARITY_ATOL, rtol=0)
    torch.testing.assert_close(ours.decode(latent), expected_images[:, :, 0].clamp(-1, 1), atol=PARITY_ATOL, rtol=0)
    torch.testing.assert_close(ours.decode(latent[:, :, 0]), ours.decode(latent), atol=0, rtol=0)  # 4-D latent


def test_encode_centre_crops_to_multiples_of_16(tiny):
    vae = tiny[1]
    images = torch.rand(1, 3, 53, 70) * 2 - 1  # crops to 48 x 64 with offsets (2, 3)
    torch.testing.assert_close(vae.encode(images), vae.encode(images[:, :, 2:50, 3:67]), atol=0, rtol=0)
    with pytest.raises(ValueError, match="at least 16x16"):
        vae.encode(torch.zeros(1, 3, 15, 64))


def test_bad_inputs_are_clear_errors(tiny):
    vae = tiny[1]
    with pytest.raises(ValueError, match=r"latent of shape \[B, 32, 1, H, W\].*got shape \[1, 64, 4, 4\]"):
        vae.decode(torch.zeros(1, 64, 4, 4))  # a base-model latent
    with pytest.raises(ValueError, match=r"got shape \[1, 32, 2, 4, 4\]"):
        vae.decode(torch.zeros(1, 32, 2, 4, 4))  # two frames: a video latent
    with pytest.raises(ValueError, match="got shape"):
        vae.encode(torch.zeros(1, 3, 5, 64, 64))


# --- (3) loading every layout through the loader node, and telling the VAEs apart ----------------------


def _stored_bf16(state: dict) -> tuple[dict, HunyuanImageRefinerVAE]:
    """`state` as a bf16 file holds it, and our fp32 VAE holding exactly those rounded values."""
    stored = {k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}
    return stored, build_ours({k: v.float() for k, v in stored.items()})


def _assert_computes_like(module, expected, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for method, x in (("encode", torch.rand(2, 3, 48, 80, generator=generator) * 2 - 1),
                      ("decode", torch.randn(1, 32, 1, 3, 4, generator=generator))):
        torch.testing.assert_close(getattr(module, method)(x.to(torch.float32)), getattr(expected, method)(x),
                                   atol=1e-6, rtol=0)


@pytest.fixture
def node_host(tmp_path):
    from comfyui_mmdit.nodes.host import set_host
    from comfyui_mmdit.nodes.host.standalone import StandaloneHost

    (tmp_path / "vae").mkdir()
    host = StandaloneHost(models_dir=tmp_path, device="cpu")
    set_host(host)
    yield host
    set_host(None)


def test_loader_node_loads_every_layout(tiny, node_host):
    """ComfyUI's single file (bf16, Comfy-Org's name), diffusers' vae/ folder, and the official folder
    (`vae/vae_refiner/pytorch_model.pt`: {"state_dict": {"vae.<name>": ...}}) give the same network."""
    from comfyui_mmdit.nodes import NODE_CLASS_MAPPINGS as NODES

    comfy_state = tiny[0]
    stored, expected = _stored_bf16(comfy_state)
    folder = node_host.models_dir / "vae"
    save_file(stored, str(folder / "hunyuan_image_refiner_vae_fp16.safetensors"))

    diffusers_names = reference_vae("real_shape").state_dict()  # `tiny`'s weights under diffusers' names
    diffusers_folder = folder / "HunyuanImage-2.1-Refiner-Diffusers" / "vae"
    diffusers_folder.mkdir(parents=True)
    save_file({k: stored[diffusers_key_to_comfyui(k)] for k in diffusers_names},
              str(diffusers_folder / "diffusion_pytorch_model.safetensors"))
    (diffusers_folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLHunyuanImageRefiner"}))

    official_folder = folder / "vae_refiner"
    official_folder.mkdir()
    torch.save({"state_dict": {f"vae.{k}": v.to(torch.bfloat16) for k, v in comfy_state.items()}},
               official_folder / "pytorch_model.pt")
    (official_folder / "config.json").write_text("{}")

    cases = {"hunyuan_image_refiner_vae_fp16.safetensors": "comfyui",
             "HunyuanImage-2.1-Refiner-Diffusers/vae": "diffusers", "vae_refiner": "comfyui",
             "vae_refiner/pytorch_model.pt": "comfyui"}
    listed = node_host.folder_files("vae")
    for name, layout in cases.items():
        assert name in listed
        loader = NODES["MMDiTVAELoader"]
        assert loader.VALIDATE_INPUTS(name) is True
        handle, = loader().load(name)
        loaded = handle.loaded
        assert (loaded.family, loaded.layout, loaded.stored_dtype) == ("hunyuan_image_refiner", layout, torch.bfloat16)
        where = "diffusers" if layout == "diffusers" else "ComfyUI / official"
        assert loaded.description == f"HunyuanImage 2.1 refiner VAE ({where} layout)"
        assert loaded.config == TINY_HUNYUAN_REFINER_VAE
        _assert_computes_like(loaded.module, expected)


def test_encode_and_decode_nodes_carry_5d_latents(tiny, node_host):
    """MMDiTVAEEncode makes a [B, 32, 1, h, w] LATENT; MMDiTVAEDecode turns it back into an IMAGE, whole or
    tiled; the base VAE refuses it, and the refiner VAE refuses a base latent, naming the channels."""
    from comfyui_mmdit.nodes import NODE_CLASS_MAPPINGS as NODES

    save_file(tiny[0], str(node_host.models_dir / "vae" / "refiner_vae.safetensors"))
    save_file(tiny_hunyuan_vae_state_dict(), str(node_host.models_dir / "vae" / "hunyuan_image_2.1_vae.safetensors"))
    vae, = NODES["MMDiTVAELoader"]().load("refiner_vae.safetensors")
    base, = NODES["MMDiTVAELoader"]().load("hunyuan_image_2.1_vae.safetensors")
    pixels = torch.rand(2, 48, 80, 3, generator=torch.Generator().manual_seed(4))
    latent, = NODES["MMDiTVAEEncode"]().encode(pixels, vae, tiling="off")
    assert latent["samples"].shape == (2, 32, 1, 3, 5)
    torch.testing.assert_close(latent["samples"], tiny[1].encode(pixels.movedim(-1, 1) * 2 - 1), atol=1e-6, rtol=0)
    images, = NODES["MMDiTVAEDecode"]().decode(latent, vae, tiling="off")
    assert images.shape == (2, 48, 80, 3)
    expected = (tiny[1].decode(latent["samples"]).movedim(1, -1) + 1) / 2
    torch.testing.assert_close(images, expected, atol=1e-6, rtol=0)
    tiled, = NODES["MMDiTVAEDecode"]().decode(latent, vae, tiling="on", tile_size=128, tile_overlap=64)
    assert tiled.shape == images.shape

    with pytest.raises(ValueError, match="32 channels.*decodes 64-channel latents"):
        NODES["MMDiTVAEDecode"]().decode(latent, base)
    with pytest.raises(ValueError, match="64 channels.*refiner VAE .* decodes 32-channel latents"):
        NODES["MMDiTVAEDecode"]().decode({"samples": torch.zeros(1, 64, 2, 3)}, vae)


def test_detection_tells_the_refiner_vae_from_the_base_one(tiny, tmp_path):
    refiner = write_tiny_component("vae", tmp_path / "hunyuan_image_refiner_vae_fp16.safetensors")
    base = write_tiny_component("vae", tmp_path / "hunyuan_image_2.1_vae_fp16.safetensors")
    assert read_vae(refiner).identity.family == "hunyuan_image_refiner"
    assert read_vae(refiner).config == TINY_HUNYUAN_REFINER_VAE
    assert read_vae(base).identity.family == "hunyuan_image"
    # A 32-channel 3-D VAE under the official prefix in a full pickle is found there too.
    torch.save({"state_dict": {**{f"vae.{k}": v for k, v in tiny[0].items()}, "loss.logvar": torch.zeros(())}},
               tmp_path / "pytorch_model.pt")
    assert read_vae(tmp_path / "pytorch_model.pt").identity.prefix == "vae."


# --- (4) damaged files ------------------------------------------------------------------------------------


def test_truncated_or_damaged_files_are_refused(tiny, node_host):
    from comfyui_mmdit.nodes import NODE_CLASS_MAPPINGS as NODES

    folder = node_host.models_dir / "vae"
    whole = save_file(tiny[0], str(folder / "whole.safetensors")) or (folder / "whole.safetensors").read_bytes()
    (folder / "truncated.safetensors").write_bytes(whole[: len(whole) - 1000])
    (folder / "header_only.safetensors").write_bytes(whole[:200])
    torch.save({"state_dict": {f"vae.{k}": v for k, v in tiny[0].items()}}, folder / "official.pt")
    (folder / "truncated.pt").write_bytes((folder / "official.pt").read_bytes()[:5000])
    for name in ("truncated.safetensors", "header_only.safetensors", "truncated.pt"):
        message = NODES["MMDiTVAELoader"].VALIDATE_INPUTS(name)
        assert isinstance(message, str) and name in message, message
        with pytest.raises(ModelFileError):
            read_vae(folder / name)

    damaged = dict(tiny[0])
    del damaged["decoder.mid.attn_1.proj_out.bias"]
    damaged["decoder.mid.attn_1.q.weight"] = torch.zeros(128, 64, 1, 1, 1)
    save_file(damaged, str(folder / "damaged.safetensors"))
    with pytest.raises(ModelFileError) as error:
        load_vae(folder / "damaged.safetensors")
    message = str(error.value)
    assert "does not fit the HunyuanImage 2.1 refiner VAE" in message
    assert "1 tensors are missing" in message and "decoder.mid.attn_1.proj_out.bias" in message
    assert "decoder.mid.attn_1.q.weight with shape [128, 64, 1, 1, 1]" in message
    assert "decoder.mid.attn_1.q.weight with shape [128, 128, 1, 1, 1]" in message

    odd_sampler = dict(tiny[0])
    odd_sampler["encoder.down.2.downsample.conv.conv.weight"] = torch.zeros(24, 64, 3, 3, 3)  # 8 rows: temporal
    save_file(odd_sampler, str(folder / "odd_sampler.safetensors"))
    with pytest.raises(ModelFileError, match="looks like a HunyuanImage 2.1 refiner VAE .* but its configuration "
                                             "cannot be read from its tensors.*rows per output channel"):
        read_vae(folder / "odd_sampler.safetensors")


# --- (5) tiling ---------------------------------------------------------------------------------------


def test_tiled_decode_is_close_to_the_whole_decode(tiny):
    """Tiles of 8 latent cells (128 pixels) overlapping by 4 (2 rows, 3 columns of tiles) against the whole
    decode. Not exact: the RMS norms are per pixel, but the mid attention sees the whole tile and the
    decoder's receptive field is wider than a tile. Measured here (two seeds): max 0.21, mean 0.028
    against a mean |value| of 0.15 (18%); tiles cut hard, without the feathered blend, reach max 0.96
    (mean 0.044). Where tiles are blended the error is 1.17-1.19x the error elsewhere."""
    vae = tiny[1]
    latent = torch.randn(1, 32, 1, 12, 16, generator=torch.Generator().manual_seed(5))
    whole, tiled = vae.decode(latent), vae.decode_tiled(latent, tile=8, overlap=2)
    assert tiled.shape == whole.shape == (1, 3, 192, 256)
    difference = (tiled - whole).abs()
    assert difference.max() < 0.35 and difference.mean() < 0.25 * whole.abs().mean()
    for axis, spans in ((-1, tile_spans(16, 8, 2)), (-2, tile_spans(12, 8, 2))):
        per_position = difference.mean(dim=(1, -2) if axis == -1 else (1, -1)).flatten()
        band = torch.zeros(tiled.shape[axis], dtype=torch.bool)
        for (start, _), (_, end) in zip(spans[1:], spans[:-1]):
            band[16 * start:16 * end] = True
        assert per_position[band].mean() < 1.4 * per_position[~band].mean()


def test_single_tile_equals_untiled(tiny):
    vae = tiny[1]
    latent = torch.randn(2, 32, 1, 3, 5, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(vae.decode_tiled(latent, tile=8, overlap=2), vae.decode(latent), atol=1e-5, rtol=0)
    images = torch.rand(2, 3, 48, 80) * 2 - 1
    tiled = vae.encode_tiled(images, tile=8, overlap=2)
    assert tiled.shape == (2, 32, 1, 3, 5)
    torch.testing.assert_close(tiled, vae.encode(images), atol=1e-5, rtol=0)


def test_memory_estimates():
    """Seven full-resolution activations of the first width per pixel (plus the output), and the largest
    summed conv weight: the decoder's first upsampling keeps 4096 of its 8192 rows, 4096 x 1024 x 3 x 3
    in float32 (and its bf16 copy when run in bf16); the encoder's widest conv is 1024 x 1024 x 3 x 3."""
    vae = HunyuanImageRefinerVAE(device="meta")
    summed = 4096 * 1024 * 9
    assert vae.decode_memory((1, 32, 1, 64, 64), torch.float32) == 1024 * 1024 * (7 * 128 + 3) * 4 + summed * 4
    assert vae.decode_memory((2, 32, 64, 64), torch.bfloat16) == 2 * 1024 * 1024 * (7 * 128 + 3) * 2 + summed * 6
    assert vae.encode_memory((1, 3, 1024, 1024), torch.float32) == 1024 * 1024 * (7 * 128 + 3) * 4 + 1024 * 1024 * 9 * 4
