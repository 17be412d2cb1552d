"""Latent grids to token sequences and back, for 2-D (images) and 3-D (video / frame stacks) patches.

Tokens run row-major over the patch grid ((frame,) row, column); each token's output features are
channel-major within its patch: [C, *patch] flattened, the order of diffusers' and ComfyUI's unpatchify.
Grids that are not whole patches are padded (circularly, as ComfyUI pads) and the output is cropped back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class PatchEmbed(torch.nn.Module):
    """`proj`: a Conv2d / Conv3d with kernel = stride = patch, mapping a latent grid to tokens."""

    def __init__(self, patch_size: tuple[int, ...], in_channels: int, dim: int, operations, bias: bool = True,
                 dtype=None, device=None):
        super().__init__()
        if len(patch_size) not in (2, 3):
            raise ValueError(f"patch size must have 2 or 3 axes, got {patch_size}")
        self.patch_size = tuple(patch_size)
        conv = operations.Conv2d if len(patch_size) == 2 else operations.Conv3d
        self.proj = conv(in_channels, dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias,
                         dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, *grid] (whole patches) -> [B, tokens, dim]."""
        return self.proj(x).flatten(2).transpose(1, 2)


def pad_to_patches(x: torch.Tensor, patch_size: tuple[int, ...]) -> torch.Tensor:
    """Pad the trailing len(patch_size) axes of x up to whole patches (circular); no copy when whole."""
    pads = []
    for size, patch in zip(reversed(x.shape[-len(patch_size):]), reversed(patch_size)):
        pads += [0, (-size) % patch]
    if not any(pads):
        return x
    return F.pad(x, pads, mode="circular")


def patch_grid(spatial_shape, patch_size: tuple[int, ...]) -> tuple[int, ...]:
    """Number of patches along each axis of a grid that is whole patches."""
    return tuple(size // patch for size, patch in zip(spatial_shape, patch_size))


def grid_positions(grid: tuple[int, ...], device=None) -> torch.Tensor:
    """[prod(grid), len(grid)] integer positions of the tokens, row-major, starting at 0 on every axis."""
    axes = [torch.arange(n, device=device) for n in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(grid))


def unpatchify(tokens: torch.Tensor, grid: tuple[int, ...], patch_size: tuple[int, ...], channels: int):
    """[B, prod(grid), channels * prod(patch)] -> [B, channels, *(grid * patch)]."""
    batch, n = tokens.shape[:2]
    if n != math.prod(grid):
        raise ValueError(f"{n} tokens do not fill a {grid} grid")
    ndim = len(grid)
    x = tokens.reshape(batch, *grid, channels, *patch_size)
    # batch, channels, then (grid axis, patch axis) pairs
    order = [0, ndim + 1]
    for axis in range(ndim):
        order += [1 + axis, ndim + 2 + axis]
    x = x.permute(*order)
    return x.reshape(batch, channels, *(g * p for g, p in zip(grid, patch_size)))
