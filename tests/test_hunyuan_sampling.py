"""HunyuanImage 2.1's official schedules and settings vs diffusers' scheduler and pipeline, and the official code."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from comfyui_mmdit.model_defs.guidance import ApgMixParams
from comfyui_mmdit.model_defs.hunyuan_image.sampling import (
    BASE_SAMPLING, DISTILLED_SAMPLING, GENERAL_GUIDANCE, GLYPH_GUIDANCE, meanflow_timestep_r, official_guidance,
    official_guidance_factory, official_guidance_params, official_sampling, timesteps,
)
from comfyui_mmdit.model_defs.sampling import ConstantShiftSchedule, linear_sigmas_to_zero

# The official code computes its grid with torch.linspace in float32 (hyimage get_timesteps_sigmas); a few of
# its sigmas differ from diffusers' (numpy float64 grid rounded to float32) in the last bit: base 7 of 51
# sigmas by 6e-8 (1 ulp), timesteps by 6.1e-5 (the same ulp times 1000); distilled (8 steps): none.
OFFICIAL_CODE_ATOL = 1e-7

# guider/guider_config.json of hunyuanvideo-community/HunyuanImage-2.1-Diffusers, as diffusers' docs print it
# (docs/source/en/api/pipelines/hunyuanimage21.md).
PUBLISHED_GUIDER_CONFIG = {
    "_class_name": "AdaptiveProjectedMixGuidance", "adaptive_projected_guidance_momentum": -0.5,
    "adaptive_projected_guidance_rescale": 10.0, "adaptive_projected_guidance_scale": 10.0,
    "adaptive_projected_guidance_start_step": 5, "enabled": True, "eta": 0.0, "guidance_rescale": 0.0,
    "guidance_scale": 3.5, "start": 0.0, "stop": 1.0, "use_original_formulation": False,
}
PUBLISHED_GUIDER_KWARGS = {k: v for k, v in PUBLISHED_GUIDER_CONFIG.items() if k not in ("_class_name", "enabled")}


def diffusers_schedule(shift, steps):
    """Sigmas and timesteps as HunyuanImagePipeline gets them from its scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.hunyuan_image.pipeline_hunyuanimage import retrieve_timesteps

    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    grid = np.linspace(1.0, 0.0, steps + 1)[:-1]  # what the pipeline passes as `sigmas`
    ts, n = retrieve_timesteps(scheduler, steps, "cpu", sigmas=grid)
    assert n == steps
    return scheduler, scheduler.sigmas, ts


@pytest.mark.parametrize("shift, steps", [(5.0, 50), (4.0, 8), (5.0, 1), (5.0, 7), (4.0, 30), (5.0, 100), (3.0, 28)])
def test_sigmas_and_timesteps_equal_diffusers_exactly(shift, steps):
    _, expected_sigmas, expected_timesteps = diffusers_schedule(shift, steps)
    sigmas = ConstantShiftSchedule(shift).sigmas(steps, image_tokens=4096)
    assert sigmas.dtype == torch.float32 and len(sigmas) == steps + 1 and sigmas[-1] == 0
    assert torch.equal(sigmas, expected_sigmas)
    assert torch.equal(timesteps(sigmas), expected_timesteps)


def test_official_variants_use_diffusers_schedule():
    for sampling in (BASE_SAMPLING, DISTILLED_SAMPLING):
        _, expected, _ = diffusers_schedule(sampling.shift, sampling.steps)
        assert torch.equal(sampling.schedule.sigmas(sampling.steps, 1), expected)
    # the image size does not matter (same signature as the dynamic-shift schedules)
    assert torch.equal(ConstantShiftSchedule(5.0).sigmas(50, 100), ConstantShiftSchedule(5.0).sigmas(50, 10 ** 5))


def test_grid_is_numpy_linspace_bit_for_bit():
    for steps in list(range(1, 301)) + [1000, 1023]:
        expected = torch.from_numpy(np.linspace(1.0, 0.0, steps + 1)[:-1].astype(np.float32))
        assert torch.equal(linear_sigmas_to_zero(steps), expected), steps
    with pytest.raises(ValueError):
        linear_sigmas_to_zero(0)


@pytest.mark.parametrize("sampling", [BASE_SAMPLING, DISTILLED_SAMPLING])
def test_schedule_matches_the_official_code_formula(sampling):
    """hyimage HunyuanImagePipeline.get_timesteps_sigmas: torch.linspace(1, 0, steps + 1), shifted in float32."""
    grid = torch.linspace(1, 0, sampling.steps + 1)
    official = ((sampling.shift * grid) / (1 + (sampling.shift - 1) * grid)).to(torch.float32)
    ours = sampling.schedule.sigmas(sampling.steps)
    assert (ours - official).abs().max().item() <= OFFICIAL_CODE_ATOL
    assert (timesteps(ours) - official[:-1] * 1000).abs().max().item() <= 1000 * OFFICIAL_CODE_ATOL


def test_euler_step_is_the_schedulers():
    """x + (sigmas[i + 1] - sigmas[i]) * v in float32 is FlowMatchEulerDiscreteScheduler.step, bit for bit."""
    scheduler, sigmas, ts = diffusers_schedule(4.0, 8)
    sigmas = DISTILLED_SAMPLING.schedule.sigmas(8)
    g = torch.Generator().manual_seed(0)
    x = expected = torch.randn(1, 64, 3, 4, generator=g)
    scheduler.set_begin_index(0)
    for i, t in enumerate(ts):
        v = torch.randn(1, 64, 3, 4, generator=g)
        expected = scheduler.step(v, t, expected, return_dict=False)[0]
        x = x + (sigmas[i + 1] - sigmas[i]) * v
        assert torch.equal(x, expected), i


def test_meanflow_timestep_r_is_what_the_pipeline_passes():
    """HunyuanImagePipeline: timestep_r = timesteps[i + 1], tensor([0.0]) at the last step."""
    _, _, ts = diffusers_schedule(4.0, 8)
    sigmas = DISTILLED_SAMPLING.schedule.sigmas(8)
    for i in range(8):
        expected = torch.tensor([0.0]) if i == len(ts) - 1 else ts[i + 1]
        assert torch.equal(meanflow_timestep_r(sigmas, i).reshape(-1), expected.reshape(-1)), i
    with pytest.raises(ValueError):
        meanflow_timestep_r(sigmas, 8)


def test_official_settings():
    assert (BASE_SAMPLING.steps, BASE_SAMPLING.guidance_scale, BASE_SAMPLING.shift) == (50, 3.5, 5.0)
    assert (BASE_SAMPLING.guidance_kind, BASE_SAMPLING.meanflow) == ("apg_mix", False)
    assert (DISTILLED_SAMPLING.steps, DISTILLED_SAMPLING.guidance_scale, DISTILLED_SAMPLING.shift) == (8, 3.25, 4.0)
    assert (DISTILLED_SAMPLING.guidance_kind, DISTILLED_SAMPLING.meanflow) == ("embedded", True)
    assert official_sampling("distilled") is DISTILLED_SAMPLING
    with pytest.raises(ValueError, match="refiner"):
        official_sampling("refiner")


def test_guiders_are_the_published_and_official_ones():
    assert ApgMixParams.from_diffusers_config(PUBLISHED_GUIDER_CONFIG) == GENERAL_GUIDANCE
    assert GENERAL_GUIDANCE == ApgMixParams()  # diffusers' class defaults are the same rule
    # official hyimage: cfg_guider_ocr = AdaptiveProjectedGuidance(guidance_scale=10.0, eta=0.0, rescale=10.0,
    # momentum=-0.5) with apg_start_step_ocr = 38
    assert GLYPH_GUIDANCE.diffusers_config() == dict(PUBLISHED_GUIDER_KWARGS,
                                                     adaptive_projected_guidance_start_step=38)
    assert official_guidance_params(has_glyph_text=False) is GENERAL_GUIDANCE
    assert official_guidance_params(has_glyph_text=True).apg_start_step == 38
    assert official_guidance_params(False, guidance_scale=5.0).guidance_scale == 5.0
    first, second = official_guidance(True), official_guidance(True)
    assert first is not second and first.params == GLYPH_GUIDANCE  # a fresh state per run
    made = official_guidance_factory(False)(4.0)
    assert made.params == GENERAL_GUIDANCE.with_scale(4.0) and made.params.apg_scale == 10.0



def test_initial_noise_is_the_pipelines():
    """HunyuanImagePipeline.prepare_latents with a CPU generator in fp32 = the hosts' initial_noise."""
    from diffusers import HunyuanImagePipeline

    from comfyui_mmdit.nodes.sampling_request import initial_noise

    expected = HunyuanImagePipeline.prepare_latents(
        SimpleNamespace(vae_scale_factor=32), batch_size=2, num_channels_latents=64, height=96, width=160,
        dtype=torch.float32, device=torch.device("cpu"), generator=torch.Generator("cpu").manual_seed(7))
    assert expected.shape == (2, 64, 3, 5)
    assert torch.equal(initial_noise(torch.zeros(2, 64, 3, 5), 7), expected)
    assert torch.equal(initial_noise(torch.zeros(2, 64, 1, 3, 5), 7).squeeze(2), expected)  # 5-D latents too
