"""Flow-matching Euler sampling for the standalone host (inside ComfyUI its samplers run instead)."""

from __future__ import annotations

import torch

from ...loaders.finite import check_finite
from ..sampling_request import OVERFLOW_REMEDY, SamplingRequest, initial_noise


def _text_inputs(conditioning, device, dtype):
    if len(conditioning) != 1:
        raise ValueError(
            f"outside ComfyUI a conditioning must hold exactly one prompt entry; got {len(conditioning)} "
            "(combine/area conditioning needs ComfyUI)"
        )
    context, extras = conditioning[0]
    mask = extras.get("attention_mask")
    return context.to(device, dtype), (None if mask is None else mask.to(device))


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

    positive = _text_inputs(request.positive, device, dtype)
    use_cfg = request.cfg != 1.0
    negative = _text_inputs(request.negative, device, dtype) if use_cfg else None

    steps = len(sigmas) - 1

    def predict(x, t, context, mask, where):
        out = network(x.to(dtype), t, context, attention_mask=mask).float()
        return check_finite(out, network, model.path, "diffusion model", where, OVERFLOW_REMEDY)

    for i in range(steps):
        sigma, sigma_next = sigmas[i].item(), sigmas[i + 1].item()
        t = torch.full((x.shape[0],), sigma, device=device, dtype=torch.float32)
        where = f"at step {i + 1} of {steps} (sigma {sigma:.4f}, {dtype})"
        velocity = predict(x, t, positive[0], positive[1], where)
        if use_cfg:
            uncond = predict(x, t, negative[0], negative[1], where)
            if request.guidance is not None:
                velocity = request.guidance(velocity, uncond, request.cfg)
            else:
                velocity = uncond + request.cfg * (velocity - uncond)
        x = x + (sigma_next - sigma) * velocity
        progress.update(1)
    return family.latent_format.to_vae(x.cpu())
