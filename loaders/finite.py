"""NaN and Inf: stop with a message instead of a black image.

A network whose output turns NaN or Inf would give a black or garbage picture and no message. The hosts
check each output (one reduction per step: cheap beside the step) and, when it is not finite, look for the
cause: tensors of the loaded module that hold NaN/Inf (a damaged file, or a patch applied to it) are named
with the file; if every weight is finite, the computation overflowed in its dtype, and the message says
which step and what to change.
"""

from __future__ import annotations

from typing import Callable

import torch

from .errors import ModelFileError, summarize_keys
from .quant.tensor import is_quantized


class NonFiniteOutputError(ValueError):
    """A network produced NaN/Inf from finite weights: its compute dtype overflowed (or its inputs were bad)."""


def is_finite(tensor: torch.Tensor) -> bool:
    return bool(torch.isfinite(tensor).all())


def nonfinite_tensors(module: torch.nn.Module) -> list[str]:
    """Names of the module's parameters and buffers holding NaN or Inf (quantized weights are expanded
    one at a time to look; nothing is kept)."""
    bad = []
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if tensor.is_meta:
                continue
            values = tensor.dequantize(torch.float32) if is_quantized(tensor) else tensor
            if values.is_floating_point() and not is_finite(values):
                bad.append(name)
    return bad


def check_finite(output: torch.Tensor, module: torch.nn.Module, path, what: str,
                 where: str | Callable[[], str] = "", remedy: str = "") -> torch.Tensor:
    """`output` if it is finite; otherwise raise, naming the tensors of `module` (loaded from `path`) that
    hold NaN/Inf, or saying the computation overflowed `where` (e.g. "at step 3 of 20") and the `remedy`.
    `where` may be a function, called only on failure (finding the step can cost a device sync)."""
    if is_finite(output):
        return output
    where = where() if callable(where) else where
    bad = nonfinite_tensors(module)
    if bad:
        raise ModelFileError(
            path, f"holds NaN or Inf values, so the {what} produced them{' ' + where if where else ''}",
            found=f"NaN/Inf in {len(bad)} tensors: {summarize_keys(bad, 4)}",
            hint="The file is damaged (or a LoRA or patch applied to it is): download it again, or remove the patch.",
        )
    place = f" {where}" if where else ""
    raise NonFiniteOutputError(
        f"the {what} produced NaN or Inf values{place}, although every weight of {path} is finite: the "
        f"computation overflowed in its dtype. {remedy}".strip()
    )
