"""Guidance rules, host-neutral: plain tensors in and out.

cfg.py          stateless CFG rules (plain; with Qwen-Image's per-token norm rescale)
apg_mix.py      adaptive projected "mix" guidance (HunyuanImage 2.1): a per-run object with a momentum buffer
sampler_cfg.py  runs a per-run velocity-space guidance as a k-diffusion sampler_cfg_function (noise units)

Per-run guidance objects share one interface:
    needs_uncond(step_index, num_steps) -> bool
    combine(cond, uncond, step_index, num_steps, sigma) -> guided prediction (velocities for flow models)
"""

from .apg_mix import AdaptiveProjectedMixGuidance, ApgMixParams
from .cfg import ClassifierFreeGuidance, cfg_combine, norm_rescaled_cfg
from .sampler_cfg import SamplerCfgFunction, as_sampler_cfg_function, schedule_step_index

__all__ = [
    "AdaptiveProjectedMixGuidance", "ApgMixParams", "ClassifierFreeGuidance", "SamplerCfgFunction",
    "as_sampler_cfg_function", "cfg_combine", "norm_rescaled_cfg", "schedule_step_index",
]
