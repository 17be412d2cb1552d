"""Qwen-Image-Edit reference images in the DiT: where their tokens go (MSRoPE) and how they are modulated.

Edit, Edit-2509 and Edit-2511 run the Qwen-Image network unchanged on a longer image sequence: each
reference latent (VAE-encoded and normalised like the noisy latent) is packed 2x2 into tokens and appended
after the noisy image's tokens; only the noisy image's tokens come out.

Placement ("index", the official one: diffusers' QwenImageTransformer2DModel with img_shapes
[(1, h, w), (1, h_1, w_1), ...] per sample, QwenEmbedRope with scale_rope):
- the noisy image has frame 0, reference k (1-based) frame k;
- every image's rows and columns are centred on zero at its own size (-ceil(n/2) .. floor(n/2)-1), so
  references of any size, square or not, overlay the noisy image's grid centre on centre;
- text starts at the largest half-extent max(h//2, w//2) over all images, references included.

Edit-2511 (diffusers' `zero_cond_t`, ComfyUI's reference method "index_timestep_zero"): the same placement,
and the reference tokens are modulated with the embedding of timestep 0 (the timestep batch becomes
[t, 0]; text tokens and the output norm keep t).

ComfyUI names the placement with `ref_latents_method` (the FluxKontextMultiReferenceLatentMethod node sets
it; model_base.QwenImage passes it through), defaulting per model to "index", or "index_timestep_zero" when
the checkpoint carries the `__index_timestep_zero__` marker (2511). Implemented here:
- "index": the official placement above;
- "index_timestep_zero": "index" plus the timestep-zero modulation;
- "negative_index": frames -1, -2, ... (ComfyUI's default for Qwen-Image-Layered; the Layered model's extra
  timestep embedding is not supported, so this is the placement only);
- "offset" (also "uxo", which ComfyUI's node sends for "uxo/uno"): ComfyUI's Kontext-style tiling, every
  reference at frame 1, each shifted right of or below the ones before it.
Where ComfyUI's own network differs from the official placement (both come from ComfyUI's
comfy/ldm/qwen_image/model.py): for an odd number of token rows or columns ComfyUI centres one cell higher
(-(n//2) .. n-1-n//2), and it starts the text after the noisy image's half-extent only, not the largest over
the references. We follow diffusers (the published pipelines) in both; for even token grids with references
no larger than the noisy image, ComfyUI's "index" and the official placement are the same positions (run
against ComfyUI 0.8.0's own network on the same tiny weights, every method above agrees to 1e-6 there, and
differs by about 4e-3 on an odd grid or a reference larger than the output).
"""

from __future__ import annotations

from dataclasses import dataclass

# The key that marks an Edit-2511 checkpoint in ComfyUI's files: an empty buffer ComfyUI's network registers
# when its default reference method is "index_timestep_zero" (comfy/model_detection.py looks for it). The
# diffusers release says the same with `"zero_cond_t": true` in transformer/config.json.
ZERO_COND_MARKER = "__index_timestep_zero__"

DEFAULT_METHOD = "index"
ZERO_COND_METHOD = "index_timestep_zero"
METHODS = ("index", "index_timestep_zero", "negative_index", "offset", "uxo")


@dataclass(frozen=True)
class ReferencePlacement:
    """Where one image's tokens sit: frame index and row/column offsets (in tokens) of its centred grid."""

    frame: int
    height: int  # tokens
    width: int
    h_offset: int = 0
    w_offset: int = 0


def resolve_method(method: str | None, zero_cond_t: bool) -> tuple[str, bool]:
    """(placement, timestep_zero) for a reference method name; None takes the model's default."""
    if method is None:
        method = ZERO_COND_METHOD if zero_cond_t else DEFAULT_METHOD
    if method not in METHODS:
        raise ValueError(
            f"unknown reference latent method {method!r}; Qwen-Image takes one of {', '.join(METHODS)}"
        )
    if method == ZERO_COND_METHOD:
        return "index", True
    if method == "uxo":
        return "offset", False
    return method, False


def reference_placements(latent_sizes: list[tuple[int, int]], method: str, patch: int = 2) -> list[ReferencePlacement]:
    """Placements of the references, given their latent sizes (height, width in latent cells, before padding
    to whole patches) and a placement from resolve_method ("index", "negative_index" or "offset")."""
    placements = []
    covered_h = covered_w = 0  # "offset": the extent (latent cells) the references so far cover
    for k, (height, width) in enumerate(latent_sizes, start=1):
        tokens_h, tokens_w = -(-height // patch), -(-width // patch)
        if method == "index":
            placements.append(ReferencePlacement(k, tokens_h, tokens_w))
        elif method == "negative_index":
            placements.append(ReferencePlacement(-k, tokens_h, tokens_w))
        elif method == "offset":
            # ComfyUI's rule (comfy/ldm/qwen_image/model.py, _forward): the next reference goes right of the
            # covered area when that keeps it squarer, else below; offsets are rounded to whole patches.
            h_offset = w_offset = 0
            if height + covered_h > width + covered_w:
                w_offset = covered_w
            else:
                h_offset = covered_h
            covered_h = max(covered_h, height + h_offset)
            covered_w = max(covered_w, width + w_offset)
            placements.append(ReferencePlacement(1, tokens_h, tokens_w, (h_offset + patch // 2) // patch,
                                                 (w_offset + patch // 2) // patch))
        else:
            raise ValueError(f"unknown reference placement {method!r}")
    return placements
