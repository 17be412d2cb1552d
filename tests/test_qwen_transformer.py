"""The Qwen-Image MMDiT: real layout at full size, parity with diffusers, hooks, bad inputs."""

import pytest
import torch

from comfyui_mmdit.model_defs.ops import StandaloneOps
from comfyui_mmdit.model_defs.qwen_image.transformer import (
    QwenImageConfig, QwenImageTransformer, config_from_shapes, msrope_positions, ImageInput,
)
from comfyui_mmdit.tools.tiny_models import TINY_QWEN_DIT, tiny_qwen_dit_state_dict

from helpers import manifest_shapes

# fp32 on CPU, same weights and inputs: the only differences are summation order and the RoPE form
# (real cos/sin here, complex multiply in diffusers).
NETWORK_ATOL = 1e-5


@pytest.mark.parametrize("layout", ["comfyui", "diffusers"])
def test_full_size_network_matches_published_checkpoint(layout):
    shapes = manifest_shapes(f"qwen_image_transformer.{layout}")
    config = config_from_shapes(shapes)
    assert config == QwenImageConfig()  # 60 blocks, 24 x 128 heads, text 3584, MSRoPE (16, 56, 56)
    network = QwenImageTransformer(config, StandaloneOps, dtype=torch.bfloat16, device="meta")
    ours = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    assert sorted(ours.keys() - shapes.keys()) == []
    assert sorted(shapes.keys() - ours.keys()) == []
    assert {k: v for k, v in ours.items() if shapes[k] != v} == {}


@pytest.fixture(scope="module")
def pair():
    from diffusers import QwenImageTransformer2DModel

    c = TINY_QWEN_DIT
    reference = QwenImageTransformer2DModel(
        patch_size=c.patch_size, in_channels=c.in_channels, out_channels=c.out_channels, num_layers=c.num_layers,
        attention_head_dim=c.attention_head_dim, num_attention_heads=c.num_attention_heads,
        joint_attention_dim=c.joint_attention_dim, axes_dims_rope=c.axes_dims_rope,
    ).eval()
    state = tiny_qwen_dit_state_dict(seed=3)
    reference.load_state_dict(state)
    ours = QwenImageTransformer(config_from_shapes({k: v.shape for k, v in state.items()}), StandaloneOps)
    ours.load_state_dict(state)
    return reference, ours.eval()


def _reference_forward(reference, latent, sigma, context, mask):
    b, c, h, w = latent.shape
    packed = latent.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)
    out = reference(hidden_states=packed, encoder_hidden_states=context, encoder_hidden_states_mask=mask,
                    timestep=sigma, img_shapes=[[(1, h // 2, w // 2)]] * b, return_dict=False)[0]
    return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


@pytest.mark.parametrize("batch,height,width,text_len,padded", [
    (1, 16, 16, 12, False),   # square
    (2, 12, 20, 9, True),     # non-square, batch 2, padded text with a mask
    (2, 20, 12, 7, False),    # portrait
    (1, 6, 10, 5, False),     # odd token grid (3 x 5): the centring rule of MSRoPE matters
    (3, 8, 24, 16, True),     # wide, batch 3, several padded prompts
])
@torch.no_grad()
def test_matches_diffusers(pair, batch, height, width, text_len, padded):
    reference, ours = pair
    g = torch.Generator().manual_seed(batch * 1000 + height * 10 + width)
    latent = torch.randn(batch, 16, height, width, generator=g)
    context = torch.randn(batch, text_len, TINY_QWEN_DIT.joint_attention_dim, generator=g)
    sigma = torch.rand(batch, generator=g)
    mask = None
    if padded:
        mask = torch.ones(batch, text_len, dtype=torch.long)
        for i in range(batch):
            mask[i, text_len - 2 - i:] = 0  # a different padding length per sample
        context = context * mask[..., None]
    expected = _reference_forward(reference, latent, sigma, context, mask)
    got = ours(latent, sigma, context, attention_mask=mask)
    assert got.shape == latent.shape
    torch.testing.assert_close(got, expected, atol=NETWORK_ATOL, rtol=0)
    # ComfyUI hands Qwen latents over as [B, C, 1, H, W]: the same numbers come back in that layout.
    torch.testing.assert_close(ours(latent.unsqueeze(2), sigma, context, attention_mask=mask), got.unsqueeze(2))


@torch.no_grad()
def test_odd_latent_sizes_are_padded_and_cropped(pair):
    _, ours = pair
    latent = torch.randn(1, 16, 9, 13)
    out = ours(latent, torch.tensor([0.5]), torch.randn(1, 4, TINY_QWEN_DIT.joint_attention_dim))
    assert out.shape == latent.shape and torch.isfinite(out).all()


def test_msrope_positions_follow_the_official_layout():
    text, image = msrope_positions([ImageInput(frame=0, height=3, width=4)], text_tokens=2)
    rows = image[:, 1].unique().tolist()
    cols = image[:, 2].unique().tolist()
    assert rows == [-2, -1, 0] and cols == [-2, -1, 0, 1]  # centred: -ceil(n/2) .. floor(n/2) - 1
    assert text.tolist() == [[2, 2, 2], [3, 3, 3]]  # text starts after the largest half-extent


@torch.no_grad()
def test_block_replace_and_control_hooks(pair):
    _, ours = pair
    latent = torch.randn(1, 16, 8, 8)
    context = torch.randn(1, 5, TINY_QWEN_DIT.joint_attention_dim)
    sigma = torch.tensor([0.7])
    plain = ours(latent, sigma, context)

    calls = []

    def passthrough(args, extra):
        calls.append(sorted(args))
        return extra["original_block"](args)

    options = {"patches_replace": {"dit": {("double_block", 1): passthrough}}}
    torch.testing.assert_close(ours(latent, sigma, context, transformer_options=options), plain)
    assert calls == [["img", "pe", "transformer_options", "txt", "vec"]]

    control = {"input": [torch.ones(1, 16, TINY_QWEN_DIT.inner_dim)]}
    assert not torch.allclose(ours(latent, sigma, context, control=control), plain)


def test_wrong_channel_count_is_a_clear_error(pair):
    _, ours = pair
    with pytest.raises(ValueError, match="16 channels; got 4"):
        ours(torch.zeros(1, 4, 8, 8), torch.tensor([0.5]), torch.zeros(1, 3, TINY_QWEN_DIT.joint_attention_dim))
