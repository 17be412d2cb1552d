"""The HunyuanImage 2.1 DiT: real layout at full size, parity with diffusers, MeanFlow time, hooks, bad inputs."""

import math

import pytest
import torch

from comfyui_mmdit.model_defs.hunyuan_image.transformer import (
    HunyuanImageConfig, HunyuanImageTransformer, config_from_shapes, meanflow_end_timestep,
)
from comfyui_mmdit.model_defs.ops import StandaloneOps

from helpers import manifest, manifest_shapes

# fp32 on CPU, same weights and inputs. What differs: summation order (diffusers moves the real text tokens
# to the front, we mask; fused multiply-adds in the modulation) and the RoPE form.
NETWORK_ATOL = 1e-5

# The composed comfyui -> diffusers mapping of the distilled model (the base model's mapping is the same
# without guidance_in / time_r_in, and the refiner's names are the same). Row slices are in units of the
# full-size hidden width; they are rescaled to the tiny width.
MAPPING = "mapping.hunyuanimage21_distilled_dit.comfyui_to_diffusers"
FULL_HIDDEN = 3584

TINY = dict(hidden_size=64, num_heads=2, depth_double=2, depth_single=2, context_dim=48, refiner_depth=2)
TINY_BASE = HunyuanImageConfig(**TINY, axes_dims=(16, 16), byt5_in_dim=40)
TINY_DISTILLED = HunyuanImageConfig(**TINY, axes_dims=(16, 16), byt5_in_dim=40, guidance_embed=True, meanflow=True)
TINY_REFINER = HunyuanImageConfig(**TINY, axes_dims=(4, 14, 14), patch_size=(1, 1, 1), in_channels=128,
                                  byt5=False, guidance_embed=True, meanflow=True)
TINY_CONFIGS = {"base": TINY_BASE, "distilled": TINY_DISTILLED, "refiner": TINY_REFINER}


@pytest.mark.parametrize("name,variant,flags", [
    ("hunyuanimage21_dit", "base", dict(byt5=True, guidance_embed=False, meanflow=False)),
    ("hunyuanimage21_distilled_dit", "distilled", dict(byt5=True, guidance_embed=True, meanflow=True)),
    ("hunyuanimage21_refiner_dit", "refiner", dict(byt5=False, guidance_embed=True, meanflow=True)),
])
def test_full_size_network_matches_published_checkpoint(name, variant, flags):
    shapes = manifest_shapes(f"{name}.comfyui")
    config = config_from_shapes(shapes)
    assert config.variant == variant
    if variant == "refiner":
        expected = HunyuanImageConfig(hidden_size=3328, num_heads=26, in_channels=128, out_channels=64,
                                      patch_size=(1, 1, 1), axes_dims=(16, 56, 56), **flags)
    else:  # 20 + 40 blocks, 28 x 128 heads, RoPE (64, 64) theta 256, patch 1 over 64 channels, text 3584
        expected = HunyuanImageConfig(**flags)
    assert config == expected
    # ComfyUI's own detection of the same file agrees
    detected = manifest(f"{name}.comfyui")["config"]["detected_unet_config"]
    assert (config.hidden_size, config.num_heads, config.depth_double, config.depth_single) == (
        detected["hidden_size"], detected["num_heads"], detected["depth"], detected["depth_single_blocks"])
    assert list(config.axes_dims) == detected["axes_dim"] and config.rope_theta == detected["theta"]
    assert list(config.patch_size) == detected["patch_size"]

    network = HunyuanImageTransformer(config, StandaloneOps, dtype=torch.bfloat16, device="meta")
    ours = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    assert sorted(ours.keys() - shapes.keys()) == []
    assert sorted(shapes.keys() - ours.keys()) == []
    assert {k: v for k, v in ours.items() if shapes[k] != v} == {}
    assert sum(math.prod(s) for s in ours.values()) == manifest(f"{name}.comfyui")["total_params"]


def test_config_from_shapes_rejects_nonsense():
    shapes = manifest_shapes("hunyuanimage21_dit.comfyui")
    with pytest.raises(KeyError):
        config_from_shapes({k: v for k, v in shapes.items() if k != "final_layer.linear.weight"})
    with pytest.raises(ValueError, match="2-D or 3-D patch"):
        config_from_shapes({**shapes, "img_in.proj.weight": (3584, 64)})
    with pytest.raises(ValueError, match="not numbered"):
        config_from_shapes({k: v for k, v in shapes.items() if not k.startswith("double_blocks.3.")})
    with pytest.raises(ValueError, match="heads"):
        config_from_shapes({**shapes, "double_blocks.0.img_attn.norm.query_norm.scale": (100,)})


def random_state_dict(config: HunyuanImageConfig, seed: int) -> dict[str, torch.Tensor]:
    """Random weights in the network's (ComfyUI) layout: matrices ~ N(0, 1/fan_in), norm weights near 1."""
    meta = HunyuanImageTransformer(config, StandaloneOps, device="meta")
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in meta.state_dict().items():
        shape = tensor.shape
        if name.endswith(".scale") or (len(shape) == 1 and "norm" in name and name.endswith(".weight")):
            state[name] = 1 + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) >= 2:
            state[name] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        else:
            state[name] = 0.1 * torch.randn(shape, generator=g)
    return state


def to_diffusers(state: dict[str, torch.Tensor], hidden: int) -> dict[str, torch.Tensor]:
    """Apply the published comfyui -> diffusers mapping (rename / slice_rows / swap_halves) to a tiny state
    dict: entries whose source the tiny network lacks (deeper blocks, absent embedders) are skipped, and row
    slices are rescaled from the full width to `hidden`."""
    factor = hidden / FULL_HIDDEN
    out, used = {}, set()
    for entry in manifest(MAPPING)["mapping"]:
        src = state.get(entry["src"])
        if src is None:
            continue
        used.add(entry["src"])
        if entry["op"] == "rename":
            value = src
        elif entry["op"] == "slice_rows":
            start, end = (row * factor for row in entry["src_rows"])
            assert start.is_integer() and end.is_integer()
            value = src[int(start):int(end)]
        elif entry["op"] == "swap_halves":
            half = src.shape[0] // 2
            value = torch.cat((src[half:], src[:half]))
        else:
            raise AssertionError(f"unexpected mapping op {entry['op']}")
        assert "reshape" not in entry
        out[entry["dst"]] = value
    assert sorted(state.keys() - used) == []
    return out


def diffusers_reference(config: HunyuanImageConfig, state):
    from diffusers import HunyuanImageTransformer2DModel

    reference = HunyuanImageTransformer2DModel(
        in_channels=config.in_channels, out_channels=config.out_channels, num_attention_heads=config.num_heads,
        attention_head_dim=config.head_dim, num_layers=config.depth_double, num_single_layers=config.depth_single,
        num_refiner_layers=config.refiner_depth, mlp_ratio=config.mlp_ratio, patch_size=config.patch_size,
        guidance_embeds=config.guidance_embed, text_embed_dim=config.context_dim,
        text_embed_2_dim=config.byt5_in_dim if config.byt5 else None, rope_theta=config.rope_theta,
        rope_axes_dim=config.axes_dims, use_meanflow=config.meanflow,
    ).eval()
    reference.load_state_dict(to_diffusers(state, config.hidden_size), strict=True)
    return reference


@pytest.fixture(scope="module")
def pairs():
    torch.manual_seed(0)
    out = {}
    for seed, (variant, config) in enumerate(TINY_CONFIGS.items()):
        state = random_state_dict(config, seed=11 + seed)
        ours = HunyuanImageTransformer(config_from_shapes({k: v.shape for k, v in state.items()}), StandaloneOps,
                                       device="meta")
        assert ours.config == config
        ours.load_state_dict(state, assign=True)
        out[variant] = (diffusers_reference(config, state), ours.eval())
    return out


def padding_mask(batch: int, tokens: int, pad: int) -> torch.Tensor:
    """Sample i has pad + i padded tokens at the end (a different real length per sample)."""
    mask = torch.ones(batch, tokens, dtype=torch.long)
    for i in range(batch):
        if pad + i:
            mask[i, tokens - pad - i:] = 0
    return mask


def make_inputs(config, batch, height, width, text_len, text_pad, glyph_len, glyph_pad, seed):
    g = torch.Generator().manual_seed(seed)
    spatial = (1, height, width) if len(config.patch_size) == 3 else (height, width)
    inputs = dict(
        x=torch.randn(batch, config.in_channels, *spatial, generator=g),
        timestep=torch.rand(batch, generator=g) * 1000,
        context=torch.randn(batch, text_len, config.context_dim, generator=g),  # padding is NOT zeroed
        attention_mask=padding_mask(batch, text_len, text_pad) if text_pad is not None else None,
    )
    if glyph_len:
        inputs["txt_byt5"] = torch.randn(batch, glyph_len, config.byt5_in_dim, generator=g)
        inputs["txt_byt5_mask"] = padding_mask(batch, glyph_len, glyph_pad) if glyph_pad is not None else None
    if config.guidance_embed:
        inputs["guidance"] = 1 + 4 * torch.rand(batch, generator=g)
    if config.meanflow:
        inputs["timestep_r"] = inputs["timestep"] * torch.rand(batch, generator=g)
    return inputs


def reference_forward(reference, inputs):
    batch, text_len = inputs["context"].shape[:2]
    text_mask = inputs["attention_mask"]
    kwargs = dict(
        hidden_states=inputs["x"], timestep=inputs["timestep"], encoder_hidden_states=inputs["context"],
        encoder_attention_mask=text_mask if text_mask is not None else torch.ones(batch, text_len),
        timestep_r=inputs.get("timestep_r"), return_dict=False,
    )
    if "txt_byt5" in inputs:
        glyph, glyph_mask = inputs["txt_byt5"], inputs["txt_byt5_mask"]
        kwargs["encoder_hidden_states_2"] = glyph
        kwargs["encoder_attention_mask_2"] = glyph_mask if glyph_mask is not None else torch.ones(glyph.shape[:2])
    if "guidance" in inputs:
        kwargs["guidance"] = inputs["guidance"] * 1000  # the diffusers pipeline scales it; our network does
    return reference(**kwargs)[0]


CASES = [
    # variant, batch, height, width, text tokens, text padding, glyph tokens, glyph padding
    ("base", 1, 8, 8, 12, None, 0, None),      # square, no masks at all
    ("base", 2, 6, 10, 11, 2, 0, None),        # non-square, batch 2, padded text (3 and 2 real tokens fewer)
    ("base", 2, 7, 5, 9, 1, 6, 1),             # odd sizes, padded text and padded glyph text
    ("base", 2, 5, 9, 8, None, 7, 2),          # only the glyph text is padded
    ("base", 2, 6, 6, 10, 3, 5, None),         # glyph text without a mask (all real)
    ("distilled", 2, 6, 10, 11, 2, 6, 1),      # guidance + MeanFlow end time, everything padded
    ("distilled", 1, 7, 5, 9, None, 0, None),  # no glyph text
    ("distilled", 2, 9, 4, 7, 0, 4, 0),        # masks given but nothing padded
    ("refiner", 2, 6, 5, 10, 2, 0, None),      # 3-D patch, axes (frame, row, column), 128 input channels
]
MEASURED = {}


@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, c)) for c in CASES])
@torch.no_grad()
def test_matches_diffusers(pairs, case):
    variant, *sizes = case
    reference, ours = pairs[variant]
    inputs = make_inputs(ours.config, *sizes, seed=CASES.index(case))
    expected = reference_forward(reference, inputs)
    got = ours(**inputs)
    assert got.shape == expected.shape == (inputs["x"].shape[0], ours.config.out_channels, *inputs["x"].shape[2:])
    MEASURED["-".join(map(str, case))] = (got - expected).abs().max().item()
    torch.testing.assert_close(got, expected, atol=NETWORK_ATOL, rtol=0)
    assert expected.abs().max() > 0.1  # a real output, not a degenerate one


@torch.no_grad()
def test_text_padded_at_the_front_matches_diffusers(pairs):
    """diffusers' token refiner keeps token 0 visible even when it is padding; so does ours."""
    reference, ours = pairs["base"]
    inputs = make_inputs(ours.config, 2, 5, 6, 9, None, 4, 1, seed=20)
    inputs["attention_mask"] = padding_mask(2, 9, 2).flip(-1)
    got, expected = ours(**inputs), reference_forward(reference, inputs)
    MEASURED["base-left-padded"] = (got - expected).abs().max().item()
    torch.testing.assert_close(got, expected, atol=NETWORK_ATOL, rtol=0)


@torch.no_grad()
def test_padded_tokens_do_not_matter_and_a_full_mask_is_no_mask(pairs):
    _, ours = pairs["base"]
    inputs = make_inputs(ours.config, 2, 6, 6, 10, 3, 5, 1, seed=5)
    base = ours(**inputs)
    changed = dict(inputs)
    for key, mask_key in (("context", "attention_mask"), ("txt_byt5", "txt_byt5_mask")):
        padded = inputs[mask_key] == 0
        changed[key] = torch.where(padded[..., None], 100 * torch.randn_like(inputs[key]), inputs[key])
    torch.testing.assert_close(ours(**changed), base, atol=1e-6, rtol=0)

    unmasked = make_inputs(ours.config, 2, 6, 6, 10, None, 5, None, seed=6)
    plain = ours(**unmasked)
    full = dict(unmasked, attention_mask=torch.ones(2, 10), txt_byt5_mask=torch.ones(2, 5, dtype=torch.bool))
    torch.testing.assert_close(ours(**full), plain, atol=1e-6, rtol=0)


@torch.no_grad()
def test_latent_layouts_and_batch_broadcast(pairs):
    _, ours = pairs["base"]
    inputs = make_inputs(ours.config, 2, 5, 7, 6, None, 0, None, seed=7)
    out = ours(**inputs)
    five_d = ours(**dict(inputs, x=inputs["x"].unsqueeze(2)))
    assert five_d.shape == (2, 64, 1, 5, 7)
    torch.testing.assert_close(five_d[:, :, 0], out)
    # one prompt for the whole batch is repeated; one timestep value is broadcast
    one = dict(inputs, context=inputs["context"][:1], timestep=inputs["timestep"][:1])
    both = dict(inputs, context=inputs["context"][:1].expand(2, -1, -1), timestep=inputs["timestep"][:1].expand(2))
    torch.testing.assert_close(ours(**one), ours(**both))


@torch.no_grad()
def test_meanflow_end_time_comes_from_comfyui_sigmas(pairs):
    _, ours = pairs["distilled"]
    inputs = make_inputs(ours.config, 1, 4, 4, 5, None, 0, None, seed=8)
    schedule = torch.tensor([1.0, 0.8, 0.5, 0.0])
    del inputs["timestep_r"]
    inputs["timestep"] = torch.tensor([800.0])
    options = {"sigmas": torch.tensor([0.8]), "sample_sigmas": schedule}
    assert meanflow_end_timestep(options).tolist() == [500.0]
    assert meanflow_end_timestep({"sigmas": torch.tensor([0.5]), "sample_sigmas": schedule}).tolist() == [0.0]
    assert meanflow_end_timestep({"sigmas": torch.tensor([0.0]), "sample_sigmas": schedule}).tolist() == [0.0]
    assert meanflow_end_timestep({"sigmas": torch.tensor([0.3]), "sample_sigmas": schedule}) is None
    assert meanflow_end_timestep({}) is None

    explicit = ours(**inputs, timestep_r=torch.tensor([500.0]))
    torch.testing.assert_close(ours(**inputs, transformer_options=options), explicit)
    # without an end time (or with disable_time_r, as ComfyUI's refiner sets) time_r_in is not used
    plain = ours(**inputs)
    assert not torch.allclose(plain, explicit)
    torch.testing.assert_close(ours(**inputs, transformer_options=options, disable_time_r=True), plain)


@torch.no_grad()
def test_block_hooks_for_both_block_kinds(pairs):
    _, ours = pairs["base"]
    inputs = make_inputs(ours.config, 1, 4, 6, 5, 1, 3, None, seed=9)
    plain = ours(**inputs)
    calls = []

    def passthrough(args, extra):
        calls.append(sorted(args))
        return extra["original_block"](args)

    replace = {("double_block", 1): passthrough, ("single_block", 0): passthrough}
    options = {"patches_replace": {"dit": replace}}
    torch.testing.assert_close(ours(**inputs, transformer_options=options), plain)
    assert calls == [  # ComfyUI's HunyuanVideo / HunyuanImage arg names
        ["attention_mask", "img", "pe", "transformer_options", "txt", "vec"],
        ["attention_mask", "img", "pe", "transformer_options", "vec"],
    ]
    assert options["block_type"] == "single" and options["block_index"] == 1 and options["total_blocks"] == 2

    def reverse_features(args, extra):  # (a uniform scale would vanish in the final LayerNorm)
        out = extra["original_block"](args)
        return {**out, "img": out["img"].flip(-1)}

    for key in (("double_block", 0), ("single_block", 1)):
        changed = ours(**inputs, transformer_options={"patches_replace": {"dit": {key: reverse_features}}})
        assert (changed - plain).abs().max() > 1e-3, key

    post = []

    def post_patch(args):
        post.append(args["block_index"])
        return {"img": args["img"], "txt": args["txt"]}

    ours(**inputs, transformer_options={"patches": {"double_block": [post_patch]}})
    assert post == [0, 1]

    # (a constant add would vanish in the LayerNorms: every feature moves alike)
    add = torch.randn(1, 4 * 6, ours.config.hidden_size, generator=torch.Generator().manual_seed(1))
    for control in ({"input": [None, add]}, {"output": [add]}):
        assert (ours(**inputs, control=control) - plain).abs().max() > 1e-3


def test_bad_latents_are_clear_errors(pairs):
    _, ours = pairs["base"]
    context = torch.zeros(1, 3, ours.config.context_dim)
    with pytest.raises(ValueError, match="64-channel latents; got 16 channels"):
        ours(torch.zeros(1, 16, 8, 8), torch.tensor([500.0]), context)
    with pytest.raises(ValueError, match="single images; got a latent with 3 frames"):
        ours(torch.zeros(1, 64, 3, 8, 8), torch.tensor([500.0]), context)
    with pytest.raises(ValueError, match="does not fit 3 tokens"):
        ours(torch.zeros(1, 64, 4, 4), torch.tensor([500.0]), context, attention_mask=torch.ones(1, 5))


def test_report_measured_differences():
    """Runs last in this file: prints the measured max abs differences (pytest -s shows them)."""
    if MEASURED:
        print("\nmax abs diff vs diffusers:", {k: f"{v:.2e}" for k, v in MEASURED.items()})
