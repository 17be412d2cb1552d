"""Qwen-Image-Edit in the DiT: reference latents as tokens (Edit, 2509, 2511), parity with diffusers,
ComfyUI's keywords and reference methods, the 2511 marker, bad inputs."""

import pytest
import torch

from comfyui_mmdit.model_defs.ops import StandaloneOps
from comfyui_mmdit.model_defs.qwen_image.edit import ZERO_COND_MARKER, reference_placements, resolve_method
from comfyui_mmdit.model_defs.qwen_image.transformer import (
    ImageInput, QwenImageConfig, QwenImageTransformer, config_from_shapes, msrope_positions,
)
from comfyui_mmdit.model_defs.rope import rope_angles
from comfyui_mmdit.tools.tiny_models import TINY_QWEN_DIT, tiny_qwen_dit_state_dict

from helpers import manifest_shapes

NETWORK_ATOL = 1e-5  # fp32 on the CPU, as tests/test_qwen_transformer.py
DIM = TINY_QWEN_DIT.joint_attention_dim


def _diffusers(state, zero_cond_t):
    from diffusers import QwenImageTransformer2DModel

    c = TINY_QWEN_DIT
    reference = QwenImageTransformer2DModel(
        patch_size=c.patch_size, in_channels=c.in_channels, out_channels=c.out_channels, num_layers=c.num_layers,
        attention_head_dim=c.attention_head_dim, num_attention_heads=c.num_attention_heads,
        joint_attention_dim=c.joint_attention_dim, axes_dims_rope=c.axes_dims_rope, zero_cond_t=zero_cond_t,
    ).eval()
    reference.load_state_dict(state)
    return reference


@pytest.fixture(scope="module")
def models():
    state = tiny_qwen_dit_state_dict(seed=5)
    shapes = {k: v.shape for k, v in state.items()}
    edit = QwenImageTransformer(config_from_shapes(shapes), StandaloneOps).eval()
    edit.load_state_dict(state)
    # Edit-2511 as its ComfyUI file says it: the same tensors plus the marker.
    marked = {**state, ZERO_COND_MARKER: torch.empty(0)}
    edit_2511 = QwenImageTransformer(config_from_shapes({k: v.shape for k, v in marked.items()}), StandaloneOps).eval()
    edit_2511.load_state_dict(marked)
    return {"edit": edit, "edit_2511": edit_2511,
            "diffusers": _diffusers(state, False), "diffusers_2511": _diffusers(state, True)}


def _pack(latent):
    b, c, h, w = latent.shape
    return latent.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)


def _reference_forward(reference, latent, refs, sigma, context, mask):
    """diffusers' call as QwenImageEditPlusPipeline makes it: the packed noisy latent then each packed
    reference in one sequence, img_shapes per sample [(1, h, w) of the noisy image, then each reference's],
    and only the noisy image's tokens kept."""
    b, c, h, w = latent.shape
    hidden = torch.cat([_pack(latent)] + [_pack(r) for r in refs], dim=1)
    shapes = [(1, h // 2, w // 2)] + [(1, r.shape[-2] // 2, r.shape[-1] // 2) for r in refs]
    out = reference(hidden_states=hidden, encoder_hidden_states=context, encoder_hidden_states_mask=mask,
                    timestep=sigma, img_shapes=[shapes] * b, return_dict=False)[0]
    out = out[:, : h * w // 4]
    return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def _inputs(seed, batch, size, ref_sizes, text_len, padded):
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(batch, 16, *size, generator=g)
    refs = [torch.randn(batch, 16, *s, generator=g) for s in ref_sizes]
    context = torch.randn(batch, text_len, DIM, generator=g)
    sigma = torch.rand(batch, generator=g)
    mask = None
    if padded:
        mask = torch.ones(batch, text_len, dtype=torch.long)
        for i in range(batch):
            mask[i, text_len - 2 - i:] = 0
        context = context * mask[..., None]
    return latent, refs, sigma, context, mask


CASES = {
    # Edit: one reference the noisy image's size.
    "edit_one_ref": dict(batch=1, size=(16, 16), ref_sizes=[(16, 16)], text_len=10, padded=False),
    # Edit, a reference of another size and shape than the output (the native-size policy).
    "edit_one_ref_other_size": dict(batch=2, size=(12, 20), ref_sizes=[(20, 12)], text_len=9, padded=True),
    # 2509: two references of different sizes, non-square, batch 2, padded text.
    "plus_two_refs": dict(batch=2, size=(12, 16), ref_sizes=[(16, 12), (8, 20)], text_len=9, padded=True),
    # 2509: three, one larger than the output (text starts after the largest half-extent), one with odd
    # token counts (the centring rule).
    "plus_three_refs": dict(batch=2, size=(12, 16), ref_sizes=[(24, 20), (6, 10), (16, 16)], text_len=11,
                            padded=True),
}


@pytest.mark.parametrize("case", list(CASES))
@torch.no_grad()
def test_matches_diffusers_with_reference_images(models, case):
    latent, refs, sigma, context, mask = _inputs(list(CASES).index(case), **CASES[case])
    expected = _reference_forward(models["diffusers"], latent, refs, sigma, context, mask)
    got = models["edit"](latent, sigma, context, attention_mask=mask, ref_latents=refs)
    assert got.shape == latent.shape
    torch.testing.assert_close(got, expected, atol=NETWORK_ATOL, rtol=0)
    # ComfyUI's naming of the official placement, and its 5-D latents: the same numbers.
    five_d = models["edit"](latent.unsqueeze(2), sigma, context, attention_mask=mask,
                            ref_latents=[r.unsqueeze(2) for r in refs], ref_latents_method="index")
    torch.testing.assert_close(five_d, got.unsqueeze(2), atol=0, rtol=0)
    # The references matter.
    assert (got - models["edit"](latent, sigma, context, attention_mask=mask)).abs().max() > 1e-3


@pytest.mark.parametrize("case", ["edit_one_ref", "plus_two_refs", "plus_three_refs"])
@torch.no_grad()
def test_edit_2511_zero_cond_t_matches_diffusers(models, case):
    latent, refs, sigma, context, mask = _inputs(100 + list(CASES).index(case), **CASES[case])
    expected = _reference_forward(models["diffusers_2511"], latent, refs, sigma, context, mask)
    # Detected from the file's marker ...
    got = models["edit_2511"](latent, sigma, context, attention_mask=mask, ref_latents=refs)
    torch.testing.assert_close(got, expected, atol=NETWORK_ATOL, rtol=0)
    # ... or chosen per call with ComfyUI's method name on an unmarked model.
    chosen = models["edit"](latent, sigma, context, attention_mask=mask, ref_latents=refs,
                            ref_latents_method="index_timestep_zero")
    torch.testing.assert_close(chosen, got, atol=0, rtol=0)
    # It is a different model from plain "index" (which a marked model still runs when asked).
    plain = models["edit_2511"](latent, sigma, context, attention_mask=mask, ref_latents=refs,
                                ref_latents_method="index")
    torch.testing.assert_close(plain, _reference_forward(models["diffusers"], latent, refs, sigma, context, mask),
                               atol=NETWORK_ATOL, rtol=0)
    assert (plain - got).abs().max() > 1e-4


@torch.no_grad()
def test_without_references_2511_is_the_plain_network(models):
    latent, _, sigma, context, mask = _inputs(7, 2, (8, 12), [], 6, True)
    torch.testing.assert_close(models["edit_2511"](latent, sigma, context, attention_mask=mask),
                               models["edit"](latent, sigma, context, attention_mask=mask), atol=0, rtol=0)
    torch.testing.assert_close(models["edit"](latent, sigma, context, attention_mask=mask, ref_latents=[]),
                               models["edit"](latent, sigma, context, attention_mask=mask), atol=0, rtol=0)


@torch.no_grad()
def test_reference_batch_of_one_serves_every_sample(models):
    latent, refs, sigma, context, mask = _inputs(11, 2, (8, 8), [(8, 12)], 5, False)
    one = [refs[0][:1]]
    torch.testing.assert_close(models["edit"](latent, sigma, context, ref_latents=one),
                               models["edit"](latent, sigma, context, ref_latents=[one[0].expand(2, -1, -1, -1)]),
                               atol=0, rtol=0)
    with pytest.raises(ValueError, match="reference latent 1 has batch 3"):
        models["edit"](latent, sigma, context, ref_latents=[torch.zeros(3, 16, 8, 8)])


@torch.no_grad()
def test_odd_reference_sizes_are_padded(models):
    latent, _, sigma, context, _ = _inputs(13, 1, (8, 8), [], 5, False)
    out = models["edit"](latent, sigma, context, ref_latents=[torch.randn(1, 16, 7, 9)])
    assert out.shape == latent.shape and torch.isfinite(out).all()


def test_bad_reference_inputs_are_clear_errors(models):
    latent, _, sigma, context, _ = _inputs(17, 1, (8, 8), [], 5, False)
    net = models["edit"]
    with pytest.raises(ValueError, match="reference latent 2: .*16 channels; got 4"):
        net(latent, sigma, context, ref_latents=[torch.zeros(1, 16, 8, 8), torch.zeros(1, 4, 8, 8)])
    with pytest.raises(ValueError, match="reference latent 1: .*2 frames"):
        net(latent, sigma, context, ref_latents=[torch.zeros(1, 16, 2, 8, 8)])
    with pytest.raises(ValueError, match="unknown reference latent method 'sideways'"):
        net(latent, sigma, context, ref_latents=[torch.zeros(1, 16, 8, 8)], ref_latents_method="sideways")


# --- positions -------------------------------------------------------------------------------------------

def _our_positions(noisy_hw, ref_hws, method="index"):
    images = [ImageInput(frame=0, height=noisy_hw[0], width=noisy_hw[1])]
    for place in reference_placements([(2 * h, 2 * w) for h, w in ref_hws], method):
        images.append(ImageInput(frame=place.frame, height=place.height, width=place.width,
                                 h_offset=place.h_offset, w_offset=place.w_offset))
    return msrope_positions(images, text_tokens=4)


def test_index_placement_is_diffusers_rope():
    """Our (frame, row, column) positions, rotated, are diffusers' QwenEmbedRope table for a multi-image
    img_shapes (frame per image, scale_rope centring, text after the largest half-extent)."""
    from diffusers.models.transformers.transformer_qwenimage import QwenEmbedRope

    axes = TINY_QWEN_DIT.axes_dims_rope
    rope = QwenEmbedRope(theta=10000, axes_dim=list(axes), scale_rope=True)
    for noisy, refs in [((6, 8), [(8, 6), (3, 5)]), ((4, 4), [(10, 7)]), ((5, 3), [(5, 3), (2, 2), (4, 9)])]:
        shapes = [(1, *noisy)] + [(1, *r) for r in refs]
        vid, txt = rope([shapes], max_txt_seq_len=4, device=torch.device("cpu"))
        text, image = _our_positions(noisy, refs)
        for ours, theirs in ((image, vid), (text, txt)):
            angles = rope_angles(ours, axes, 10000.0)
            torch.testing.assert_close(torch.polar(torch.ones_like(angles), angles), theirs, atol=1e-6, rtol=0)


def _comfyui_index_ids(noisy_hw, ref_hws, text_tokens=4):
    """ComfyUI's "index" positions (comfy/ldm/qwen_image/model.py: process_img and _forward, both releases),
    restated for token grids: reference k at frame k, rows linspace(0, h-1) - h//2, text from the noisy
    image's half-extent."""
    def grid(frame, h, w):
        rows = torch.arange(h) - h // 2
        cols = torch.arange(w) - w // 2
        f = torch.full((h, w), frame)
        return torch.stack([f, rows[:, None].expand(h, w), cols[None, :].expand(h, w)], -1).reshape(-1, 3)

    image = torch.cat([grid(0, *noisy_hw)] + [grid(k, *hw) for k, hw in enumerate(ref_hws, start=1)])
    start = max(noisy_hw[0] // 2, noisy_hw[1] // 2)
    text = torch.arange(start, start + text_tokens)[:, None].expand(-1, 3)
    return text, image


def test_comfyui_index_method_is_the_diffusers_placement():
    # Even token grids, references no larger than the output (the usual Edit case): identical.
    for noisy, refs in [((4, 6), [(4, 4)]), ((8, 6), [(8, 6), (6, 4), (2, 8)]), ((6, 6), [(6, 6)])]:
        ours = _our_positions(noisy, refs)
        theirs = _comfyui_index_ids(noisy, refs)
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    # The host notes' verified example: a 4x4 reference at index 1 gets frame 1, rows/columns in {-1, 0},
    # and text starts at 2 beside an 8x6 latent (4x3 tokens).
    text, image = _our_positions((4, 3), [(2, 2)])
    ref = image[12:]
    assert ref[:, 0].unique().tolist() == [1]
    assert ref[:, 1].unique().tolist() == [-1, 0] and ref[:, 2].unique().tolist() == [-1, 0]
    assert text[0].tolist() == [2, 2, 2]
    # Where ComfyUI's own network departs from the official placement, we keep the official one: an odd
    # token count is centred one cell lower (ComfyUI: -1..1, diffusers: -2..0) ...
    assert image[:12, 2].unique().tolist() == [-2, -1, 0]
    assert _comfyui_index_ids((4, 3), [(2, 2)])[1][:12, 2].unique().tolist() == [-1, 0, 1]
    # ... and a reference larger than the output pushes the text start out (diffusers), not only the output.
    assert _our_positions((4, 4), [(10, 8)])[0][0, 0] == 5
    assert _comfyui_index_ids((4, 4), [(10, 8)])[0][0, 0] == 2


def test_other_comfyui_methods_place_references_as_comfyui_does():
    assert resolve_method(None, zero_cond_t=False) == ("index", False)
    assert resolve_method(None, zero_cond_t=True) == ("index", True)
    assert resolve_method("index", zero_cond_t=True) == ("index", False)
    assert resolve_method("uxo", zero_cond_t=False) == ("offset", False)
    assert [p.frame for p in reference_placements([(8, 8), (8, 8)], "negative_index")] == [-1, -2]
    # "offset": every reference at frame 1; a second square one goes below the first (tie -> rows), a
    # third, tall one to the right (ComfyUI's rule on latent cells, offsets in whole patches).
    places = reference_placements([(8, 8), (8, 8), (16, 6)], "offset")
    assert [(p.frame, p.h_offset, p.w_offset) for p in places] == [(1, 0, 0), (1, 4, 0), (1, 0, 4)]


# --- the 2511 marker -------------------------------------------------------------------------------------

def test_2511_marker_is_read_from_the_file_and_keeps_the_state_dict_equal():
    shapes = manifest_shapes("qwen_image_transformer.comfyui")
    assert config_from_shapes(shapes).zero_cond_t is False
    marked = {**shapes, ZERO_COND_MARKER: (0,)}
    config = config_from_shapes(marked)
    assert config == QwenImageConfig(zero_cond_t=True)
    network = QwenImageTransformer(config, StandaloneOps, dtype=torch.bfloat16, device="meta")
    ours = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    assert ours == {k: tuple(v) for k, v in marked.items()}  # nothing missing, nothing unexpected
    assert network.zero_cond_t


def test_2511_can_be_chosen_without_the_marker(models):
    """A diffusers folder says zero_cond_t in its config.json, not with a tensor: the caller sets the
    network's default, and the state dict stays the plain Qwen-Image one."""
    state = tiny_qwen_dit_state_dict(seed=5)
    network = QwenImageTransformer(config_from_shapes({k: v.shape for k, v in state.items()}), StandaloneOps).eval()
    network.load_state_dict(state)
    network.zero_cond_t = True
    latent, refs, sigma, context, mask = _inputs(23, 2, (8, 12), [(12, 8)], 6, True)
    with torch.no_grad():
        torch.testing.assert_close(network(latent, sigma, context, attention_mask=mask, ref_latents=refs),
                                   models["edit_2511"](latent, sigma, context, attention_mask=mask, ref_latents=refs),
                                   atol=0, rtol=0)
    assert ZERO_COND_MARKER not in network.state_dict()


# --- hooks -------------------------------------------------------------------------------------------------

@torch.no_grad()
def test_block_hooks_see_reference_tokens_as_comfyui_passes_them(models):
    net = models["edit_2511"]
    latent, refs, sigma, context, _ = _inputs(29, 1, (8, 8), [(8, 12)], 5, False)
    plain = net(latent, sigma, context, ref_latents=refs)
    seen = []

    def passthrough(args, extra):
        seen.append((args["img"].shape[1], args["vec"].shape[0]))
        return extra["original_block"](args)

    options = {"patches_replace": {"dit": {("double_block", 0): passthrough}}}
    torch.testing.assert_close(net(latent, sigma, context, ref_latents=refs, transformer_options=options), plain)
    assert seen == [(16 + 24, 2)]  # image then reference tokens; vec holds the embeddings of t and 0
    # A ControlNet's residual covers the output image's tokens only.
    control = {"input": [torch.ones(1, 16, TINY_QWEN_DIT.inner_dim)]}
    out = net(latent, sigma, context, ref_latents=refs, control=control)
    assert out.shape == latent.shape and not torch.allclose(out, plain)
