"""The shared DiT blocks (model_defs/dit) beyond HunyuanImage: FLUX.2's parametrisation builds the FLUX.2
[dev] checkpoint's layout, externally computed modulation equals a block's own, patchify round-trips."""

import pytest
import torch

from comfyui_mmdit.model_defs.dit.double_stream import DoubleStreamBlock
from comfyui_mmdit.model_defs.dit.final_layer import FinalLayer
from comfyui_mmdit.model_defs.dit.hooks import BlockHooks, run_double_blocks
from comfyui_mmdit.model_defs.dit.layers import build_mlp
from comfyui_mmdit.model_defs.dit.modulation import Modulation
from comfyui_mmdit.model_defs.dit.patchify import pad_to_patches, unpatchify
from comfyui_mmdit.model_defs.dit.single_stream import SingleStreamBlock
from comfyui_mmdit.model_defs.embeddings import MLPEmbedder
from comfyui_mmdit.model_defs.ops import StandaloneOps
from comfyui_mmdit.model_defs.rope import RotaryTable, rope_angles

from helpers import manifest_shapes


def _shapes(module, prefix=""):
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_flux2_parametrisation_builds_the_flux2_dev_layout():
    """FLUX.2 [dev]: no biases, SiLU-gated MLP (ratio 3), model-wide modulation, hidden 6144 / 48 heads."""
    published = manifest_shapes("flux2_dev_transformer.bfl")
    ops, kw = StandaloneOps, dict(device="meta")
    built = {
        **_shapes(DoubleStreamBlock(6144, 48, ops, 3.0, qkv_bias=False, bias=False, mlp_kind="silu_gated",
                                    modulation=False, image_first=False, **kw), "double_blocks.0."),
        **_shapes(SingleStreamBlock(6144, 48, ops, 3.0, bias=False, mlp_kind="silu_gated", modulation=False, **kw),
                  "single_blocks.0."),
        **_shapes(Modulation(6144, 6, ops, bias=False, **kw), "double_stream_modulation_img."),
        **_shapes(Modulation(6144, 6, ops, bias=False, **kw), "double_stream_modulation_txt."),
        **_shapes(Modulation(6144, 3, ops, bias=False, **kw), "single_stream_modulation."),
        **_shapes(FinalLayer(6144, 128, ops, bias=False, **kw), "final_layer."),
        **_shapes(MLPEmbedder(256, 6144, ops, bias=False, **kw), "time_in."),
    }
    assert {k: published.get(k) for k in built} == built


@torch.no_grad()
def test_external_modulation_equals_the_blocks_own():
    torch.manual_seed(0)
    dim, heads = 32, 2
    own = DoubleStreamBlock(dim, heads, torch.nn, 2.0, mlp_kind="silu_gated")
    external = DoubleStreamBlock(dim, heads, torch.nn, 2.0, mlp_kind="silu_gated", modulation=False)
    external.load_state_dict({k: v for k, v in own.state_dict().items() if "_mod." not in k})
    img, txt, vec = torch.randn(2, 6, dim), torch.randn(2, 3, dim), torch.randn(2, dim)
    pe = RotaryTable(rope_angles(torch.randint(0, 5, (9, 2)), (8, 8), 256.0))
    mask = torch.tensor([[True] * 9, [True] * 7 + [False] * 2])
    expected = own(img, txt, vec, pe, mask)
    got = external(img, txt, (own.img_mod(vec), own.txt_mod(vec)), pe, mask)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)

    single = SingleStreamBlock(dim, heads, torch.nn, 2.0, mlp_kind="silu_gated")
    single_external = SingleStreamBlock(dim, heads, torch.nn, 2.0, mlp_kind="silu_gated", modulation=False)
    single_external.load_state_dict({k: v for k, v in single.state_dict().items() if "modulation" not in k})
    joint = torch.randn(2, 9, dim)
    torch.testing.assert_close(single_external(joint, single.modulation(vec), pe, mask), single(joint, vec, pe, mask))


@torch.no_grad()
def test_silu_gated_mlp_and_masked_keys():
    torch.manual_seed(1)
    mlp = build_mlp(8, 16, "silu_gated", torch.nn)
    x = torch.randn(3, 8)
    a, b = mlp[0](x).chunk(2, dim=-1)
    torch.testing.assert_close(mlp(x), mlp[2](torch.nn.functional.silu(a) * b))
    with pytest.raises(ValueError, match="unknown MLP kind"):
        build_mlp(8, 16, "relu", torch.nn)

    # a masked key changes nothing, whatever it holds
    block = SingleStreamBlock(16, 2, torch.nn)
    joint, vec = torch.randn(1, 5, 16), torch.randn(1, 16)
    mask = torch.tensor([[True, True, True, True, False]])
    changed = joint.clone()
    changed[:, 4] = 50.0
    torch.testing.assert_close(block(changed, vec, None, mask)[:, :4], block(joint, vec, None, mask)[:, :4])


@pytest.mark.parametrize("patch,spatial", [((2, 2), (6, 10)), ((1, 2, 2), (3, 4, 6))])
def test_unpatchify_is_channel_major_within_patches(patch, spatial):
    channels = 3
    x = torch.randn(2, channels, *spatial)
    grid = tuple(s // p for s, p in zip(spatial, patch))
    nd = len(patch)
    # patchify by hand: [B, C, g0, p0, g1, p1, ...] -> [B, g..., C, p...]
    split = x.reshape(2, channels, *[v for g, p in zip(grid, patch) for v in (g, p)])
    order = [0, *range(2, 2 + 2 * nd, 2), 1, *range(3, 3 + 2 * nd, 2)]
    tokens = split.permute(*order).reshape(2, -1, channels * torch.Size(patch).numel())
    torch.testing.assert_close(unpatchify(tokens, grid, patch, channels), x)


def test_padding_to_whole_patches():
    x = torch.arange(5.0).reshape(1, 1, 1, 5)
    assert pad_to_patches(x, (1, 2)).shape == (1, 1, 1, 6)
    assert pad_to_patches(x, (1, 1)) is x


def test_hook_loop_without_options_and_with_control():
    calls = []

    def call_block(block, img, txt, args):
        calls.append(block)
        return img + args["vec"], txt

    img, txt = torch.zeros(1, 4, 2), torch.zeros(1, 1, 2)
    control = {"input": [torch.ones(1, 2, 2), None]}
    out_img, _ = run_double_blocks(["a", "b"], img, txt, {"vec": 1.0}, call_block, BlockHooks(None, control))
    assert calls == ["a", "b"]
    assert out_img[0, :, 0].tolist() == [3.0, 3.0, 2.0, 2.0]  # the ControlNet add reaches the first 2 tokens
    assert img.abs().sum() == 0  # inputs are not modified in place
