"""Check a file's tensors against a network built on the meta device, then assign them into it.

The loaders build every network on the `meta` device (no memory), compare names and shapes with what the
file holds, and only then hand the file's memory-mapped tensors to the module (`load_state_dict(assign=True)`):
no random initialisation, no second copy of the weights, and a wrong file is refused before anything is
allocated. Used by the VAE loader and reusable by any other loader built the same way.
"""

from __future__ import annotations

import torch

from .errors import ModelFileError, summarize_keys
from .quant.tensor import is_quantized, logical_shape


def module_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a module's state dict (works on a meta-device module)."""
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


def check_shapes(path, description: str, found: dict, expected: dict) -> None:
    """Raise one ModelFileError naming every kind of problem: missing, mis-shaped and unexpected tensors."""
    missing = expected.keys() - found.keys()
    unexpected = found.keys() - expected.keys()
    mismatched = sorted(k for k in expected.keys() & found.keys() if tuple(found[k]) != tuple(expected[k]))
    if not (missing or unexpected or mismatched):
        return
    problems, found_parts, expected_parts = [], [], []
    if missing:
        problems.append(f"{len(missing)} tensors are missing")
        found_parts.append(f"no {summarize_keys(missing)}")
    if mismatched:
        problems.append(f"{len(mismatched)} tensors have the wrong shape")
        shown = mismatched[:3]
        found_parts.append("; ".join(f"{k} with shape {list(found[k])}" for k in shown))
        expected_parts.append("; ".join(f"{k} with shape {list(expected[k])}" for k in shown))
    if unexpected:
        problems.append(f"{len(unexpected)} tensors are not part of it")
        found_parts.append(f"extra {summarize_keys(unexpected)}")
    raise ModelFileError(
        path, f"does not fit the {description}: " + ", ".join(problems),
        found="; ".join(found_parts), expected="; ".join(expected_parts) or None,
        hint="The file is damaged, incomplete, or saved from a different model variant.",
    )


def assign_state_dict(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], path, description: str,
                      dtype: torch.dtype | None = None, device=None) -> torch.nn.Module:
    """Check `state_dict` against the meta-built `module`, then make its tensors the module's weights.

    dtype: cast floating-point tensors to it (None keeps the stored dtypes); device: where the weights go
    (None leaves them where they are, i.e. memory-mapped on the CPU). Tensors are converted one at a time,
    so the peak is the final weights plus one tensor. On any failure after the check (out of memory while
    moving, say) the module is put back on the meta device, so no half-loaded weights keep memory alive.
    """
    # A layout's state dict knows its shapes without building tensors (fused ones would be built twice).
    shapes = getattr(state_dict, "shapes", None)
    if shapes is None:
        shapes = {k: logical_shape(t) for k, t in state_dict.items()}
    check_shapes(path, description, shapes, module_shapes(module))
    try:
        prepared = {name: _prepare(t, dtype, device) for name, t in state_dict.items()}
        module.load_state_dict(prepared, strict=True, assign=True)
        del prepared
        still_meta = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
        if still_meta:
            raise RuntimeError(f"tensors not provided by the state dict: {summarize_keys(still_meta)}")
    except BaseException:
        module.to(device="meta")
        raise
    return module


def _prepare(tensor: torch.Tensor, dtype: torch.dtype | None, device) -> torch.Tensor:
    if is_quantized(tensor):  # stays quantized unless a weight dtype was asked for explicitly
        return tensor.dequantize(dtype, device) if dtype is not None else tensor.to(device=device)
    if dtype is not None and not tensor.is_floating_point():
        dtype = None  # integer/bool tensors (counters, indices) keep their type
    if device is None and dtype is None:
        return tensor
    return tensor.to(device=device, dtype=dtype)
