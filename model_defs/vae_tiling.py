"""Tiled VAE decode and encode for any family: large images within a fixed activation budget.

The spatial grid is cut into overlapping tiles of `tile` x `tile` latent cells (edge tiles included: the
tiles are spread evenly so none is a thin sliver), each tile goes through the VAE alone, and the results
are blended with a linear feather across every overlap. The feather weights of neighbouring tiles add up
to one (and are normalised wherever three or more tiles meet), so flat regions pass through unchanged and
no seam is visible; the weights ramp from almost zero at a tile's inner edge, where a tile's conv padding
makes it least accurate.

Memory: the output tensor plus one tile's activations. Tiles are cut as views of the input, samples of a
batch are processed one after another, and the feather weights are separable 1-D vectors (no full-size
weight map is accumulated).

Sizes are in latent cells; `scale` is the VAE's spatial factor (8 for Qwen-Image, 32 for HunyuanImage 2.1).
Defaults cover 512 pixels per tile with a 128-pixel overlap at any scale (64 / 16 cells for an 8x VAE):
cheap on a 12-24 GB GPU, and wide enough that seams stay invisible.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

DEFAULT_TILE_PIXELS = 512
DEFAULT_OVERLAP_PIXELS = 128

Progress = Callable[[int, int], None]  # (tiles done, tiles in all)


def tiled_decode(decode_fn: Callable[[torch.Tensor], torch.Tensor], latent: torch.Tensor, scale: int,
                 tile: int | None = None, overlap: int | None = None, output_device=None,
                 progress: Progress | None = None) -> torch.Tensor:
    """`decode_fn(latent)` computed tile by tile.

    latent: [B, C, h, w] or [B, C, 1, h, w]; `decode_fn` receives tiles of the same rank and returns
    [b, C', h*scale, w*scale] (or [b, C', 1, ...]). The result has the rank `decode_fn` returns.
    tile, overlap: in latent cells. output_device: where the result is assembled (default: where the
    tiles come out), e.g. "cpu" to keep a large image off the GPU.
    """
    return _tiled(decode_fn, latent, cells_in=1, cells_out=scale, tile=tile or _default(DEFAULT_TILE_PIXELS, scale),
                  overlap=_default(DEFAULT_OVERLAP_PIXELS, scale) if overlap is None else overlap,
                  output_device=output_device, progress=progress)


def tiled_encode(encode_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, scale: int,
                 tile: int | None = None, overlap: int | None = None, output_device=None,
                 progress: Progress | None = None) -> torch.Tensor:
    """`encode_fn(images)` computed tile by tile.

    images: [B, C, H, W] or [B, C, 1, H, W] with H and W multiples of `scale` (crop first); tiles start on
    multiples of `scale` so every tile's latent grid lines up with the whole image's. tile, overlap: in
    latent cells (tile * scale pixels per tile). The result has the rank `encode_fn` returns.
    """
    height, width = images.shape[-2:]
    if height % scale or width % scale:
        raise ValueError(f"tiled encode needs sides that are multiples of {scale}, got {width}x{height}; crop first")
    return _tiled(encode_fn, images, cells_in=scale, cells_out=1, tile=tile or _default(DEFAULT_TILE_PIXELS, scale),
                  overlap=_default(DEFAULT_OVERLAP_PIXELS, scale) if overlap is None else overlap,
                  output_device=output_device, progress=progress)


def crop_to_multiple(images: torch.Tensor, multiple: int) -> torch.Tensor:
    """Centre-crop H and W down to multiples of `multiple` (what ComfyUI's VAE encode does before encoding,
    and what tiled_encode needs)."""
    height, width = images.shape[-2:]
    keep = (height - height % multiple, width - width % multiple)
    if min(keep) == 0:
        raise ValueError(f"images must be at least {multiple}x{multiple} pixels, got {width}x{height}")
    top, left = (height % multiple) // 2, (width % multiple) // 2
    return images[..., top:top + keep[0], left:left + keep[1]]


def _default(pixels: int, scale: int) -> int:
    return max(1, pixels // scale)


def tile_spans(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) of tiles covering [0, size): all `tile` long (or one tile of `size`), evenly spread,
    neighbours overlapping by at least `overlap`."""
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if size <= tile:
        return [(0, size)]
    count = math.ceil((size - tile) / (tile - overlap)) + 1
    starts = [round(i * (size - tile) / (count - 1)) for i in range(count)]
    return [(s, s + tile) for s in starts]


def feather_weights(spans: list[tuple[int, int]], scale: int, device) -> list[torch.Tensor]:
    """One 1-D weight vector per span, in output units (span * scale), summing to one at every position.

    Each tile ramps linearly across the full overlap with each neighbour, (i + 0.5) / width up and the
    mirror image down, so two overlapping ramps add to exactly one; positions covered by three or more
    tiles are normalised by their total.
    """
    weights = []
    for i, (start, end) in enumerate(spans):
        w = torch.ones((end - start) * scale, dtype=torch.float64)
        if i > 0 and spans[i - 1][1] > start:
            width = (spans[i - 1][1] - start) * scale
            w[:width] = torch.minimum(w[:width], (torch.arange(width, dtype=torch.float64) + 0.5) / width)
        if i + 1 < len(spans) and spans[i + 1][0] < end:
            width = (end - spans[i + 1][0]) * scale
            ramp = (torch.arange(width, dtype=torch.float64) + 0.5).flip(0) / width
            w[-width:] = torch.minimum(w[-width:], ramp)
        weights.append(w)
    total = torch.zeros(spans[-1][1] * scale, dtype=torch.float64)
    for (start, _), w in zip(spans, weights):
        total[start * scale:start * scale + len(w)] += w
    return [(w / total[start * scale:start * scale + len(w)]).to(device=device, dtype=torch.float32)
            for (start, _), w in zip(spans, weights)]


def _tiled(fn, x: torch.Tensor, cells_in: int, cells_out: int, tile: int, overlap: int, output_device,
           progress: Progress | None) -> torch.Tensor:
    if x.ndim == 5 and x.shape[2] != 1:
        raise ValueError(f"tiling handles single frames; got {x.shape[2]} frames (shape {list(x.shape)})")
    if x.ndim not in (4, 5):
        raise ValueError(f"expected [B, C, H, W] or [B, C, 1, H, W], got shape {list(x.shape)}")
    grid_h, grid_w = x.shape[-2] // cells_in, x.shape[-1] // cells_in
    rows, cols = tile_spans(grid_h, tile, overlap), tile_spans(grid_w, tile, overlap)
    total_tiles = x.shape[0] * len(rows) * len(cols)

    out = None
    done = 0
    for b in range(x.shape[0]):
        for row, (top, bottom) in enumerate(rows):
            for col, (left, right) in enumerate(cols):
                piece = x[b:b + 1, ..., top * cells_in:bottom * cells_in, left * cells_in:right * cells_in]
                result = fn(piece)
                five_d = result.ndim == 5
                result = _as_4d(result)
                expected = ((bottom - top) * cells_out, (right - left) * cells_out)
                if tuple(result.shape[-2:]) != expected or result.shape[0] != 1:
                    raise ValueError(f"the tiled function returned shape {list(result.shape)} for a tile of "
                                     f"{list(piece.shape)}; expected 1 sample of {expected[0]}x{expected[1]}")
                if out is None:
                    device = result.device if output_device is None else torch.device(output_device)
                    out = torch.zeros(x.shape[0], result.shape[1], grid_h * cells_out, grid_w * cells_out,
                                      dtype=torch.float32, device=device)
                    row_weights = feather_weights(rows, cells_out, device)
                    col_weights = feather_weights(cols, cells_out, device)
                    out_dtype, out_five_d = result.dtype, five_d
                weight = row_weights[row][:, None] * col_weights[col]
                target = out[b, :, top * cells_out:bottom * cells_out, left * cells_out:right * cells_out]
                target.addcmul_(result[0].to(device=out.device, dtype=torch.float32), weight)
                del result
                done += 1
                if progress is not None:
                    progress(done, total_tiles)

    out = out.to(out_dtype)
    return out.unsqueeze(2) if out_five_d else out


def _as_4d(t: torch.Tensor) -> torch.Tensor:
    if t.ndim == 5:
        if t.shape[2] != 1:
            raise ValueError(f"the tiled function returned {t.shape[2]} frames; expected one")
        return t[:, :, 0]
    return t
