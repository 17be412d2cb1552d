"""PyTorch .pt/.pth/.ckpt/.bin files, read with `torch.load(weights_only=True)` (never full unpickling).

Checked: torch can read the file at all (any error it raises, whatever its type or message, becomes a
ModelFileError); the file holds a dictionary of tensors, possibly wrapped as {"state_dict": ...},
{"module": ...}, {"model": ...} or {"ema": ...}; tensor names are strings; tensors are plain dense ones.
"""

from __future__ import annotations

import torch

from ..errors import ModelFileError, brief
from .checkpoint import Checkpoint

TORCH_PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
WRAPPERS = ("state_dict", "module", "model", "ema")


class TorchPickleFile(Checkpoint):
    """Memory-mapped when the file is in torch's zip format, read whole for the legacy format."""

    format = "torch"

    def __init__(self, path):
        super().__init__(path)
        try:
            try:
                data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                data = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
        except Exception as e:  # torch raises many types for damaged or unsafe pickles, some without a message
            raise ModelFileError(
                path, "could not be read as a PyTorch weights file",
                found=_describe(e),
                hint="Only plain tensor dictionaries are read (weights_only=True); files that need full "
                     "unpickling are refused because unpickling can run arbitrary code. A damaged or "
                     "incomplete download gives this error too.",
            ) from None
        self._tensors = _unwrap_state_dict(self.path, data)

    def keys(self):
        return list(self._tensors)

    def shape(self, key):
        return tuple(self._tensors[key].shape)

    def dtype(self, key):
        return self._tensors[key].dtype

    def tensor(self, key):
        return self._tensors[key]


def _describe(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:300]}" if lines else type(error).__name__


def _unwrap_state_dict(path, data) -> dict[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(data, dict) and not any(isinstance(v, torch.Tensor) for v in data.values()):
            for wrapper in WRAPPERS:
                if isinstance(data.get(wrapper), dict):
                    data = data[wrapper]
                    break
            else:
                break
    if not isinstance(data, dict):
        raise ModelFileError(path, "does not hold a dictionary of tensors", found=type(data).__name__)
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelFileError(path, "holds no tensors", found=f"keys {brief(list(data))}")
    odd_names = [k for k in tensors if not isinstance(k, str)]
    if odd_names:
        raise ModelFileError(path, "names tensors with something other than strings",
                             found=brief(odd_names))
    odd_layouts = [k for k, v in tensors.items() if v.layout != torch.strided or v.is_quantized or v.is_meta]
    if odd_layouts:
        raise ModelFileError(path, "holds tensors that are not plain dense tensors",
                             found=", ".join(f"{k} ({tensors[k].layout})" for k in odd_layouts[:4]))
    return tensors
