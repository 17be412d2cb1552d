"""The HunyuanImage 2.1 32x VAE: real layouts, parity with diffusers (and ComfyUI when present), loading
every layout (the official pickle too), detection against its neighbours, tiling, the decode node's choice."""

import json

import pytest
import torch
from safetensors.torch import save_file

from comfyui_mmdit.loaders.errors import ModelFileError
from comfyui_mmdit.loaders.keymaps.hunyuan_image_vae import (RELEASED, StageLayout, diffusers_key_to_comfyui,
                                                             diffusers_to_comfyui, stage_layouts)
from comfyui_mmdit.loaders.vae import load_vae, read_vae
from comfyui_mmdit.model_defs.hunyuan_image.vae import HunyuanImageVAE, HunyuanImageVAEConfig, vae_config_from_shapes
from comfyui_mmdit.model_defs.vae_tiling import tile_spans
from comfyui_mmdit.tools.tiny_models import randomise_vae_, tiny_qwen_vae_state_dict, write_tiny_component

from helpers import manifest, manifest_shapes

# fp32 on CPU, same weights: only the attention kernel's summation order differs (diffusers passes 3-D
# tensors to SDPA, we pass 4-D). Measured at most 1.4e-6 (encode, latents of magnitude ~2.5) and 2.4e-6
# (decode, images of magnitude ~0.5); ComfyUI 0.3.64 and 0.8.0: 2.4e-6 and 3.2e-6.
PARITY_ATOL = 1e-5

# Tiny configs (diffusers kwargs) with the real structure; latent channels stay 64 (detection reads them).
# "real_shape": six stages, five samplers (32x), 2 residual blocks; "short": a 4x VAE whose last two stages
# have no sampler, one residual block each (checks the stage bookkeeping of the key map and the config).
TINY_CONFIGS = {
    "real_shape": dict(block_out_channels=(32, 32, 64, 64, 128, 128), layers_per_block=2,
                       spatial_compression_ratio=32),
    "short": dict(block_out_channels=(32, 32, 128, 128), layers_per_block=1, spatial_compression_ratio=4),
}


def reference_vae(name: str, seed: int = 0):
    """diffusers' AutoencoderKLHunyuanImage at a tiny config, every weight random (seeded)."""
    from diffusers import AutoencoderKLHunyuanImage

    reference = AutoencoderKLHunyuanImage(in_channels=3, out_channels=3, latent_channels=64, sample_size=384,
                                          **TINY_CONFIGS[name]).eval()
    randomise_vae_(reference, seed)
    return reference


def comfyui_state(reference) -> dict:
    """The reference's weights under the ComfyUI / Tencent names, through the key map."""
    state = reference.state_dict()
    return {name: state[key].detach().clone() for key, name in diffusers_to_comfyui(state).items()}


def build_ours(state: dict) -> HunyuanImageVAE:
    """Our VAE, configured from the shapes in `state` alone, holding `state`."""
    ours = HunyuanImageVAE(vae_config_from_shapes({name: t.shape for name, t in state.items()})).eval()
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
def tiny_state():
    """ComfyUI-named and diffusers-named state dicts of one tiny 32x VAE, and the VAE itself (ours)."""
    reference = reference_vae("real_shape", seed=1)
    comfy_state = comfyui_state(reference)
    return comfy_state, {k: v.detach().clone() for k, v in reference.state_dict().items()}, build_ours(comfy_state)


# --- (1) real layouts ---------------------------------------------------------------------------------


def test_full_size_network_is_the_comfyui_and_tencent_file():
    shapes = manifest_shapes("hunyuanimage21_vae32x.comfyui")
    assert manifest_shapes("hunyuanimage21_vae32x.tencent") == shapes
    config = vae_config_from_shapes(shapes)
    assert config == HunyuanImageVAEConfig()  # (128, 256, 512, 512, 1024, 1024), 64 channels, 2 blocks, 32x
    vae = HunyuanImageVAE(config, device="meta")
    ours = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    assert list(ours.items()) == list(shapes.items())  # same names, shapes and order
    assert sum(v.numel() for v in vae.state_dict().values()) == manifest("hunyuanimage21_vae32x.comfyui")[
        "total_params"] == 405_575_491
    assert (vae.downscale, vae.latent_channels) == (32, 64)


def test_scaling_factor_is_left_to_the_latent_format():
    """diffusers' config and ComfyUI's latent format agree on 0.75289; the module never applies it."""
    assert manifest("hunyuanimage21_vae32x.diffusers")["config"]["scaling_factor"] == 0.75289
    assert not any("scal" in name for name in HunyuanImageVAE(device="meta").state_dict())


def test_key_map_renames_the_diffusers_file_into_the_comfyui_one():
    """Whole file (324 names, none collapsing, shapes equal) and every entry of the traced reference mapping."""
    diffusers = manifest_shapes("hunyuanimage21_vae32x.diffusers")
    assert stage_layouts(diffusers) == RELEASED
    renamed = {new: diffusers[old] for old, new in diffusers_to_comfyui(diffusers).items()}
    assert len(renamed) == 324 and renamed == manifest_shapes("hunyuanimage21_vae32x.comfyui")

    reference = manifest("mapping.hunyuanimage21_vae32x.tencent_to_diffusers")["mapping"]
    assert {entry["op"] for entry in reference} == {"rename"} and len(reference) == 324
    disagreeing = {e["dst"]: e["src"] for e in reference if diffusers_key_to_comfyui(e["dst"]) != e["src"]}
    assert disagreeing == {}


def test_stage_layout_places_sampler_less_stages_after_the_others():
    layout = StageLayout(resnets=2, samplers=1)  # stage 0: 2 resnets + sampler; stages 1, 2: 2 resnets
    assert [layout.locate(i) for i in range(7)] == [(0, 0), (0, 1), (0, None), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert diffusers_key_to_comfyui("encoder.down_blocks.0.conv_shortcut.weight") == \
        "encoder.down.0.block.0.nin_shortcut.weight"
    assert diffusers_key_to_comfyui("decoder.foo.weight") == "decoder.foo.weight"  # unknown: unchanged


def test_config_from_shapes_refuses_nonsense():
    shapes = manifest_shapes("hunyuanimage21_vae32x.comfyui")
    with pytest.raises(KeyError):
        vae_config_from_shapes({k: v for k, v in shapes.items() if k != "decoder.conv_in.weight"})
    with pytest.raises(ValueError, match="residual blocks"):
        vae_config_from_shapes({k: v for k, v in shapes.items() if not k.startswith("encoder.down.3.block.1.")})
    with pytest.raises(ValueError, match="downsamplings after stages"):
        vae_config_from_shapes({k: v for k, v in shapes.items() if not k.startswith("encoder.down.1.downsample")})
    with pytest.raises(ValueError, match="normalisation groups"):
        HunyuanImageVAE(HunyuanImageVAEConfig(block_out_channels=(48, 64, 64, 128, 128, 128)), device="meta")


# --- (2) parity with diffusers ------------------------------------------------------------------------


@pytest.mark.parametrize("config, height, width, batch", [("real_shape", 64, 64, 1), ("real_shape", 64, 96, 2),
                                                           ("real_shape", 128, 96, 2), ("short", 32, 48, 2)])
def test_encode_and_decode_match_diffusers(pairs, config, height, width, batch):
    reference, ours = pairs(config)
    scale = ours.downscale
    generator = torch.Generator().manual_seed(height * width + batch)
    images = torch.rand(batch, 3, height, width, generator=generator) * 2 - 1
    latent = torch.randn(batch, 64, height // scale, width // scale, generator=generator)
    with torch.no_grad():
        expected_latent = reference.encode(images).latent_dist.mode()
        expected_images = reference.decode(latent).sample

    ours_latent = ours.encode(images)
    assert ours_latent.shape == expected_latent.shape == (batch, 64, height // scale, width // scale)
    torch.testing.assert_close(ours_latent, expected_latent, atol=PARITY_ATOL, rtol=0)
    torch.testing.assert_close(ours.encode(images[:, :, None]), ours_latent, atol=0, rtol=0)  # one frame, 5-D

    with torch.no_grad():
        raw = ours.decoder(latent)
    assert raw.shape == expected_images.shape == (batch, 3, height, width)
    assert (raw.abs() < 1).float().mean() > 0.9  # hardly clamped, so the comparison means something
    torch.testing.assert_close(raw, expected_images, atol=PARITY_ATOL, rtol=0)
    torch.testing.assert_close(ours.decode(latent), expected_images.clamp(-1, 1), atol=PARITY_ATOL, rtol=0)
    torch.testing.assert_close(ours.decode(latent[:, :, None]), ours.decode(latent), atol=0, rtol=0)


def test_encode_centre_crops_to_multiples_of_32_like_comfyui(tiny_state):
    vae = tiny_state[2]
    images = torch.rand(1, 3, 70, 101) * 2 - 1  # crops to 64 x 96 with offsets (3, 2)
    torch.testing.assert_close(vae.encode(images), vae.encode(images[:, :, 3:67, 2:98]), atol=0, rtol=0)
    with pytest.raises(ValueError, match="at least 32x32"):
        vae.encode(torch.zeros(1, 3, 31, 64))


# --- (3) loading every layout, and telling the VAEs apart ----------------------------------------------


def _stored_bf16(state: dict) -> tuple[dict, HunyuanImageVAE]:
    """`state` as a bf16 file holds it, and our fp32 VAE holding exactly those rounded values (what the
    file must compute when run in fp32)."""
    stored = {k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}
    return stored, build_ours({k: v.float() for k, v in stored.items()})


def _assert_computes_like(loaded, expected, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for method, x in (("encode", torch.rand(2, 3, 64, 96, generator=generator) * 2 - 1),
                      ("decode", torch.randn(1, 64, 2, 3, generator=generator))):
        torch.testing.assert_close(getattr(loaded, method)(x), getattr(expected, method)(x), atol=1e-6, rtol=0)


def test_load_comfyui_file_bf16_computes_in_fp32(tiny_state, tmp_path):
    comfy_state = tiny_state[0]
    stored, expected = _stored_bf16(comfy_state)
    path = tmp_path / "hunyuan_image_2.1_vae_fp16.safetensors"
    save_file(stored, str(path))
    loaded = load_vae(path)
    assert (loaded.family, loaded.layout, loaded.stored_dtype) == ("hunyuan_image", "comfyui", torch.bfloat16)
    assert loaded.description == "HunyuanImage 2.1 VAE (ComfyUI / official layout)"
    assert loaded.config == vae_config_from_shapes({k: v.shape for k, v in comfy_state.items()})
    assert {p.dtype for p in loaded.module.parameters()} == {torch.bfloat16}  # kept as stored
    _assert_computes_like(loaded.module, expected)


def test_load_diffusers_vae_folder(tiny_state, tmp_path):
    comfy_state, diffusers_state, _ = tiny_state
    folder = tmp_path / "HunyuanImage-2.1-Diffusers" / "vae"
    folder.mkdir(parents=True)
    save_file({k: v.to(torch.bfloat16) for k, v in diffusers_state.items()},
              str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLHunyuanImage"}))
    expected = _stored_bf16(comfy_state)[1]
    for location in (folder, folder.parent):
        loaded = load_vae(location, dtype=torch.float32)
        assert (loaded.family, loaded.layout) == ("hunyuan_image", "diffusers")
        _assert_computes_like(loaded.module, expected)


def test_load_official_pickle_with_vae_prefix_and_5d_convs(tiny_state, tmp_path):
    """The official `vae_2_1/pytorch_model.ckpt`: {"state_dict": {"vae.<name>": ...}}, conv weights possibly
    stored as [O, I, 1, kh, kw] (the official loader squeezes them); other entries are left alone."""
    comfy_state = tiny_state[0]
    stored = {f"vae.{k}": (v.unsqueeze(2) if v.ndim == 4 else v).clone() for k, v in comfy_state.items()}
    stored["loss.logvar"] = torch.zeros(())
    folder = tmp_path / "vae_2_1"
    folder.mkdir()
    torch.save({"state_dict": stored, "global_step": 1000}, folder / "pytorch_model.ckpt")
    (folder / "config.json").write_text("{}")
    expected = build_ours(comfy_state)
    for location in (folder / "pytorch_model.ckpt", folder):
        loaded = load_vae(location)
        assert (loaded.family, loaded.layout) == ("hunyuan_image", "comfyui")
        assert loaded.module.decoder.conv_in.weight.shape == (128, 64, 3, 3)
        _assert_computes_like(loaded.module, expected)


def _marker_file(path, shapes: dict):
    save_file({k: torch.zeros(s) for k, s in shapes.items()}, str(path))
    return path


def test_detection_tells_the_vaes_apart(tiny_state, tmp_path):
    qwen = tmp_path / "qwen_image_vae.safetensors"
    save_file(tiny_qwen_vae_state_dict(), str(qwen))
    hunyuan = tmp_path / "hunyuan_image_2.1_vae.safetensors"
    save_file(tiny_state[0], str(hunyuan))
    assert read_vae(qwen).identity.family == "qwen_image"
    assert read_vae(hunyuan).identity.family == "hunyuan_image"

    # The refiner's 3-D VAE is its own family (tests/test_hunyuan_refiner_vae.py).
    refiner = write_tiny_component("vae", tmp_path / "hunyuan_image_refiner_vae_fp16.safetensors")
    assert read_vae(refiner).identity.family == "hunyuan_image_refiner"
    flux2 = _marker_file(tmp_path / "flux2-vae.safetensors", {
        "bn.running_mean": (128,), "decoder.conv_in.weight": (16, 32, 3, 3), "encoder.conv_in.weight": (16, 3, 3, 3),
        "decoder.up.1.upsample.conv.weight": (16, 16, 3, 3)})
    with pytest.raises(ModelFileError, match="holds a FLUX.2 VAE"):
        read_vae(flux2)


def test_wrong_shapes_are_named(tiny_state, tmp_path):
    state = dict(tiny_state[0])
    del state["encoder.mid.attn_1.proj_out.bias"]
    state["decoder.mid.attn_1.q.weight"] = torch.zeros(128, 64, 1, 1)
    path = tmp_path / "vae_damaged.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelFileError) as error:
        load_vae(path)
    message = str(error.value)
    assert "1 tensors are missing" in message and "encoder.mid.attn_1.proj_out.bias" in message
    assert "decoder.mid.attn_1.q.weight with shape [128, 64, 1, 1]" in message
    assert "decoder.mid.attn_1.q.weight with shape [128, 128, 1, 1]" in message


def test_bad_inputs_are_clear_errors(tiny_state):
    vae = tiny_state[2]
    with pytest.raises(ValueError, match=r"latent of shape \[B, 64, H, W\].*got shape \[1, 16, 1, 4, 4\]"):
        vae.decode(torch.zeros(1, 16, 1, 4, 4))  # a Qwen-Image latent
    with pytest.raises(ValueError, match="got shape"):
        vae.encode(torch.zeros(1, 3, 5, 64, 64))  # five frames


# --- (4) tiling ---------------------------------------------------------------------------------------


def _blend_bands(spans, size: int) -> torch.Tensor:
    """Output positions (32 per latent cell) where two tiles overlap and are blended."""
    band = torch.zeros(size, dtype=torch.bool)
    for (start, _), (_, end) in zip(spans[1:], spans[:-1]):
        band[32 * start:32 * end] = True
    return band


def test_tiled_decode_is_close_to_the_whole_decode(tiny_state):
    """Tiles of 8 latent cells overlapping by 2 (2 rows, 3 columns of tiles) against the whole decode.

    No tiled decode of this VAE is exact: its GroupNorms and mid attention see the whole tile, and its
    receptive field (about 19 latent cells) is wider than a tile. Measured here: max 0.37, mean 0.039
    against a mean |value| of 0.17. Where tiles are blended each tile is nearest its own edge, so the
    error there is a little larger: 1.33x (columns) and 1.34x (rows) the error where one tile covers
    (1.46x / 1.44x with hard cuts instead of feathering, which the 1.4x bound refuses); within 4 pixels of
    a tile edge 1.06x / 1.09x.
    """
    vae = tiny_state[2]
    latent = torch.randn(1, 64, 12, 16, generator=torch.Generator().manual_seed(5))
    whole, tiled = vae.decode(latent), vae.decode_tiled(latent, tile=8, overlap=2)
    assert tiled.shape == whole.shape == (1, 3, 384, 512)
    difference = (tiled - whole).abs()
    assert difference.max() < 0.5 and difference.mean() < 0.3 * whole.abs().mean()

    for axis, spans in ((-1, tile_spans(16, 8, 2)), (-2, tile_spans(12, 8, 2))):
        per_position = difference.mean(dim=(1, -2) if axis == -1 else (1, -1)).flatten()
        band = _blend_bands(spans, tiled.shape[axis])
        assert per_position[band].mean() < 1.4 * per_position[~band].mean()
        near_edges = torch.zeros_like(band)
        for edge in {32 * end for _, end in spans[:-1]} | {32 * start for start, _ in spans[1:]}:
            near_edges[edge - 4:edge + 4] = True
        assert per_position[near_edges].mean() < 1.25 * per_position[~near_edges].mean()


class _TileNormalisingStandIn(torch.nn.Module):
    """Stands in for the decoder: each tile is shifted by its own mean, as a GroupNorm shifts a tile by its
    own statistics, then upsampled 32x. Neighbouring tiles therefore disagree by a constant."""

    def forward(self, latent):
        shifted = latent[:, :3] - latent[:, :3].mean(dim=(-2, -1), keepdim=True)
        return shifted.repeat_interleave(32, -1).repeat_interleave(32, -2)


def test_tiles_that_disagree_blend_without_a_step(tiny_state):
    """On a smooth latent (a ramp) the stand-in's tiles disagree by 0.25; a hard cut would show that as a
    step of 0.25 + 0.0625. The feathered blend spreads it over the 64-pixel overlap: no step between
    neighbouring pixels exceeds the whole image's own largest step (the ramp's 0.0625 per cell) by more
    than 0.25 / 64 per pixel, plus rounding."""
    vae = build_ours(tiny_state[0])
    vae.decoder = _TileNormalisingStandIn()
    rows, cols = torch.meshgrid(torch.arange(12.0), torch.arange(16.0), indexing="ij")
    latent = ((rows + cols) / 16).expand(1, 64, 12, 16)
    whole, tiled = vae.decode(latent), vae.decode_tiled(latent, tile=8, overlap=2)
    for axis in (-1, -2):
        largest_whole_step = whole.diff(dim=axis).abs().max()
        assert largest_whole_step == pytest.approx(1 / 16)
        assert tiled.diff(dim=axis).abs().max() <= largest_whole_step + 0.25 / 64 + 1e-5


def test_single_tile_equals_untiled(tiny_state):
    vae = tiny_state[2]
    latent = torch.randn(2, 64, 3, 5, generator=torch.Generator().manual_seed(2))
    # Not bit-exact only because tiles run one sample at a time (other conv kernels than for batch 2).
    torch.testing.assert_close(vae.decode_tiled(latent, tile=8, overlap=2), vae.decode(latent), atol=1e-5, rtol=0)
    images = torch.rand(2, 3, 64, 96) * 2 - 1
    encoded = vae.encode(images)  # latents of magnitude ~2.5 here: the same relative tolerance
    torch.testing.assert_close(vae.encode_tiled(images, tile=8, overlap=2), encoded, atol=3e-5, rtol=0)


class _UpsamplingStandIn(torch.nn.Module):
    """Stands in for the decoder in the 2048x2048 test: records what it is handed, upsamples 32x."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, latent):
        self.seen.append(tuple(latent.shape))
        return latent[:, :3].repeat_interleave(32, -1).repeat_interleave(32, -2).tanh()


def test_tiled_2048_decode_never_hands_the_decoder_more_than_a_tile(tiny_state):
    vae = build_ours(tiny_state[0])
    vae.decoder = _UpsamplingStandIn()
    latent = torch.randn(1, 64, 64, 64)  # 2048 x 2048 pixels
    done = []
    images = vae.decode_tiled(latent, progress=lambda i, n: done.append((i, n)))  # defaults: 16 / 4 cells
    assert images.shape == (1, 3, 2048, 2048)
    assert len(vae.decoder.seen) == 25 and all(shape == (1, 64, 16, 16) for shape in vae.decoder.seen)
    assert done[-1] == (25, 25)
    torch.testing.assert_close(images, vae.decoder(latent).clamp(-1, 1), atol=1e-6, rtol=0)  # pixel-local: exact


def test_decode_node_tiles_when_the_whole_image_would_not_fit(tiny_state, tmp_path, monkeypatch):
    from comfyui_mmdit.nodes import NODE_CLASS_MAPPINGS as NODES
    from comfyui_mmdit.nodes.host import set_host
    from comfyui_mmdit.nodes.host.standalone import StandaloneHost

    (tmp_path / "vae").mkdir()
    save_file(tiny_state[0], str(tmp_path / "vae" / "hunyuan_vae.safetensors"))
    host = StandaloneHost(models_dir=tmp_path, device="cpu")
    set_host(host)
    try:
        vae, = NODES["MMDiTVAELoader"]().load("hunyuan_vae.safetensors")
        latent = {"samples": torch.randn(1, 64, 6, 4)}  # 192 x 128 pixels
        needed = vae.module.decode_memory((1, 64, 6, 4), torch.float32)
        assert needed == 192 * 128 * (6 * 32 + 3) * 4
        calls = []
        original = vae.module.decode_tiled
        monkeypatch.setattr(vae.module, "decode_tiled", lambda *a, **k: calls.append(k) or original(*a, **k))

        monkeypatch.setattr(host, "free_memory", lambda device: 100 * needed)
        whole, = NODES["MMDiTVAEDecode"]().decode(latent, vae)
        assert calls == [] and whole.shape == (1, 192, 128, 3)

        monkeypatch.setattr(host, "free_memory", lambda device: needed // 2)
        tiled, = NODES["MMDiTVAEDecode"]().decode(latent, vae, tile_size=128, tile_overlap=64)
        assert len(calls) == 1 and (calls[0]["tile"], calls[0]["overlap"]) == (4, 2)  # pixels / 32
        assert tiled.shape == whole.shape and (tiled - whole).abs().mean() < 0.05
    finally:
        set_host(None)
