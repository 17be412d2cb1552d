"""The HunyuanImage 2.1 refiner: its network against diffusers, its files in every layout and format, the
refine stage's math against the official formulas, its text encode and the whole stage against diffusers'
HunyuanImageRefinerPipeline, and the model-in-the-wrong-stage errors.

Where diffusers departs from the official code and the test follows the official one (said at each test):
  * time_r_in: the official refiner checkpoint has it, diffusers' conversion drops it. The official
    pipeline never passes timesteps_r, so the official formula is vec = time_in(t) + guidance_in(g): our
    network loaded WITH time_r_in, and given the sampler bookkeeping from which it derives a MeanFlow end
    time for the distilled model, must equal diffusers' network without it.
  * shift: diffusers' refiner takes its shift from the published scheduler config (not readable here); the
    stage-parity pipeline is given the official shift 4 (refiner.py says why).
"""

from __future__ import annotations

import math

import pytest
import torch

from comfyui_mmdit.loaders.diffusion_model import read_diffusion_model
from comfyui_mmdit.loaders.quant.tensor import FP8_SCALED, GGUF, QuantizedTensor
from comfyui_mmdit.loaders.tokenizers import load_tokenizer
from comfyui_mmdit.model_defs import families
from comfyui_mmdit.model_defs.hunyuan_image import refiner
from comfyui_mmdit.model_defs.hunyuan_image import text as hunyuan_text
from comfyui_mmdit.model_defs.hunyuan_image.transformer import HunyuanImageTransformer, config_from_shapes
from comfyui_mmdit.model_defs.ops import StandaloneOps
from comfyui_mmdit.nodes.host.standalone import StandaloneHost
from comfyui_mmdit.tools.convert import convert
from comfyui_mmdit.tools.tiny_models import (
    TINY_HUNYUAN_DIT, TINY_HUNYUAN_REFINER_DIT, random_state_dict, randomise_vae_, tiny_hunyuan_dit_state_dict,
    tiny_hunyuan_refiner_dit_state_dict, write_safetensors, write_tiny_hunyuan_refiner_dit,
)
from comfyui_mmdit.tools.tiny_tokenizer import write_tiny_qwen_tokenizer

from helpers import comfyui_qwen25vl_names, fp8_variants, official_fp8_release, transformers_qwen25vl
from hunyuan_layouts import in_layout

NETWORK_ATOL = 1e-5  # fp32, same weights: summation order only (masking vs moving padded tokens)
EXACT_ATOL = 1e-5  # quantized files vs float32 files of the values they stand for
STAGE_ATOL = 1e-4  # whole refine stage, latents and decoded images in [0, 1]
CONFIG = TINY_HUNYUAN_REFINER_DIT
HIDDEN = CONFIG.hidden_size
LAYOUTS = ("comfyui", "fused_original", "tencent", "diffusers")
MEASURED: dict[str, float] = {}


def strong_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """ComfyUI-layout weights of the tiny refiner with matrices ~ N(0, 1/fan_in) (outputs of order one, so
    a wrong term shows), norm weights near 1, other vectors small."""
    meta = HunyuanImageTransformer(CONFIG, StandaloneOps, device="meta")
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in meta.state_dict().items():
        shape = tensor.shape
        noise = torch.randn(shape, generator=g)
        if name.endswith(".scale") or (len(shape) == 1 and "norm" in name and name.endswith(".weight")):
            state[name] = 1 + 0.1 * noise
        elif len(shape) >= 2:
            state[name] = noise / math.sqrt(math.prod(shape[1:]))
        else:
            state[name] = 0.1 * noise
    return state


def without_time_r(state: dict) -> dict:
    """What diffusers' conversion keeps of a refiner checkpoint."""
    return {k: v for k, v in state.items() if not k.startswith("time_r_in.")}


def diffusers_refiner(state: dict, use_meanflow: bool = False):
    """diffusers' HunyuanImageTransformer2DModel with the refiner config of its conversion script, at the
    tiny size, holding `state` (ComfyUI layout) through the published mapping."""
    from diffusers import HunyuanImageTransformer2DModel

    network = HunyuanImageTransformer2DModel(
        in_channels=128, out_channels=64, num_attention_heads=CONFIG.num_heads, attention_head_dim=CONFIG.head_dim,
        num_layers=CONFIG.depth_double, num_single_layers=CONFIG.depth_single, num_refiner_layers=2, mlp_ratio=4,
        patch_size=(1, 1, 1), text_embed_dim=CONFIG.context_dim, guidance_embeds=True, rope_axes_dim=CONFIG.axes_dims,
        use_meanflow=use_meanflow).eval()
    weights = in_layout(without_time_r(state), "diffusers", "refiner_dit", HIDDEN)
    if use_meanflow:  # the distilled model's names for the same embedder (the refiner mapping has none)
        for ours, theirs in (("in_layer", "linear_1"), ("out_layer", "linear_2")):
            for p in ("weight", "bias"):
                weights[f"time_guidance_embed.timestep_embedder_r.{theirs}.{p}"] = state[f"time_r_in.{ours}.{p}"]
    network.load_state_dict(weights, strict=True)
    return network


def ours_from(state: dict) -> HunyuanImageTransformer:
    network = HunyuanImageTransformer(config_from_shapes({k: v.shape for k, v in state.items()}), StandaloneOps,
                                      device="meta")
    network.load_state_dict(state, assign=True)
    return network.eval()


@pytest.fixture(scope="module")
def networks():
    torch.manual_seed(0)
    state = strong_state_dict(seed=31)
    ours = ours_from(state)
    assert ours.config == CONFIG and ours.config.variant == "refiner" and ours.time_r_in is not None
    return state, ours, diffusers_refiner(state)


def padding_mask(batch: int, tokens: int, pad: int | None):
    if pad is None:
        return None
    mask = torch.ones(batch, tokens, dtype=torch.long)
    for i in range(batch):
        if pad + i:
            mask[i, tokens - pad - i:] = 0
    return mask


def network_inputs(batch, height, width, text_len, text_pad, seed):
    g = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(batch, 128, 1, height, width, generator=g),
        timestep=torch.rand(batch, generator=g) * 1000,
        context=torch.randn(batch, text_len, CONFIG.context_dim, generator=g),  # padding not zeroed
        attention_mask=padding_mask(batch, text_len, text_pad),
        guidance=1 + 4 * torch.rand(batch, generator=g),
    )


def diffusers_forward(reference, inputs, timestep_r=None):
    x, context, mask = inputs["x"], inputs["context"], inputs["attention_mask"]
    return reference(hidden_states=x, timestep=inputs["timestep"], encoder_hidden_states=context,
                     encoder_attention_mask=mask if mask is not None else torch.ones(context.shape[:2]),
                     guidance=inputs["guidance"] * 1000, timestep_r=timestep_r, return_dict=False)[0]


NETWORK_CASES = [
    # batch, latent height, width, text tokens, text padding (None: no mask)
    (1, 8, 8, 12, None),   # square, no mask
    (2, 6, 10, 11, 2),     # non-square, batch 2, padded text (2 and 3 tokens)
    (2, 7, 5, 9, 1),       # odd sizes, padded text
    (2, 5, 9, 8, None),    # batch 2, no padding
    (1, 3, 11, 6, 0),      # a mask given with nothing padded
    (2, 1, 1, 5, 1),       # a single latent cell
]


@pytest.mark.parametrize("case", NETWORK_CASES, ids=["-".join(map(str, c)) for c in NETWORK_CASES])
@torch.no_grad()
def test_network_matches_diffusers_refiner(networks, case):
    """The official formula (no time_r_in term): ours keeps time_r_in, is handed ComfyUI's sampler bookkeeping
    (from which the distilled model derives its MeanFlow end time), and still equals diffusers' refiner."""
    _, ours, reference = networks
    inputs = network_inputs(*case, seed=NETWORK_CASES.index(case))
    expected = diffusers_forward(reference, inputs)
    sigma = inputs["timestep"][:1] / 1000
    options = {"sigmas": sigma, "sample_sigmas": torch.cat([torch.ones(1), sigma, torch.zeros(1)])}
    got = ours(**inputs, transformer_options=options)
    assert got.shape == expected.shape == (case[0], 64, 1, case[1], case[2])
    MEASURED["network " + "-".join(map(str, case))] = (got - expected).abs().max().item()
    torch.testing.assert_close(got, expected, atol=NETWORK_ATOL, rtol=0)
    assert expected.abs().max() > 0.1
    # a 4-D latent (no frame axis) is the same single frame
    flat = ours(**dict(inputs, x=inputs["x"][:, :, 0]))
    torch.testing.assert_close(flat, got[:, :, 0], atol=1e-6, rtol=0)


@torch.no_grad()
def test_time_r_in_only_when_asked_and_then_the_official_meanflow_formula(networks):
    """time_r_in is in the checkpoint (official use_meanflow=True) but unused unless timestep_r is given;
    given, it follows the official formula vec = (time_in(t) + time_r_in(t_r)) / 2 (+ guidance), which is
    diffusers' use_meanflow formula."""
    state, ours, reference = networks
    inputs = network_inputs(2, 4, 6, 7, 1, seed=40)
    plain = ours(**inputs)
    torch.testing.assert_close(ours(**inputs, disable_time_r=True), plain, atol=0, rtol=0)
    end = inputs["timestep"] * 0.5
    with_end = ours(**inputs, timestep_r=end)
    assert (with_end - plain).abs().max() > 1e-3
    meanflow_reference = diffusers_refiner(state, use_meanflow=True)
    torch.testing.assert_close(with_end, diffusers_forward(meanflow_reference, inputs, timestep_r=end),
                               atol=NETWORK_ATOL, rtol=0)


@torch.no_grad()
def test_padded_text_does_not_matter(networks):
    _, ours, _ = networks
    inputs = network_inputs(2, 5, 4, 9, 2, seed=41)
    padded = inputs["attention_mask"] == 0
    changed = dict(inputs, context=torch.where(padded[..., None], 50 * torch.randn_like(inputs["context"]),
                                               inputs["context"]))
    torch.testing.assert_close(ours(**changed), ours(**inputs), atol=1e-6, rtol=0)
    # one sample's real tokens alone = that sample in the padded batch
    single = dict(inputs, x=inputs["x"][1:], timestep=inputs["timestep"][1:], guidance=inputs["guidance"][1:],
                  context=inputs["context"][1:, :6], attention_mask=None)
    torch.testing.assert_close(ours(**single), ours(**inputs)[1:], atol=NETWORK_ATOL, rtol=0)


# --- files: every layout, FP8, GGUF -----------------------------------------------------------------------------
def _load(path):
    return StandaloneHost(models_dir=path.parent, device="cpu").load_diffusion_model(read_diffusion_model(path))


@torch.no_grad()
def _run(network) -> torch.Tensor:
    inputs = network_inputs(1, 4, 6, 7, 2, seed=50)
    return network(inputs["x"][:, :, 0], inputs["timestep"], inputs["context"][:1],
                   attention_mask=inputs["attention_mask"][:1], guidance=inputs["guidance"])


@pytest.fixture(scope="module")
def bf16(tmp_path_factory):
    """ComfyUI-layout refiner weights (bf16-exact values, float32), its bf16 file and that file's output."""
    root = tmp_path_factory.mktemp("refiner_bf16")
    path = write_tiny_hunyuan_refiner_dit(root / "hunyuanimage-refiner_bf16.safetensors", seed=2)
    state = {k: v.to(torch.bfloat16).float() for k, v in tiny_hunyuan_refiner_dit_state_dict(seed=2).items()}
    return state, path, _run(_load(path).network)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_loads_as_the_refiner_and_computes_the_same(bf16, tmp_path, layout):
    state, _, expected = bf16
    weights = without_time_r(state) if layout == "diffusers" else state
    path = write_safetensors(in_layout(weights, layout, "refiner_dit", HIDDEN),
                             tmp_path / f"hunyuanimage-refiner_{layout}.safetensors", dtype=torch.bfloat16)
    model_file = read_diffusion_model(path)
    where = {"comfyui": "ComfyUI layout", "fused_original": "original names, fused q/k/v",
             "tencent": "official Tencent layout, split q/k/v", "diffusers": "diffusers layout"}[layout]
    assert model_file.identity.description == f"HunyuanImage 2.1 refiner diffusion model ({where})"
    assert model_file.identity.supported and model_file.config.variant == "refiner"
    assert model_file.family.variant_of(model_file.config) == "refiner"
    assert model_file.config == (CONFIG if layout != "diffusers" else
                                 type(CONFIG)(**{**CONFIG.__dict__, "meanflow": False}))
    out = _run(_load(path).network)
    MEASURED[f"layout {layout}"] = (out - expected).abs().max().item()
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_full_checkpoint_prefix_and_diffusers_folder(bf16, tmp_path):
    state, _, expected = bf16
    prefixed = write_safetensors(state, tmp_path / "refiner_full.safetensors", dtype=torch.bfloat16,
                                 prefix="model.diffusion_model.")
    assert read_diffusion_model(prefixed).identity.prefix == "model.diffusion_model."
    torch.testing.assert_close(_run(_load(prefixed).network), expected, atol=1e-6, rtol=0)
    repo = tmp_path / "HunyuanImage-2.1-Refiner-Diffusers"
    write_safetensors(in_layout(without_time_r(state), "diffusers", "refiner_dit", HIDDEN),
                      repo / "transformer" / "diffusion_pytorch_model.safetensors", dtype=torch.bfloat16)
    model_file = read_diffusion_model(repo)
    assert model_file.identity.layout == "diffusers" and model_file.config.variant == "refiner"


def _quantized(model) -> dict[str, QuantizedTensor]:
    return {n: p for n, p in model.network.named_parameters() if isinstance(p, QuantizedTensor)}


def _check_exact(out, reference, what):
    difference = (out - reference).abs().max().item()
    MEASURED[what] = difference
    assert difference <= EXACT_ATOL, (what, difference)


def test_comfyui_scaled_fp8(bf16, tmp_path):
    state, _, original = bf16
    fp8_file, values_file = fp8_variants(state, tmp_path, "hunyuanimage-refiner")["comfyui_scaled"]
    model = _load(fp8_file)
    assert model.network.config.variant == "refiner"
    quantized = _quantized(model)
    assert set(quantized) == {k for k, v in state.items() if v.ndim >= 2}
    assert all(q.qformat == FP8_SCALED for q in quantized.values())
    out = _run(model.network)
    _check_exact(out, _run(_load(values_file).network), "ComfyUI scaled FP8")
    assert ((out - original).norm() / original.norm()).item() < 0.1  # tiny weights sit in e4m3's subnormals


def test_official_tencent_fp8_with_its_scale_file(bf16, tmp_path):
    """hunyuanimage-refiner_fp8.safetensors + hunyuanimage-refiner_fp8_scale.safetensors (hyimage model_zoo's
    names): split q/k/v with a scale each, fused into one FP8 tensor with a scale per row."""
    state, _, original = bf16
    tencent = in_layout(state, "tencent", "refiner_dit", HIDDEN)
    path, values, _ = official_fp8_release(tencent, tmp_path / "fp8", in_file_scales=False,
                                           name="hunyuanimage-refiner_fp8")
    model = _load(path)
    assert model.network.config.variant == "refiner"
    qkv = _quantized(model)["double_blocks.1.img_attn.qkv.weight"]
    assert qkv.qformat == FP8_SCALED and qkv.scale.unique().numel() == 3
    out = _run(model.network)
    values_file = write_safetensors(values, tmp_path / "values" / "hunyuanimage-refiner_fp32.safetensors")
    _check_exact(out, _run(_load(values_file).network), "official FP8")
    assert ((out - original).norm() / original.norm()).item() < 0.01


@pytest.mark.parametrize("qtype", ["Q8_0"])  # the K-types' handling is the base model's (test_hunyuan_quantized)
def test_gguf_converted_by_the_pack(bf16, tmp_path, qtype):
    """`cli.py convert` of the refiner from the ComfyUI and the official Tencent layout: same file, loads
    quantized as the refiner, computes exactly the values its blocks stand for."""
    import gguf
    import numpy as np

    state, source, original = bf16
    tencent = write_safetensors(in_layout(state, "tencent", "refiner_dit", HIDDEN),
                                tmp_path / "hunyuanimage-refiner.safetensors", dtype=torch.bfloat16)
    from_comfyui = convert(source, tmp_path / f"comfyui-{qtype}.gguf", qtype)
    from_tencent = convert(tencent, tmp_path / f"tencent-{qtype}.gguf", qtype)

    def values_of(path):
        out = {}
        for tensor in gguf.GGUFReader(str(path)).tensors:
            shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
            array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            out[tensor.name] = torch.from_numpy(np.array(array, dtype=np.float32)).reshape(shape)
        return out

    values = values_of(from_comfyui)
    assert values.keys() == state.keys()
    assert all(torch.equal(values_of(from_tencent)[k], v) for k, v in values.items())
    model = _load(from_tencent)
    assert model.network.config == CONFIG
    quantized = _quantized(model)
    assert quantized and all(q.qformat == GGUF for q in quantized.values())
    assert not any(k.startswith(("img_in.", "time_r_in.", "guidance_in.", "final_layer.")) for k in quantized)
    out = _run(model.network)
    values_file = write_safetensors(values, tmp_path / "values" / "hunyuanimage-refiner_fp32.safetensors")
    _check_exact(out, _run(_load(values_file).network), f"GGUF {qtype}")
    assert ((out - original).norm() / original.norm()).item() < 0.03


# --- which model goes where -------------------------------------------------------------------------------------
def test_refiner_and_base_are_told_apart_with_clear_errors():
    base = tiny_hunyuan_dit_state_dict()
    base_config = config_from_shapes({k: v.shape for k, v in base.items()})
    assert refiner.model_variant(base_config) == "base" and refiner.model_variant(CONFIG) == "refiner"
    assert refiner.model_variant(object()) is None
    refiner.check_generating_model("hunyuan_image", "base")
    refiner.check_generating_model("hunyuan_image", "distilled")
    refiner.check_generating_model("qwen_image", "base")
    with pytest.raises(refiner.WrongStageModel, match="this is the HunyuanImage 2.1 refiner.*use the MMDiT Refiner "
                                                      "node for it.*base or distilled"):
        refiner.check_generating_model("hunyuan_image", "refiner")
    refiner.check_refiner_model("hunyuan_image", "refiner")
    with pytest.raises(ValueError, match="MMDiT Refiner needs the HunyuanImage 2.1 refiner diffusion model.*this is "
                                         "the HunyuanImage 2.1 distilled model.*MMDiT Sampler"):
        refiner.check_refiner_model("hunyuan_image", "distilled")
    with pytest.raises(ValueError, match="this is a Qwen-Image diffusion model"):
        refiner.check_refiner_model("qwen_image", "base", "Qwen-Image")
    # The family's record: the hosts load a refiner with its own official sampling.
    spec = families.FAMILIES["hunyuan_image"]
    official = spec.sampling_for(CONFIG)
    assert (official.steps, official.guidance_scale, official.shift) == (4, 3.5, 4.0)
    assert official.embedded_guidance and not official.meanflow and official.guidance is None
    assert spec.sampling_for(TINY_HUNYUAN_DIT).steps == 50  # the base model's is unchanged


# --- the stage's math against the official formulas ---------------------------------------------------------------
def test_official_settings_and_schedule():
    s = refiner.REFINER_SAMPLING
    assert (s.steps, s.guidance_scale, s.shift, s.condition_strength) == (4, 3.5, 4.0, 0.25)
    assert refiner.official_refiner_guidance("distilled") == 3.25 and refiner.official_refiner_guidance("base") == 3.5
    sigmas = refiner.refiner_sigmas()
    # the official get_timesteps_sigmas(4, shift=4): torch.linspace in float32, then the shift
    grid = torch.linspace(1, 0, 5)
    official = (4 * grid) / (1 + 3 * grid)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (5,) and sigmas[-1] == 0
    torch.testing.assert_close(sigmas, official, atol=1e-7, rtol=0)
    # diffusers' scheduler (shift 4) over the pipeline's linspace(1, 0, 5)[:-1]: exactly
    from diffusers import FlowMatchEulerDiscreteScheduler
    import numpy as np

    scheduler = FlowMatchEulerDiscreteScheduler(shift=4.0)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, 5)[:-1])
    assert torch.equal(scheduler.sigmas, sigmas) and torch.equal(scheduler.timesteps, refiner.refiner_timesteps(sigmas))


def test_pack_and_unpack_match_the_official_and_diffusers_reorders():
    from diffusers import HunyuanImageRefinerPipeline as Pipeline

    g = torch.Generator().manual_seed(3)
    latent = torch.randn(2, 32, 1, 3, 5, generator=g)
    packed = refiner.pack_latent(latent)
    assert packed.shape == (2, 64, 1, 3, 5)
    # official: cat first frame; b c f h w -> b f c h w; b (f n) c h w -> b f (n c) h w; back; * scale
    official = torch.cat((latent[:, :, :1], latent), dim=2).permute(0, 2, 1, 3, 4)
    official = official.reshape(2, 1, 2, 32, 3, 5).reshape(2, 1, 64, 3, 5).permute(0, 2, 1, 3, 4)
    assert torch.equal(packed, official.contiguous() * 1.03682)
    assert torch.equal(packed, Pipeline._reorder_image_tokens(latent) * 1.03682)
    assert torch.equal(packed[:, :32], packed[:, 32:])  # an image's latent twice
    prediction = torch.randn(2, 64, 1, 3, 5, generator=g)
    unpacked = refiner.unpack_latent(prediction)
    assert torch.equal(unpacked, Pipeline._restore_image_tokens_order(prediction / 1.03682))
    assert torch.equal(unpacked, prediction[:, 32:] / 1.03682)
    torch.testing.assert_close(refiner.unpack_latent(packed), latent, atol=1e-6, rtol=0)
    # ComfyUI's HunyuanImage21Refiner latent format (comfy/latent_formats.py, restated): a ComfyUI refiner
    # LATENT is the raw 32-channel latent, process_in / process_out are pack / unpack
    scaled = latent * 1.03682
    comfy_in = torch.cat((scaled[:, :, :1], scaled), dim=2).permute(0, 2, 1, 3, 4).reshape(2, 1, 64, 3, 5)
    comfy_in = comfy_in.permute(0, 2, 1, 3, 4)
    assert torch.equal(packed, comfy_in)
    comfy_out = (prediction / 1.03682).permute(0, 2, 1, 3, 4).reshape(2, 1, 2, 32, 3, 5).reshape(2, 2, 32, 3, 5)
    assert torch.equal(unpacked, comfy_out.permute(0, 2, 1, 3, 4)[:, :, 1:])
    assert refiner.pack_latent(latent[:, :, 0]).shape == (2, 64, 1, 3, 5)  # 4-D input too
    with pytest.raises(ValueError, match=r"\[B, 32, 1, H, W\]"):
        refiner.pack_latent(torch.zeros(1, 64, 1, 3, 5))


def test_condition_augmentation_and_noise_are_the_official_and_diffusers_draws():
    from diffusers.utils.torch_utils import randn_tensor

    packed = torch.randn(1, 64, 1, 2, 3)
    noise = torch.randn(1, 64, 1, 2, 3)
    # official _condition_aug(latents, noise, strength=0.25)
    assert torch.equal(refiner.condition_latent(packed, noise), 0.25 * noise + (1 - 0.25) * packed)
    with pytest.raises(ValueError):
        refiner.condition_latent(packed, noise, strength=1.5)
    # diffusers prepare_latents: latents, then the conditioning noise, from one generator
    shape = (2, 64, 1, 3, 4)
    reference = torch.Generator().manual_seed(9)
    first, second = randn_tensor(shape, generator=reference), randn_tensor(shape, generator=reference)
    start, condition = refiner.refiner_noise(shape, refiner.refiner_generator(9))
    assert torch.equal(start, first) and torch.equal(condition, second)
    # the posterior sample (diffusers DiagonalGaussianDistribution.sample)
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    moments = torch.randn(2, 64, 1, 3, 4) * 3
    posterior = DiagonalGaussianDistribution(moments)
    mean, logvar = moments.chunk(2, dim=1)
    assert torch.equal(refiner.sample_posterior(mean, logvar, torch.Generator().manual_seed(4)),
                       posterior.sample(torch.Generator().manual_seed(4)))


# --- text ---------------------------------------------------------------------------------------------------------
REFINER_PROMPTS = [
    "a watercolor painting of mountains at sunrise",
    'A neon sign that says "OPEN" above a door',
    "",
]
LONG_PROMPT = " ".join(["a photo of a cat sitting on a red chair, highly detailed, cinematic lighting"] * 30)


@pytest.fixture(scope="module")
def text_setup(tmp_path_factory):
    """A tiny random Qwen2.5-VL (4 layers) for diffusers (transformers') and ours (ComfyUI's single file)."""
    from comfyui_mmdit.loaders.text_encoder import load_text_encoder

    root = tmp_path_factory.mktemp("refiner_text")
    tokenizer_dir = write_tiny_qwen_tokenizer(root / "qwen_tokenizer")
    tokenizer = load_tokenizer(tokenizer_dir)
    reference = transformers_qwen25vl(len(tokenizer), layers=4)
    reference.load_state_dict(random_state_dict(reference, seed=11, scale=0.1))
    state = comfyui_qwen25vl_names(reference.state_dict(), language_model_only=True)
    ours = load_text_encoder(write_safetensors(state, root / "qwen.safetensors"), tokenizer_path=tokenizer_dir)
    return tokenizer, reference, ours


def diffusers_refiner_pipeline(tokenizer=None, text_encoder=None, transformer=None, vae=None, scheduler=None):
    from diffusers import HunyuanImageRefinerPipeline

    return HunyuanImageRefinerPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                       transformer=transformer)


@pytest.mark.parametrize("prompts", [[REFINER_PROMPTS[0]], [REFINER_PROMPTS[1]], REFINER_PROMPTS, [LONG_PROMPT],
                                     [REFINER_PROMPTS[0], LONG_PROMPT]],
                         ids=["short", "quoted", "batch-of-3", "long-cut", "short+long"])
@torch.no_grad()
def test_refiner_text_matches_diffusers(text_setup, prompts):
    """The refiner template, a fixed 36-token drop, at most 256 tokens (cut, not refused), third-from-last
    hidden state; diffusers pads to 256, ours stops at the longest row."""
    tokenizer, reference, ours = text_setup
    pipe = diffusers_refiner_pipeline(tokenizer=tokenizer, text_encoder=reference)
    assert (pipe.prompt_template_encode, pipe.prompt_template_encode_start_idx, pipe.tokenizer_max_length) == (
        hunyuan_text.REFINER_PROMPT_TEMPLATE, hunyuan_text.REFINER_TEMPLATE_DROP, hunyuan_text.REFINER_MAX_TOKENS)
    expected, expected_mask = pipe.encode_prompt(prompts, device="cpu", batch_size=len(prompts))
    got, mask = hunyuan_text.encode_refiner_qwen(ours.model, ours.tokenizer, prompts, dtype=torch.float32)
    length = got.shape[1]
    assert expected.shape[1] == 256 and length == (256 if LONG_PROMPT in prompts else length) <= 256
    assert torch.equal(mask, expected_mask[:, :length].bool()) and not expected_mask[:, length:].any()
    real = mask[..., None]
    difference = ((got - expected[:, :length]) * real).abs().max().item()
    MEASURED["text " + " | ".join(p[:10] for p in prompts)] = difference
    assert difference <= 1e-5
    assert not (got * ~real).any()  # padding is zeros
    assert hunyuan_text.refiner_prompt_is_cut(tokenizer, LONG_PROMPT)
    assert not hunyuan_text.refiner_prompt_is_cut(tokenizer, REFINER_PROMPTS[0])


def test_refiner_text_encode_for_one_prompt(text_setup):
    _, _, ours = text_setup
    with torch.no_grad():
        context, extras = hunyuan_text.encode_refiner({"qwen25_vl": ours}, REFINER_PROMPTS[0], "cpu", torch.float32)
        states, _ = hunyuan_text.encode_refiner_qwen(ours.model, ours.tokenizer, REFINER_PROMPTS[:1],
                                                     dtype=torch.float32)
    assert extras == {} and torch.equal(context, states)


# --- the whole refine stage against HunyuanImageRefinerPipeline --------------------------------------------------
class DiffusersRefinerVAE:
    """The stage's VAE work through diffusers' AutoencoderKLHunyuanImageRefiner, used by both sides (so the
    stage is compared, not the VAE). To compare with the pack's refiner VAE instead, give the same three
    methods on it: posterior(images [B, 3, H, W] in [-1, 1]) -> (mean, logvar) [B, 32, 1, h, w];
    decode(latent [B, 32, 1, h, w]) -> images [B, 3, H, W] in [-1, 1]."""

    def __init__(self, vae):
        self.vae = vae

    def posterior(self, images):
        distribution = self.vae.encode(images[:, :, None]).latent_dist
        return distribution.mean, distribution.logvar

    def decode(self, latent):
        return self.vae.decode(latent).sample[:, :, 0]


@pytest.fixture(scope="module")
def stage(text_setup):
    from diffusers import AutoencoderKLHunyuanImageRefiner, FlowMatchEulerDiscreteScheduler

    tokenizer, reference_text, ours_text = text_setup
    state = strong_state_dict(seed=61)
    vae = AutoencoderKLHunyuanImageRefiner(block_out_channels=(16, 32, 32, 64, 64), layers_per_block=1).eval()
    randomise_vae_(vae, seed=62)
    pipe = diffusers_refiner_pipeline(
        tokenizer=tokenizer, text_encoder=reference_text, transformer=diffusers_refiner(state), vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=refiner.REFINER_SAMPLING.shift))
    pipe.set_progress_bar_config(disable=True)
    return pipe, ours_from(state), ours_text, DiffusersRefinerVAE(vae)


def sharp_image(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] with hard edges: random 4-pixel blocks of colour, plus fine noise."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.rand(batch, 3, height // 4, width // 4, generator=g)
    image = torch.nn.functional.interpolate(blocks, size=(height, width), mode="nearest")
    return (0.85 * image + 0.15 * torch.rand(batch, 3, height, width, generator=g)).clamp(0, 1)


def high_frequency_share(images: torch.Tensor) -> torch.Tensor:
    """Per image, the share of the (mean-removed) spectral energy above a quarter of the Nyquist radius."""
    centered = images - images.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(centered).abs().pow(2).sum(dim=1)
    fy = torch.fft.fftfreq(images.shape[-2]).abs()[:, None]
    fx = torch.fft.fftfreq(images.shape[-1]).abs()[None, :]
    high = (fy.pow(2) + fx.pow(2)).sqrt() > 0.125
    return (power * high).sum(dim=(-2, -1)) / power.sum(dim=(-2, -1))


def ours_refine_image(stage_objects, prompts, images, seed, steps=4, guidance=3.5):
    """Our refine stage from an image: the VAE's posterior sampled from the stage's generator first (as
    diffusers draws it), the official packing, noise and loop, then the decoder."""
    _, network, text_encoder, vae = stage_objects
    context, mask = hunyuan_text.encode_refiner_qwen(text_encoder.model, text_encoder.tokenizer, prompts,
                                                     dtype=torch.float32)
    generator = refiner.refiner_generator(seed)
    mean, logvar = vae.posterior(images * 2 - 1)
    packed = refiner.pack_latent(refiner.sample_posterior(mean, logvar, generator))
    start, condition_noise = refiner.refiner_noise(packed.shape, generator)
    condition = refiner.condition_latent(packed, condition_noise, refiner.REFINER_SAMPLING.condition_strength)
    latents = refiner.refine(network, condition, context, start, refiner.refiner_sigmas(steps),
                             guidance_scale=guidance, attention_mask=None if bool(mask.all()) else mask)
    decoded = vae.decode(refiner.unpack_latent(latents))
    return latents, (decoded / 2 + 0.5).clamp(0, 1)


STAGE_CASES = [
    # prompts, image height, width, steps, guidance
    (["a watercolor painting of mountains at sunrise"], 48, 80, 4, 3.5),
    (["a watercolor painting of mountains at sunrise", 'a neon sign that says "OPEN"'], 64, 48, 4, 3.25),
    (["a cat"], 32, 32, 2, 3.5),
]


@pytest.mark.parametrize("case", STAGE_CASES, ids=["1x48x80", "2x64x48-padded-text", "1x32x32-2steps"])
@torch.no_grad()
def test_refine_stage_matches_the_diffusers_pipeline(stage, case):
    """Same weights, prompts and seed: the refined latents (before the VAE) and the decoded images match, and
    the refined image keeps as much high-frequency energy relative to its input as diffusers' does. With
    random tiny weights the refined image is not a refinement of the input (noise-like output), so the
    energy check is a parity check of the measure, not evidence about sharpness with real weights."""
    prompts, height, width, steps, guidance = case
    pipe = stage[0]
    images = sharp_image(len(prompts), height, width, seed=height + width)
    seed = 1234 + steps
    expected_latents = pipe(prompt=prompts, image=images, height=height, width=width, num_inference_steps=steps,
                            distilled_guidance_scale=guidance, generator=torch.Generator().manual_seed(seed),
                            output_type="latent").images
    expected = pipe(prompt=prompts, image=images, height=height, width=width, num_inference_steps=steps,
                    distilled_guidance_scale=guidance, generator=torch.Generator().manual_seed(seed),
                    output_type="pt").images
    latents, got = ours_refine_image(stage, prompts, images, seed, steps, guidance)
    name = f"{len(prompts)}x{height}x{width}x{steps}"
    MEASURED[f"stage latents {name}"] = (latents - expected_latents).abs().max().item()
    MEASURED[f"stage images {name}"] = (got - expected).abs().max().item()
    assert latents.shape == expected_latents.shape == (len(prompts), 64, 1, height // 16, width // 16)
    torch.testing.assert_close(latents, expected_latents, atol=STAGE_ATOL, rtol=0)
    assert got.shape == expected.shape == images.shape
    torch.testing.assert_close(got, expected, atol=STAGE_ATOL, rtol=0)
    assert expected.std() > 0.01  # a real image, not a constant

    ours_ratio = high_frequency_share(got) / high_frequency_share(images)
    reference_ratio = high_frequency_share(expected) / high_frequency_share(images)
    MEASURED[f"stage high-frequency ratio {name} (ours, diffusers)"] = (ours_ratio.tolist(), reference_ratio.tolist())
    torch.testing.assert_close(ours_ratio, reference_ratio, atol=1e-3, rtol=0)


@torch.no_grad()
def test_refine_stage_from_a_latent_matches_the_pipeline(stage):
    """The pipeline also takes the packed conditioning latent itself (64 channels): no VAE, no posterior
    draw, so the start and conditioning noise are the generator's first two draws."""
    pipe, network, text_encoder, _ = stage
    packed = refiner.pack_latent(torch.randn(1, 32, 1, 3, 4, generator=torch.Generator().manual_seed(5)))
    prompts = ["a cat"]
    expected = pipe(prompt=prompts, image=packed, height=48, width=64, num_inference_steps=4,
                    distilled_guidance_scale=3.5, generator=torch.Generator().manual_seed(77),
                    output_type="latent").images
    context, _ = hunyuan_text.encode_refiner_qwen(text_encoder.model, text_encoder.tokenizer, prompts)
    start, noise = refiner.refiner_noise(packed.shape, refiner.refiner_generator(77))
    latents = refiner.refine(network, refiner.condition_latent(packed, noise), context, start,
                             refiner.refiner_sigmas(4), guidance_scale=3.5)
    MEASURED["stage from a latent"] = (latents - expected).abs().max().item()
    torch.testing.assert_close(latents, expected, atol=STAGE_ATOL, rtol=0)
    # the steps report as they go (progress, previews, interrupts)
    seen = []
    refiner.refine(network, refiner.condition_latent(packed, noise), context, start, refiner.refiner_sigmas(4),
                   on_step=lambda i, x: seen.append((i, tuple(x.shape))))
    assert seen == [(i, (1, 64, 1, 3, 4)) for i in range(4)]


def test_report_measured_differences():
    """Runs last in this file: prints the measured figures (pytest -s shows them)."""
    for name, value in MEASURED.items():
        print(f"{name}: {value:.2e}" if isinstance(value, float) else f"{name}: {value}")


def test_mmdit_sampler_refuses_the_refiner(tmp_path):
    """The model loader loads a refiner file (it cannot know the intent); the sampler, which generates from
    noise, refuses it before sampling with a message naming what to load."""
    from comfyui_mmdit.nodes import NODE_CLASS_MAPPINGS as NODES
    from comfyui_mmdit.nodes.host import set_host

    write_tiny_hunyuan_refiner_dit(tmp_path / "diffusion_models" / "hunyuanimage-refiner.safetensors")
    set_host(StandaloneHost(models_dir=tmp_path, device="cpu"))
    try:
        model, = NODES["MMDiTModelLoader"]().load("hunyuanimage-refiner.safetensors")
        context = torch.zeros(1, 4, 3584)
        conditioning = [[context, {"mmdit_family": "hunyuan_image"}]]
        latent = {"samples": torch.zeros(1, 64, 2, 2)}
        with pytest.raises(ValueError, match="is a refiner: it refines a finished image and cannot generate one"):
            NODES["MMDiTSampler"]().sample(model, conditioning, conditioning, latent, 0, steps=2, cfg=1.0)
    finally:
        set_host(None)


@torch.no_grad()
def test_refiner_node_matches_the_diffusers_pipeline(stage, tmp_path):
    """MMDiT Refiner in the standalone host, from the files a user has (refiner DiT, refiner VAE and text
    encoders in ComfyUI names), against HunyuanImageRefinerPipeline with the same weights, prompt and seed:
    the decoded images match; the refiner LATENT is the VAE's [B, 32, 1, h, w]."""
    from comfyui_mmdit.loaders.keymaps.hunyuan_image_refiner_vae import diffusers_to_comfyui
    from comfyui_mmdit.nodes import NODE_CLASS_MAPPINGS as NODES
    from comfyui_mmdit.nodes.host import set_host
    from comfyui_mmdit.tools.tiny_models import write_tiny_component

    pipe = stage[0]
    models = tmp_path / "models"
    write_safetensors(strong_state_dict(seed=61), models / "diffusion_models" / "hunyuanimage-refiner.safetensors")
    names = diffusers_to_comfyui(pipe.vae.state_dict().keys())
    write_safetensors({names[k]: v for k, v in pipe.vae.state_dict().items()},
                      models / "vae" / "hunyuan_image_refiner_vae_fp16.safetensors")
    text_folder = models / "text_encoders"
    write_safetensors(comfyui_qwen25vl_names(pipe.text_encoder.state_dict(), language_model_only=True),
                      text_folder / "qwen_2.5_vl_7b.safetensors")
    write_tiny_qwen_tokenizer(text_folder / "qwen_2.5_vl_7b_tokenizer")
    write_tiny_component("text_encoders", text_folder / "byt5_small_glyphxl.safetensors")

    set_host(StandaloneHost(models_dir=models, device="cpu"))
    try:
        text_encoder, = NODES["MMDiTTextEncoderLoader"]().load("qwen_2.5_vl_7b.safetensors", "HunyuanImage 2.1",
                                                               "byt5_small_glyphxl.safetensors")
        vae, = NODES["MMDiTVAELoader"]().load("hunyuan_image_refiner_vae_fp16.safetensors")
        model, = NODES["MMDiTModelLoader"]().load("hunyuanimage-refiner.safetensors")
        prompt, seed = "a watercolor painting of mountains at sunrise", 4321
        images = sharp_image(2, 48, 80, seed=9)
        expected = pipe(prompt=[prompt, prompt], image=images, height=48, width=80, num_inference_steps=4,
                        distilled_guidance_scale=3.25, generator=torch.Generator().manual_seed(seed),
                        output_type="pt").images
        got, latent = NODES["MMDiTRefiner"]().refine(model, text_encoder, vae, prompt, seed, steps=4, guidance=3.25,
                                                     image=images.movedim(1, -1))
        assert latent["samples"].shape == (2, 32, 1, 3, 5)
        MEASURED["node images 2x48x80"] = (got - expected.movedim(1, -1)).abs().max().item()
        torch.testing.assert_close(got, expected.movedim(1, -1), atol=STAGE_ATOL, rtol=0)

        with pytest.raises(ValueError, match="either an image or the base stage's latent"):
            NODES["MMDiTRefiner"]().refine(model, text_encoder, vae, prompt, seed, image=images.movedim(1, -1),
                                           samples={"samples": torch.zeros(1, 64, 1, 2, 2)})
        with pytest.raises(ValueError, match="refiner needs its own VAE|the refiner's own goes to"):
            NODES["MMDiTRefiner"]().refine(model, text_encoder, vae, prompt, seed,
                                           samples={"samples": torch.zeros(1, 32, 1, 2, 2)}, vae=vae)
    finally:
        set_host(None)
