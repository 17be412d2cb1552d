"""Adaptive projected "mix" guidance: HunyuanImage 2.1's official guidance, CFG first, then APG.

The same rule as diffusers' AdaptiveProjectedMixGuidance (guiders/adaptive_projected_guidance_mix.py) and the
official HunyuanImage-2.1 code (hyimage/diffusion/cfg_utils.py + HunyuanImagePipeline's "MIX_mode_0"), written
as a host-neutral object made once per sampling run. Per call, with step index i of num_steps:

1. No guidance (returns cond) when i is outside [int(start * num_steps), int(stop * num_steps)) or the CFG
   scale is 1 (0 with use_original_formulation). The momentum buffer is not touched.
2. CFG while i <= apg_start_step (or the APG scale is 1 / 0): uncond + guidance_scale * (cond - uncond); the
   momentum buffer is updated with cond - uncond all the same (so APG starts with a warm buffer).
3. APG once i > apg_start_step: update the buffer, take its running average as the guidance direction,
   shrink it per sample to norm <= norm_threshold, split it into the part parallel to cond (per sample, in
   float64) and the orthogonal part, and return uncond + apg_scale * (orthogonal + eta * parallel).
4. guidance_rescale > 0: the std rescale of "Common Diffusion Noise Schedules ..." (section 3.4) toward cond.

"Per sample": every norm, dot product and std is over all dimensions but the first (batch), as diffusers
does (dims -1 .. -(ndim-1)), so [B, C, H, W] and [B, C, 1, H, W] layouts give the same answer.

The momentum buffer: running = diff + momentum * running, starting from 0, once per combine() call (diffusers
calls its guider once per denoising step). diffusers creates the buffer anew at step 0 of every run; here the
object is made per run and starts empty (reset() empties it again), which is the same for a run that calls
it once per step, and lets multi-evaluation samplers call step 0 more than once without losing updates.

Inputs are the model's predictions in the units the official pipeline guides: flow-matching velocities
(diffusers' noise_pred for these models). The norm threshold is in those units, so the rule is NOT
homogeneous: noise-unit hosts (ComfyUI) must convert (see sampler_cfg.py). sigma is accepted for a common
interface and unused (the rule depends on the step index only).

Exactness: the operations, their order and dtypes are diffusers' (CFG and the norm threshold in the input
dtype, the projection in float64 and cast back), so fp32 results agree with diffusers' guider to rounding of
the norm reductions (tested <= 1e-6 over whole 10-step runs, in practice bit-identical).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

from .cfg import cfg_combine

# Our field name -> diffusers AdaptiveProjectedMixGuidance's config name.
_DIFFUSERS_NAMES = {
    "guidance_scale": "guidance_scale",
    "apg_scale": "adaptive_projected_guidance_scale",
    "momentum": "adaptive_projected_guidance_momentum",
    "norm_threshold": "adaptive_projected_guidance_rescale",
    "eta": "eta",
    "apg_start_step": "adaptive_projected_guidance_start_step",
    "start": "start",
    "stop": "stop",
    "guidance_rescale": "guidance_rescale",
    "use_original_formulation": "use_original_formulation",
}


@dataclass(frozen=True)
class ApgMixParams:
    """The rule's parameters. Defaults = diffusers' class defaults = HunyuanImage 2.1's general guider
    (guider/guider_config.json of HunyuanImage-2.1-Diffusers; the official code's cfg_guider_general)."""

    guidance_scale: float = 3.5  # CFG scale of steps 0 .. apg_start_step
    apg_scale: float = 10.0  # diffusers: adaptive_projected_guidance_scale
    momentum: float | None = -0.5  # diffusers: adaptive_projected_guidance_momentum; None: no buffer
    norm_threshold: float = 10.0  # diffusers: adaptive_projected_guidance_rescale; <= 0: no threshold
    eta: float = 0.0  # weight of the part of the guidance parallel to cond
    apg_start_step: int = 5  # APG from step apg_start_step + 1 on
    start: float = 0.0  # fraction of the steps before which there is no guidance at all
    stop: float = 1.0  # fraction of the steps from which there is no guidance at all
    guidance_rescale: float = 0.0
    use_original_formulation: bool = False  # cond + scale * (cond - uncond) instead of uncond + ...

    def __post_init__(self):
        if not 0.0 <= self.start < 1.0:
            raise ValueError(f"start must be in [0, 1), got {self.start}")
        if not self.start <= self.stop <= 1.0:
            raise ValueError(f"stop must be in [start, 1], got {self.stop} (start {self.start})")

    def with_scale(self, guidance_scale: float) -> "ApgMixParams":
        """The same rule with another CFG scale (the sampler's cfg widget); the APG scale stays."""
        return replace(self, guidance_scale=float(guidance_scale))

    def diffusers_config(self) -> dict:
        """Keyword arguments for diffusers' AdaptiveProjectedMixGuidance giving the same rule."""
        return {_DIFFUSERS_NAMES[k]: v for k, v in asdict(self).items()}

    @classmethod
    def from_diffusers_config(cls, config: dict) -> "ApgMixParams":
        """From a guider_config.json's values (unknown keys such as _class_name are ignored)."""
        ours = {mine: config[theirs] for mine, theirs in _DIFFUSERS_NAMES.items() if theirs in config}
        return cls(**ours)


def _non_batch_dims(t: torch.Tensor) -> list[int]:
    return [-i for i in range(1, t.ndim)]


def std_rescale(guided: torch.Tensor, cond: torch.Tensor, amount: float) -> torch.Tensor:
    """Mix `guided` with itself rescaled to cond's per-sample std (diffusers' rescale_noise_cfg)."""
    dims = list(range(1, cond.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return amount * rescaled + (1 - amount) * guided


def projected_update(direction: torch.Tensor, cond: torch.Tensor, norm_threshold: float, eta: float) -> torch.Tensor:
    """The APG update: `direction` shrunk per sample to norm <= norm_threshold, then its part orthogonal to
    cond plus eta times its part parallel to cond (the projection in float64, as diffusers computes it)."""
    dims = _non_batch_dims(direction)
    if norm_threshold > 0:
        norm = torch.linalg.vector_norm(direction, dim=dims, keepdim=True)
        direction = direction * torch.clamp(norm_threshold / norm, max=1.0)
    d64 = direction.double()
    unit_cond = F.normalize(cond.double(), dim=dims)
    parallel = (d64 * unit_cond).sum(dim=dims, keepdim=True) * unit_cond
    orthogonal = d64 - parallel
    return orthogonal.type_as(direction) + eta * parallel.type_as(direction)


class AdaptiveProjectedMixGuidance:
    """One sampling run's guidance state (the momentum buffer). Make a new object per run."""

    kind = "apg_mix"

    def __init__(self, params: ApgMixParams | None = None):
        self.params = params or ApgMixParams()
        self.reset()

    def reset(self) -> None:
        """Empty the momentum buffer (a new run)."""
        self._running_average: torch.Tensor | None = None
        self.momentum_updates = 0  # how many times the buffer was updated (tests, diagnostics)

    # --- when each phase applies (diffusers' _is_cfg_enabled / _is_apg_enabled) -------------------------
    def _scale_is_neutral(self, scale: float) -> bool:
        return math.isclose(scale, 0.0 if self.params.use_original_formulation else 1.0)

    def cfg_active(self, step_index: int, num_steps: int) -> bool:
        p = self.params
        in_range = int(p.start * num_steps) <= step_index < int(p.stop * num_steps)
        return in_range and not self._scale_is_neutral(p.guidance_scale)

    def apg_active(self, step_index: int, num_steps: int) -> bool:
        p = self.params
        return (self.cfg_active(step_index, num_steps) and step_index > p.apg_start_step
                and not self._scale_is_neutral(p.apg_scale))

    def needs_uncond(self, step_index: int, num_steps: int) -> bool:
        """Whether this step uses the unconditional prediction (diffusers then runs the model once)."""
        return self.cfg_active(step_index, num_steps)

    # --- the rule ---------------------------------------------------------------------------------------
    def _update_momentum(self, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor | None:
        if self.params.momentum is None:
            return None
        diff = cond - uncond
        if self._running_average is None:
            self._running_average = diff  # = diff + momentum * 0, bit for bit
        else:
            self._running_average = diff + self.params.momentum * self._running_average
        self.momentum_updates += 1
        return self._running_average

    def combine(self, cond: torch.Tensor, uncond: torch.Tensor | None, step_index: int, num_steps: int,
                sigma=None) -> torch.Tensor:
        """The guided prediction for step `step_index` (0-based) of a `num_steps`-step run."""
        p = self.params
        if uncond is None or not self.cfg_active(step_index, num_steps):
            guided = cond
        elif not self.apg_active(step_index, num_steps):
            self._update_momentum(cond, uncond)
            if p.use_original_formulation:
                guided = cond + p.guidance_scale * (cond - uncond)
            else:
                guided = cfg_combine(cond, uncond, p.guidance_scale)
        else:
            running = self._update_momentum(cond, uncond)
            direction = running if running is not None else cond - uncond
            update = projected_update(direction, cond, p.norm_threshold, p.eta)
            guided = (cond if p.use_original_formulation else uncond) + p.apg_scale * update
        if p.guidance_rescale > 0.0:
            guided = std_rescale(guided, cond, p.guidance_rescale)
        return guided
