"""The Qwen-Image VAE: real layouts, parity with diffusers, loading every layout, tiling, bad inputs."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from comfyui_mmdit.loaders import assign as assign_module
from comfyui_mmdit.loaders.errors import ModelFileError
from comfyui_mmdit.loaders.keymaps.qwen_image_vae import diffusers_key_to_comfyui, diffusers_to_comfyui
from comfyui_mmdit.loaders.vae import load_vae
from comfyui_mmdit.model_defs.qwen_image.vae import QwenImageVAE, QwenImageVAEConfig, vae_config_from_shapes
from comfyui_mmdit.model_defs.vae_tiling import tile_spans, tiled_decode, tiled_encode
from comfyui_mmdit.tools.tiny_models import randomise_vae_

from helpers import manifest, manifest_shapes

# fp32 on CPU, same weights: only summation order differs (2-D convs here, zero-padded 3-D convs in
# diffusers; x * (sqrt(C) / |x|) here, x / |x| * sqrt(C) there). Measured at most 2.5e-6 (encode, latents
# of magnitude ~2) and 1.9e-6 (decode, images of magnitude ~1); the full-size VAE at 256x256: 6.9e-6.
PARITY_ATOL = 1e-5

# Tiny configs with the real structure: (diffusers kwargs). z_dim stays 16 (the detection rules need it).
TINY_CONFIGS = {
    "real_shape": dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                       temperal_downsample=[False, True, True]),
    "short": dict(base_dim=12, z_dim=16, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[False, True]),
}


def reference_vae(name: str, seed: int = 0):
    from diffusers import AutoencoderKLQwenImage

    reference = AutoencoderKLQwenImage(**TINY_CONFIGS[name]).eval()
    randomise_vae_(reference, seed)
    return reference


def to_comfyui_names(diffusers_state: dict) -> dict:
    names = diffusers_to_comfyui(diffusers_state)
    return {names[k]: v for k, v in diffusers_state.items()}


def build_ours(state: dict) -> QwenImageVAE:
    vae = QwenImageVAE(vae_config_from_shapes({k: v.shape for k, v in state.items()}))
    vae.load_state_dict(state)
    return vae.eval()


@pytest.fixture(scope="module", params=list(TINY_CONFIGS))
def pair(request):
    reference = reference_vae(request.param)
    return reference, build_ours(to_comfyui_names(reference.state_dict()))


@pytest.fixture(scope="module")
def tiny_state():
    """ComfyUI-named and diffusers-named state dicts of one tiny VAE, and the VAE itself (ours)."""
    reference = reference_vae("real_shape", seed=1)
    diffusers_state = {k: v.clone() for k, v in reference.state_dict().items()}
    comfy_state = to_comfyui_names(diffusers_state)
    return comfy_state, diffusers_state, build_ours(comfy_state)


# --- (1) real layouts ---------------------------------------------------------------------------------


def test_full_size_network_matches_the_comfyui_file():
    shapes = manifest_shapes("qwen_image_vae.comfyui")
    config = vae_config_from_shapes(shapes)
    assert config == QwenImageVAEConfig()  # 96 wide, z 16, (1, 2, 4, 4), 2 res blocks, time (F, T, T)
    vae = QwenImageVAE(config, device="meta")
    ours = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    assert sorted(ours.keys() - shapes.keys()) == []
    assert sorted(shapes.keys() - ours.keys()) == []
    assert {k: v for k, v in ours.items() if shapes[k] != v} == {}
    assert sum(v.numel() for v in vae.state_dict().values()) == manifest("qwen_image_vae.comfyui")["total_params"]
    assert (vae.downscale, vae.latent_channels) == (8, 16)


def test_diffusers_names_map_onto_the_comfyui_file():
    diffusers = manifest_shapes("qwen_image_vae.diffusers")
    names = diffusers_to_comfyui(diffusers)
    mapped = {names[k]: v for k, v in diffusers.items()}
    assert len(mapped) == len(diffusers)  # no two names collapse into one
    assert mapped == manifest_shapes("qwen_image_vae.comfyui")


def test_key_map_agrees_with_the_reference_mapping_entry_by_entry():
    entries = manifest("mapping.qwen_image_vae.comfyui_to_diffusers")["mapping"]
    assert len(entries) == 194 and all(e["op"] == "rename" for e in entries)
    wrong = [(e["dst"], diffusers_key_to_comfyui(e["dst"]), e["src"]) for e in entries
             if diffusers_key_to_comfyui(e["dst"]) != e["src"]]
    assert wrong == []


# --- (2) parity with diffusers ------------------------------------------------------------------------


@pytest.mark.parametrize("height, width, batch", [(64, 64, 1), (48, 80, 2), (72, 40, 1)])
def test_encode_and_decode_match_diffusers(pair, height, width, batch):
    reference, ours = pair
    scale = ours.downscale  # 8, or 4 for the "short" config's two downsamplings
    generator = torch.Generator().manual_seed(height * width + batch)
    images = torch.rand(batch, 3, 1, height, width, generator=generator) * 2 - 1
    latent = torch.randn(batch, 16, 1, height // scale, width // scale, generator=generator)
    with torch.no_grad():
        expected_latent = reference.encode(images).latent_dist.mode()
        expected_images = reference.decode(latent).sample[:, :, 0]

    ours_latent = ours.encode(images)
    assert ours_latent.shape == expected_latent.shape == (batch, 16, 1, height // scale, width // scale)
    torch.testing.assert_close(ours_latent, expected_latent, atol=PARITY_ATOL, rtol=0)
    torch.testing.assert_close(ours.encode(images[:, :, 0]), ours_latent, atol=0, rtol=0)  # 4-D input

    decoded = ours.decode(latent)
    assert decoded.shape == (batch, 3, height, width) == expected_images.shape
    assert (decoded.abs() < 1).float().mean() > 0.6  # mostly unclamped, so the comparison means something
    torch.testing.assert_close(decoded, expected_images, atol=PARITY_ATOL, rtol=0)
    torch.testing.assert_close(ours.decode(latent[:, :, 0]), decoded, atol=0, rtol=0)  # 4-D latent


def test_encode_centre_crops_to_multiples_of_8_like_comfyui(tiny_state):
    vae = tiny_state[2]
    images = torch.rand(1, 3, 66, 77) * 2 - 1  # crops to 64 x 72 with offsets (1, 2)
    torch.testing.assert_close(vae.encode(images), vae.encode(images[:, :, 1:65, 2:74]), atol=0, rtol=0)
    with pytest.raises(ValueError, match="at least 8x8"):
        vae.encode(torch.zeros(1, 3, 7, 64))


# --- (3) loading every layout -------------------------------------------------------------------------


def _bf16(state: dict) -> dict:
    return {k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}


def _expected_from_bf16(state: dict) -> QwenImageVAE:
    """The same network in float32 with the bf16-rounded weights: what a bf16 file computes in fp32."""
    return build_ours({k: v.to(torch.bfloat16).float() for k, v in state.items()})


def _assert_same_outputs(loaded, expected, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, 48, 64, generator=generator) * 2 - 1
    latent = torch.randn(1, 16, 1, 5, 7, generator=generator)
    torch.testing.assert_close(loaded.encode(images), expected.encode(images), atol=1e-6, rtol=0)
    torch.testing.assert_close(loaded.decode(latent), expected.decode(latent), atol=1e-6, rtol=0)


def test_load_comfyui_file_bf16_computes_in_fp32(tiny_state, tmp_path):
    comfy_state = tiny_state[0]
    path = tmp_path / "qwen_image_vae.safetensors"
    save_file(_bf16(comfy_state), str(path))
    loaded = load_vae(path)
    assert (loaded.family, loaded.layout, loaded.stored_dtype) == ("qwen_image", "comfyui", torch.bfloat16)
    assert loaded.config == vae_config_from_shapes({k: v.shape for k, v in comfy_state.items()})
    assert {p.dtype for p in loaded.module.parameters()} == {torch.bfloat16}  # kept as stored
    _assert_same_outputs(loaded.module, _expected_from_bf16(comfy_state))

    as_fp32 = load_vae(path, dtype=torch.float32)
    assert {p.dtype for p in as_fp32.module.parameters()} == {torch.float32}
    _assert_same_outputs(as_fp32.module, _expected_from_bf16(comfy_state))


def test_load_diffusers_vae_folder(tiny_state, tmp_path):
    comfy_state, diffusers_state, _ = tiny_state
    folder = tmp_path / "Qwen-Image" / "vae"
    folder.mkdir(parents=True)
    save_file(_bf16(diffusers_state), str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLQwenImage"}))
    expected = _expected_from_bf16(comfy_state)
    for location in (folder, folder.parent, folder / "diffusion_pytorch_model.safetensors"):
        loaded = load_vae(location, dtype=torch.float32)
        assert (loaded.family, loaded.layout) == ("qwen_image", "diffusers")
        _assert_same_outputs(loaded.module, expected)


@pytest.mark.parametrize("prefix", ["vae.", "first_stage_model."])
def test_load_vae_part_of_a_full_checkpoint(tiny_state, tmp_path, prefix):
    comfy_state = tiny_state[0]
    everything = {prefix + k: v for k, v in _bf16(comfy_state).items()}
    everything["model.diffusion_model.img_in.weight"] = torch.zeros(8, 4)  # other parts are left alone
    path = tmp_path / "checkpoint.safetensors"
    save_file(everything, str(path))
    loaded = load_vae(path)
    assert loaded.layout == "comfyui"
    _assert_same_outputs(loaded.module, _expected_from_bf16(comfy_state))


# --- (4) tiling ---------------------------------------------------------------------------------------


def test_tile_spans_cover_evenly_with_full_tiles():
    assert tile_spans(256, 64, 16) == [(0, 64), (48, 112), (96, 160), (144, 208), (192, 256)]
    assert tile_spans(40, 64, 16) == [(0, 40)]
    for size in (65, 100, 129, 37):
        spans = tile_spans(size, 32, 8)
        assert spans[0][0] == 0 and spans[-1][1] == size
        assert all(end - start == 32 for start, end in spans)
        assert all(b[0] < a[1] - 8 + 1 for a, b in zip(spans, spans[1:]))  # overlaps of at least 8


@pytest.mark.parametrize("shape", [(2, 4, 37, 53), (1, 4, 1, 21, 70)])
def test_blending_is_exact_for_a_local_function(shape):
    """A pixel-local 'VAE' gives every tile the same values in the overlaps: any weighting error would show."""
    generator = torch.Generator().manual_seed(0)
    mix = torch.randn(3, shape[1], generator=generator)

    def decode(z):
        images = torch.einsum("oc,bc...->bo...", mix, z)
        return F.interpolate(images.flatten(1, -3), scale_factor=8.0, mode="nearest").view(
            *images.shape[:-2], images.shape[-2] * 8, images.shape[-1] * 8)

    def encode(x):
        return F.avg_pool2d(x.flatten(1, -3), 8).view(*x.shape[:-2], x.shape[-2] // 8, x.shape[-1] // 8)

    latent = torch.randn(shape, generator=generator)
    torch.testing.assert_close(tiled_decode(decode, latent, 8, tile=16, overlap=4), decode(latent),
                               atol=1e-6, rtol=0)
    images = decode(latent)
    torch.testing.assert_close(tiled_encode(encode, images, 8, tile=16, overlap=4), encode(images),
                               atol=1e-6, rtol=0)


def _local_vae(tiny_state) -> QwenImageVAE:
    """The tiny VAE with its two mid-block attentions switched off (projection zero: identity blocks).

    Attention is global, so no tiled decode or encode can reproduce it exactly; without it every output
    depends on a bounded neighbourhood (about 14 latent cells here) and tiling can be checked exactly.
    """
    state = dict(tiny_state[0])
    for half in ("encoder", "decoder"):
        for name in ("proj.weight", "proj.bias"):
            state[f"{half}.middle.1.{name}"] = torch.zeros_like(state[f"{half}.middle.1.{name}"])
    return build_ours(state)


def test_tiled_decode_and_encode_match_untiled(tiny_state):
    vae = _local_vae(tiny_state)
    # 64 x 56 latent cells, tiles of 40 overlapping by at least 8: tiles (0, 40) and (24, 64) down,
    # (0, 40) and (16, 56) across. Cells covered by one tile are >= 16 cells from that tile's inner edge.
    latent = torch.randn(1, 16, 1, 64, 56, generator=torch.Generator().manual_seed(5))
    whole, tiled = vae.decode(latent), vae.decode_tiled(latent, tile=40, overlap=8)
    assert tiled.shape == whole.shape == (1, 3, 512, 448)
    interior = (slice(None), slice(None), slice(0, 24 * 8), slice(0, 16 * 8))
    torch.testing.assert_close(tiled[interior], whole[interior], atol=1e-5, rtol=0)  # one tile, far from edges
    torch.testing.assert_close(tiled[..., 40 * 8:, 40 * 8:], whole[..., 40 * 8:, 40 * 8:], atol=1e-5, rtol=0)
    # The blended bands mix in tile edges (zero-padding effects) with small weights. With these random
    # weights, measured: max 0.079, mean 0.0013 against a mean |value| of 0.15.
    difference = (tiled - whole).abs()
    assert difference.max() < 0.15 and difference.mean() < 3e-3

    images = whole
    whole_latent, tiled_latent = vae.encode(images), vae.encode_tiled(images, tile=40, overlap=8)
    assert tiled_latent.shape == whole_latent.shape == (1, 16, 1, 64, 56)
    torch.testing.assert_close(tiled_latent[..., :24, :16], whole_latent[..., :24, :16], atol=1e-5, rtol=0)
    torch.testing.assert_close(tiled_latent[..., 40:, 40:], whole_latent[..., 40:, 40:], atol=1e-5, rtol=0)
    # Measured: max 0.155, mean 0.0041 against a mean |value| of 0.46.
    difference = (tiled_latent - whole_latent).abs()
    assert difference.max() < 0.3 and difference.mean() < 1e-2


def test_single_tile_equals_untiled_with_attention(tiny_state):
    vae = tiny_state[2]
    latent = torch.randn(2, 16, 1, 9, 13, generator=torch.Generator().manual_seed(2))
    # Not bit-exact only because tiles run one sample at a time (other conv kernels than for batch 2).
    torch.testing.assert_close(vae.decode_tiled(latent, tile=16, overlap=4), vae.decode(latent), atol=1e-5, rtol=0)


def test_tiled_2048_decode_never_hands_the_decoder_more_than_a_tile():
    torch.manual_seed(0)
    vae = QwenImageVAE(QwenImageVAEConfig(dim=4, num_res_blocks=1))
    randomise_vae_(vae, seed=3)
    seen = []
    vae.decoder.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    latent = torch.randn(1, 16, 1, 256, 256)
    done = []
    images = vae.decode_tiled(latent, progress=lambda i, n: done.append((i, n)))  # defaults: 64 / 16 cells
    assert images.shape == (1, 3, 2048, 2048)
    assert len(seen) == 25 and all(shape == (1, 16, 64, 64) for shape in seen)
    assert done[-1] == (25, 25)
    assert torch.isfinite(images).all() and images.abs().max() <= 1


# --- (5) bad inputs -----------------------------------------------------------------------------------


def test_truncated_file(tiny_state, tmp_path):
    path = tmp_path / "vae_truncated.safetensors"
    save_file(tiny_state[0], str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelFileError, match="vae_truncated.safetensors: is truncated") as error:
        load_vae(path)
    assert "bytes missing" in str(error.value)


def test_missing_wrong_and_extra_tensors(tiny_state, tmp_path):
    state = dict(tiny_state[0])
    del state["decoder.upsamples.4.shortcut.weight"]
    del state["encoder.middle.1.proj.bias"]
    path = tmp_path / "vae_incomplete.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelFileError) as error:
        load_vae(path)
    message = str(error.value)
    assert "vae_incomplete.safetensors" in message and "2 tensors are missing" in message
    assert "decoder.upsamples.4.shortcut.weight" in message and "encoder.middle.1.proj.bias" in message

    state = dict(tiny_state[0])
    state["decoder.middle.1.proj.weight"] = torch.zeros(64, 32, 1, 1)
    state["decoder.extra.weight"] = torch.zeros(3)
    save_file(state, str(path))
    with pytest.raises(ModelFileError) as error:
        load_vae(path)
    message = str(error.value)
    assert "decoder.middle.1.proj.weight with shape [64, 32, 1, 1]" in message
    assert "decoder.middle.1.proj.weight with shape [32, 32, 1, 1]" in message
    assert "decoder.extra.weight" in message


def test_diffusion_model_file_is_refused_as_a_vae(tmp_path):
    path = tmp_path / "qwen_image_fp8.safetensors"
    save_file({"txt_norm.weight": torch.zeros(8), "img_in.weight": torch.zeros(8, 4),
               "transformer_blocks.0.attn.add_q_proj.weight": torch.zeros(8, 8)}, str(path))
    with pytest.raises(ModelFileError, match="qwen_image_fp8.safetensors: is not a vae") as error:
        load_vae(path)
    assert "Found: Qwen-Image diffusion model" in str(error.value)


def test_unknown_file_is_refused(tmp_path):
    path = tmp_path / "something.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, str(path))
    with pytest.raises(ModelFileError, match="something.safetensors: was not recognised"):
        load_vae(path)


def test_failed_assignment_leaves_nothing_loaded(tiny_state, monkeypatch):
    vae = QwenImageVAE(vae_config_from_shapes({k: v.shape for k, v in tiny_state[0].items()}), device="meta")
    calls = []

    def failing_prepare(tensor, dtype, device):
        calls.append(1)
        if len(calls) == 10:
            raise torch.OutOfMemoryError("simulated")
        return tensor.clone()

    monkeypatch.setattr(assign_module, "_prepare", failing_prepare)
    with pytest.raises(torch.OutOfMemoryError):
        assign_module.assign_state_dict(vae, tiny_state[0], "vae.safetensors", "Qwen-Image VAE")
    assert all(p.is_meta for p in vae.parameters())


def test_more_than_one_frame_is_refused(tiny_state):
    vae = tiny_state[2]
    with pytest.raises(ValueError, match="5 frames"):
        vae.decode(torch.zeros(1, 16, 5, 4, 4))
    with pytest.raises(ValueError, match="5 frames"):
        vae.encode(torch.zeros(1, 3, 5, 32, 32))
    with pytest.raises(ValueError, match="16 channels"):
        vae.decode(torch.zeros(1, 4, 4, 4))
