"""Latent formats: how a family's VAE latents are shaped and normalised for its diffusion model."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LatentFormat:
    """A family's latent space.

    channels: latent channels the diffusion model sees.
    downscale: pixels per latent cell along height and width.
    dims: 2 for [B, C, H, W] latents, 3 for [B, C, T, H, W] (video-style VAEs used for images keep T = 1).
    mean / std: per-channel statistics; the model works on (latent - mean) / std. Empty means identity.
    scale: a single multiplier applied after mean/std (families without per-channel statistics).
    """

    channels: int
    downscale: int
    dims: int = 2
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    scale: float = 1.0

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.channels) + (1,) * (like.ndim - 2)
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device).view(shape)
        std = torch.tensor(self.std, dtype=like.dtype, device=like.device).view(shape)
        return mean, std

    def to_model(self, vae_latent: torch.Tensor) -> torch.Tensor:
        """VAE latent -> the normalised latent the diffusion model samples in."""
        if self.mean:
            mean, std = self._stats(vae_latent)
            vae_latent = (vae_latent - mean) / std
        return vae_latent * self.scale

    def to_vae(self, model_latent: torch.Tensor) -> torch.Tensor:
        """Normalised latent -> what the VAE decoder expects."""
        model_latent = model_latent / self.scale
        if self.mean:
            mean, std = self._stats(model_latent)
            model_latent = model_latent * std + mean
        return model_latent
