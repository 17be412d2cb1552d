"""Guidance rules vs diffusers' guider objects, and the noise-unit (sampler_cfg_function) adapter."""

from dataclasses import replace

import math

import pytest
import torch

from comfyui_mmdit.model_defs.guidance import (
    AdaptiveProjectedMixGuidance, ApgMixParams, ClassifierFreeGuidance, as_sampler_cfg_function, schedule_step_index,
)
from comfyui_mmdit.model_defs.hunyuan_image.sampling import GENERAL_GUIDANCE, GLYPH_GUIDANCE
from comfyui_mmdit.model_defs.sampling import ConstantShiftSchedule

# fp32, same inputs, same operations in the same order (projection in float64 as diffusers): measured 0.0;
# the bound leaves room for a different reduction order of the per-sample norms on other CPUs.
GUIDER_ATOL = 1e-6
# A whole 10-step Euler run the way ComfyUI computes it (cond = x - (x - sigma * v), d = (x - denoised) / sigma)
# vs the velocity form: ComfyUI's noise-unit arithmetic rounds at every step (the adapter itself is exact, see
# test_adapter_is_exact_where_sigma_scaling_is_exact), and APG's scale 10 amplifies that; measured relative
# to the latent's magnitude: 9.2e-7 (threshold 10), 1.3e-7 (threshold 0.5).
ADAPTER_RTOL = 4e-6

SHAPE = (2, 64, 3, 5)  # batch 2: guidance is per sample


def run_inputs(steps, seed=0, diff_scales=(0.02, 1.0)):
    """Random cond/uncond velocities per step; sample 0's cond - uncond is small (norm ~1, under the
    threshold 10), sample 1's large (norm ~40, over it)."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor(diff_scales).view(-1, 1, 1, 1)
    conds, unconds = [], []
    for _ in range(steps):
        cond = torch.randn(SHAPE, generator=g)
        conds.append(cond)
        unconds.append(cond + scales * torch.randn(SHAPE, generator=g))
    return conds, unconds


def diffusers_apg_mix_run(params: ApgMixParams, conds, unconds, sigmas):
    """diffusers' AdaptiveProjectedMixGuidance driven as HunyuanImagePipeline drives it; per step the
    combined prediction and how many predictions it asked for."""
    from diffusers.guiders import AdaptiveProjectedMixGuidance as Reference

    guider = Reference(**params.diffusers_config())
    steps = len(conds)
    timesteps = sigmas[:-1] * 1000
    outputs, passes = [], []
    for i in range(steps):
        guider.set_state(step=i, num_inference_steps=steps, timestep=timesteps[i])
        batches = guider.prepare_inputs({"encoder_hidden_states": (torch.zeros(1), torch.ones(1))})
        predictions = {"pred_cond": conds[i], "pred_uncond": unconds[i]}
        for batch in batches:
            batch.noise_pred = predictions[getattr(batch, guider._identifier_key)]
        outputs.append(guider(batches).pred)
        passes.append(len(batches))
    return outputs, passes


def our_run(params, conds, unconds, sigmas):
    guidance = AdaptiveProjectedMixGuidance(params)
    steps = len(conds)
    outputs, passes = [], []
    for i in range(steps):
        needs = guidance.needs_uncond(i, steps)
        outputs.append(guidance.combine(conds[i], unconds[i] if needs else None, i, steps,
                                        None if sigmas is None else sigmas[i]))
        passes.append(2 if needs else 1)
    return outputs, passes


CASES = {
    "official_general": (GENERAL_GUIDANCE, 10),
    "official_general_50_steps": (GENERAL_GUIDANCE, 50),
    "official_glyph_50_steps": (GLYPH_GUIDANCE, 50),  # CFG up to step 38, then APG
    "no_momentum": (replace(GENERAL_GUIDANCE, momentum=None), 10),
    "positive_momentum": (replace(GENERAL_GUIDANCE, momentum=0.3), 10),
    "threshold_hit_by_both": (replace(GENERAL_GUIDANCE, norm_threshold=0.5), 10),
    "threshold_off": (replace(GENERAL_GUIDANCE, norm_threshold=0.0), 10),
    "start_stop_fractions": (replace(GENERAL_GUIDANCE, start=0.2, stop=0.75, apg_start_step=3), 10),
    "apg_from_step_1": (replace(GENERAL_GUIDANCE, apg_start_step=0), 10),
    "apg_never": (replace(GENERAL_GUIDANCE, apg_start_step=9), 10),
    "eta_and_original_formulation": (replace(GENERAL_GUIDANCE, eta=0.5, use_original_formulation=True), 10),
    "guidance_rescale": (replace(GENERAL_GUIDANCE, guidance_rescale=0.7), 10),
    "cfg_scale_1_is_no_guidance": (replace(GENERAL_GUIDANCE, guidance_scale=1.0), 10),
    "apg_scale_1_is_cfg_only": (replace(GENERAL_GUIDANCE, apg_scale=1.0), 10),
}


@pytest.mark.parametrize("case", CASES)
def test_apg_mix_matches_diffusers_guider_over_a_run(case):
    params, steps = CASES[case]
    sigmas = ConstantShiftSchedule(5.0).sigmas(steps)
    conds, unconds = run_inputs(steps)
    expected, expected_passes = diffusers_apg_mix_run(params, conds, unconds, sigmas)
    ours, passes = our_run(params, conds, unconds, sigmas)
    assert passes == expected_passes
    for i, (a, b) in enumerate(zip(ours, expected)):
        assert a.dtype == b.dtype == torch.float32
        assert (a - b).abs().max().item() <= GUIDER_ATOL, f"step {i}"


def test_the_phases_are_where_diffusers_puts_them():
    """Official general guider, 10 steps: CFG (momentum warming up) for steps 0-5, APG from 6 on; the
    glyph guider: APG only after step 38. Checked on outputs: CFG steps are uncond + 3.5 * (cond - uncond)."""
    conds, unconds = run_inputs(10)
    guidance = AdaptiveProjectedMixGuidance(GENERAL_GUIDANCE)
    for i in range(10):
        out = guidance.combine(conds[i], unconds[i], i, 10)
        is_cfg = torch.equal(out, unconds[i] + 3.5 * (conds[i] - unconds[i]))
        assert is_cfg == (i <= 5), i
    assert guidance.momentum_updates == 10
    glyph = AdaptiveProjectedMixGuidance(GLYPH_GUIDANCE)
    assert [i for i in range(50) if glyph.apg_active(i, 50)] == list(range(39, 50))


def test_norm_threshold_is_per_sample():
    """Sample 0's guidance is under the threshold (unchanged by it), sample 1's over it (shrunk)."""
    conds, unconds = run_inputs(10)
    no_limit = replace(GENERAL_GUIDANCE, norm_threshold=1e9)
    limited, _ = our_run(GENERAL_GUIDANCE, conds, unconds, None)
    unlimited, _ = our_run(no_limit, conds, unconds, None)
    apg_step = 7
    assert torch.equal(limited[apg_step][0], unlimited[apg_step][0])
    assert (limited[apg_step][1] - unlimited[apg_step][1]).abs().max() > 1.0


def test_layout_does_not_matter():
    """[B, C, H, W] and [B, C, 1, H, W] give the same guidance (per-sample reductions over all other dims)."""
    conds, unconds = run_inputs(10)
    flat, _ = our_run(GENERAL_GUIDANCE, conds, unconds, None)
    five_d, _ = our_run(GENERAL_GUIDANCE, [c.unsqueeze(2) for c in conds], [u.unsqueeze(2) for u in unconds], None)
    for a, b in zip(flat, five_d):
        assert (a - b.squeeze(2)).abs().max() <= GUIDER_ATOL


def test_plain_cfg_matches_diffusers():
    from diffusers.guiders import ClassifierFreeGuidance as Reference

    conds, unconds = run_inputs(3)
    for scale in (1.0, 3.5):
        reference = Reference(guidance_scale=scale)
        ours = ClassifierFreeGuidance(scale)
        for i in range(3):
            reference.set_state(step=i, num_inference_steps=3, timestep=torch.tensor(500.0))
            expected = reference.forward(conds[i], unconds[i]).pred
            assert ours.needs_uncond(i, 3) == (scale != 1.0)
            assert torch.equal(ours.combine(conds[i], unconds[i], i, 3), expected)


def test_params_round_trip_through_diffusers_names():
    params = replace(GENERAL_GUIDANCE, momentum=None, start=0.1)
    assert ApgMixParams.from_diffusers_config(params.diffusers_config()) == params
    with pytest.raises(ValueError):
        ApgMixParams(start=0.5, stop=0.4)


# --- the noise-unit adapter ---------------------------------------------------------------------------------

class ToyFlowModel:
    """cond/uncond velocities that depend on x and sigma, so errors would propagate through a run."""

    def __init__(self, seed=1):
        g = torch.Generator().manual_seed(seed)
        channels = SHAPE[1]
        self.mix_cond = torch.randn(channels, channels, generator=g) / math.sqrt(channels)
        self.mix_uncond = self.mix_cond + 0.3 * torch.randn(channels, channels, generator=g) / math.sqrt(channels)
        self.bias = torch.randn(1, channels, 1, 1, generator=g)

    def __call__(self, x, sigma):
        sigma = sigma.view(-1, 1, 1, 1)
        cond = torch.einsum("dc,bchw->bdhw", self.mix_cond, x) + sigma * self.bias
        uncond = torch.einsum("dc,bchw->bdhw", self.mix_uncond, x)
        return cond, uncond


def velocity_euler(model, guidance, sigmas, noise):
    """The official loop's arithmetic (diffusers FlowMatchEulerDiscreteScheduler.step, float32)."""
    x = noise
    steps = len(sigmas) - 1
    for i in range(steps):
        cond, uncond = model(x, sigmas[i].expand(x.shape[0]))
        v = guidance.combine(cond, uncond, i, steps, sigmas[i])
        x = x + (sigmas[i + 1] - sigmas[i]) * v
    return x


def comfy_euler(model, cfg_function, sigmas, noise, cond_scale):
    """ComfyUI's path: k-diffusion Euler on denoised predictions, CONST (flow) model sampling, guidance
    through sampler_cfg_function (comfy/samplers.py cfg_function, comfy/k_diffusion/sampling.py sample_euler)."""
    x = noise
    model_options = {"transformer_options": {"sample_sigmas": sigmas}}
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i] * x.new_ones(x.shape[0])
        cond_v, uncond_v = model(x, sigma)
        s = sigma.view(-1, 1, 1, 1)
        cond_denoised, uncond_denoised = x - cond_v * s, x - uncond_v * s
        args = {"cond": x - cond_denoised, "uncond": x - uncond_denoised, "cond_scale": cond_scale, "sigma": sigma,
                "timestep": sigma, "input": x, "cond_denoised": cond_denoised, "uncond_denoised": uncond_denoised,
                "model_options": model_options}
        denoised = x - cfg_function(args)
        d = (x - denoised) / s
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


class Recording(AdaptiveProjectedMixGuidance):
    def __init__(self, params):
        super().__init__(params)
        self.calls = []

    def combine(self, cond, uncond, step_index, num_steps, sigma=None):
        self.calls.append((step_index, num_steps))
        return super().combine(cond, uncond, step_index, num_steps, sigma)


@pytest.mark.parametrize("threshold", [10.0, 0.5])
def test_adapter_with_euler_equals_the_velocity_form(threshold):
    params = replace(GENERAL_GUIDANCE, norm_threshold=threshold)
    sigmas = ConstantShiftSchedule(5.0).sigmas(10)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    model = ToyFlowModel()
    direct = Recording(params)
    expected = velocity_euler(model, direct, sigmas, noise)
    made = []
    cfg_function = as_sampler_cfg_function(lambda scale: made.append(Recording(params.with_scale(scale))) or made[-1])
    ours = comfy_euler(model, cfg_function, sigmas, noise, cond_scale=3.5)
    assert len(made) == 1 and made[0].calls == direct.calls == [(i, 10) for i in range(10)]
    assert made[0].momentum_updates == 10
    scale = expected.abs().max().item()
    assert scale > 0.5  # a real run, not zeros
    assert (ours - expected).abs().max().item() <= ADAPTER_RTOL * scale


def test_adapter_is_exact_where_sigma_scaling_is_exact():
    """With power-of-two sigmas, noise = sigma * velocity and back are exact in float32: the adapter's
    output over a whole run is then bit-identical to sigma * (the velocity-form guidance)."""
    sigmas = torch.tensor([2.0 ** -k for k in range(10)] + [0.0])
    direct = AdaptiveProjectedMixGuidance(GENERAL_GUIDANCE)
    cfg_function = as_sampler_cfg_function(lambda scale: AdaptiveProjectedMixGuidance(GENERAL_GUIDANCE), sigmas)
    conds, unconds = run_inputs(10)
    for i in range(10):
        sigma = sigmas[i].expand(SHAPE[0])
        s = sigma.view(-1, 1, 1, 1)
        out = cfg_function({"cond": s * conds[i], "uncond": s * unconds[i], "sigma": sigma, "cond_scale": 3.5})
        assert torch.equal(out, s * direct.combine(conds[i], unconds[i], i, 10)), i


def test_adapter_starts_a_new_run_per_schedule_and_takes_the_cfg_scale():
    sigmas = ConstantShiftSchedule(5.0).sigmas(10)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    made = []
    cfg_function = as_sampler_cfg_function(
        lambda scale: made.append(Recording(GENERAL_GUIDANCE.with_scale(scale))) or made[-1])
    first = comfy_euler(ToyFlowModel(), cfg_function, sigmas, noise, cond_scale=3.5)
    second = comfy_euler(ToyFlowModel(), cfg_function, sigmas.clone(), noise, cond_scale=3.5)
    assert len(made) == 2 and made[1].momentum_updates == 10  # fresh momentum for the second run
    assert torch.equal(first, second)
    comfy_euler(ToyFlowModel(), cfg_function, sigmas.clone(), noise, cond_scale=5.0)
    assert made[2].params.guidance_scale == 5.0 and made[2].params.apg_scale == 10.0


def test_step_index_for_multi_evaluation_samplers():
    sigmas = ConstantShiftSchedule(5.0).sigmas(10)
    for i in range(10):
        assert schedule_step_index(sigmas, float(sigmas[i])) == i  # Euler, Heun's first call
        # float32 noise on the sigma (another computation path) still finds the step
        assert schedule_step_index(sigmas, float(sigmas[i]) * (1 + 3e-7)) == i
    for i in range(9):
        assert schedule_step_index(sigmas, float(sigmas[i + 1])) == i + 1  # Heun's second call: its noise level
        midpoint = math.exp((math.log(sigmas[i]) + math.log(sigmas[i + 1])) / 2)
        assert schedule_step_index(sigmas, midpoint) == i  # DPM-2's midpoint call
    assert schedule_step_index(sigmas, 1.3) == 0  # churn above the first sigma
    assert schedule_step_index(sigmas, 0.0) == 9


def test_adapter_guards_sigma_zero_and_needs_a_schedule():
    sigmas = ConstantShiftSchedule(5.0).sigmas(4)
    cfg_function = as_sampler_cfg_function(lambda scale: AdaptiveProjectedMixGuidance(GENERAL_GUIDANCE), sigmas)
    zeros = torch.zeros(SHAPE)
    out = cfg_function({"cond": zeros, "uncond": zeros, "sigma": torch.zeros(2), "cond_scale": 3.5, "input": zeros})
    assert torch.isfinite(out).all() and not out.any()
    without = as_sampler_cfg_function(lambda scale: AdaptiveProjectedMixGuidance(GENERAL_GUIDANCE))
    with pytest.raises(ValueError, match="schedule"):
        without({"cond": zeros, "uncond": zeros, "sigma": torch.ones(2), "cond_scale": 3.5, "model_options": {}})
