"""A tiny HunyuanImage 2.1 DiT's ComfyUI-layout tensors written in the other published layouts (official
Tencent split q/k/v, fused original, diffusers), by applying the published mapping files (the facts in
tests/reference/manifests; see its README) with their row ranges scaled from the real width to the tiny one."""

from __future__ import annotations

import torch

from helpers import manifest

REAL_HIDDEN = {"dit": 3584, "distilled_dit": 3584, "refiner_dit": 3328}


def apply_entry(entry: dict, source: torch.Tensor, factor: float) -> torch.Tensor:
    """One mapping entry (rename / slice_rows / swap_halves) on a tensor `factor` times the real width."""
    if entry["op"] == "slice_rows":
        start, stop = (row * factor for row in entry["src_rows"])
        assert start.is_integer() and stop.is_integer(), (entry, factor)
        return source[int(start):int(stop)]
    if entry["op"] == "swap_halves":
        half = source.shape[0] // 2
        return torch.cat([source[half:], source[:half]])
    assert entry["op"] == "rename" and "reshape" not in entry, entry
    return source


def convert(state: dict, mapping: str, factor: float) -> dict:
    """state (in the mapping's source names) -> the destination names; entries whose source the tiny
    network lacks (deeper blocks, absent embedders) are skipped, and every source tensor must be used."""
    out, used = {}, set()
    for entry in manifest(mapping)["mapping"]:
        if entry["src"] in state:
            used.add(entry["src"])
            out[entry["dst"]] = apply_entry(entry, state[entry["src"]], factor)
    unused = sorted(state.keys() - used)
    assert not unused, f"{mapping} does not place {unused[:5]}"
    return out


def in_layout(comfy: dict, layout: str, variant: str, hidden: int) -> dict:
    """A ComfyUI-layout state dict (hidden width `hidden`) in `layout`: comfyui, fused_original, tencent,
    diffusers."""
    factor = hidden / REAL_HIDDEN[variant]
    if layout == "comfyui":
        return dict(comfy)
    if layout == "diffusers":
        return convert(comfy, f"mapping.hunyuanimage21_{variant}.comfyui_to_diffusers", factor)
    renames = manifest(f"mapping.hunyuanimage21_{variant}.fused_original_to_comfyui")["mapping"]
    fused = {e["src"]: comfy[e["dst"]] for e in renames if e["dst"] in comfy}
    if layout == "fused_original":
        return fused
    assert layout == "tencent", layout
    return convert(fused, f"mapping.hunyuanimage21_{variant}.fused_original_to_tencent", factor)
