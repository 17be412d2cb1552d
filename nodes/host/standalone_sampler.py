"""Flow-matching Euler sampling for the standalone host (inside ComfyUI its samplers run instead).

The network is called as ComfyUI calls it: timestep = sigma * the family's timestep scale, the
conditioning's extras turned into keyword inputs by the family's ConditioningAdapter (the same one the
ComfyUI host uses), and transformer_options carrying the current sigma and the schedule (what a MeanFlow
network reads its step end from).
"""

from __future__ import annotations

import torch

from ...loaders.finite import check_finite
from ...model_defs.guidance import ClassifierFreeGuidance
from ..sampling_request import OVERFLOW_REMEDY, SamplingRequest, initial_noise


def _network_inputs(family, conditioning, batch: int, device, dtype) -> dict:
    if len(conditioning) != 1:
        raise ValueError(
            f"outside ComfyUI a conditioning must hold exactly one prompt entry; got {len(conditioning)} "
            "(combine/area conditioning needs ComfyUI)"
        )
    context, extras = conditioning[0]
    inputs = {"context": context.to(device, dtype)}
    for name, value in family.conditioning.network_inputs(extras).items():
        if not isinstance(value, torch.Tensor):
            value = torch.full((batch,), float(value))  # a scalar input (embedded guidance), per sample
        elif value.is_floating_point():
            value = value.to(dtype)
        inputs[name] = value.to(device)
    for name, value in family.conditioning.reference_inputs(extras, family.latent_format).items():
        inputs[name] = [latent.to(device, dtype) for latent in value] if isinstance(value, list) else value
    return inputs


@torch.no_grad()
def sample_euler(model, request: SamplingRequest, progress) -> torch.Tensor:
    """Run the schedule with Euler steps; returns the raw (VAE-space) latent on the CPU."""
    family, network = model.family, model.network
    device, dtype = model.device, model.dtype
    latent = request.latent
    if family.latent_format.dims == 3 and latent.ndim == 4:
        latent = latent.unsqueeze(2)  # the video-style layout, [B, C, 1, H, W], as ComfyUI does
    sigmas = request.sigmas.to(torch.float32)

    start = family.latent_format.to_model(latent.to(torch.float32))
    if request.add_noise:
        noise = initial_noise(latent, request.seed)
        x = sigmas[0] * noise + (1 - sigmas[0]) * start
    else:
        x = start
    x = x.to(device)
    batch = x.shape[0]

    positive = _network_inputs(family, request.positive, batch, device, dtype)
    rule = request.guidance or (lambda scale, extras: ClassifierFreeGuidance(scale))
    guide = rule(request.cfg, request.positive[0][1])
    steps = len(sigmas) - 1
    use_uncond = any(guide.needs_uncond(i, steps) for i in range(steps))
    negative = _network_inputs(family, request.negative, batch, device, dtype) if use_uncond else None

    def predict(x, sigma, inputs, where):
        timestep = torch.full((batch,), sigma * family.timestep_scale, device=device, dtype=torch.float32)
        options = {"sigmas": torch.full((batch,), sigma), "sample_sigmas": sigmas}
        out = network(x.to(dtype), timestep, transformer_options=options, **inputs).float()
        return check_finite(out, network, model.path, "diffusion model", where, OVERFLOW_REMEDY)

    for i in range(steps):
        sigma, sigma_next = sigmas[i].item(), sigmas[i + 1].item()
        where = f"at step {i + 1} of {steps} (sigma {sigma:.4f}, {dtype})"
        cond = predict(x, sigma, positive, where)
        uncond = predict(x, sigma, negative, where) if guide.needs_uncond(i, steps) else None
        velocity = guide.combine(cond, uncond, i, steps, sigma)
        x = x + (sigma_next - sigma) * velocity
        progress.update(1)
    return family.latent_format.to_vae(x.cpu())
