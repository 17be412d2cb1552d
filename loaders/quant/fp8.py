"""FP8 safetensors: fold each layer's scale tensors into its weight, so loaders see plain weight names.

Layouts read:
* plain FP8: float8_e4m3fn / float8_e5m2 weights, no scales (cast at use, value = weight);
* ComfyUI "scaled fp8": a root marker tensor `scaled_fp8`, and per layer `<layer>.scale_weight`
  (value = weight * scale_weight) and optionally `<layer>.scale_input` (an activation scale for fp8
  matmuls; not needed to compute in bf16/fp32, dropped);
* ComfyUI's newer mixed-precision files: per layer `<layer>.comfy_quant` (UTF-8 JSON as uint8, e.g.
  {"format": "float8_e4m3fn"}), `<layer>.weight_scale` and optionally `<layer>.input_scale`; layers
  without comfy_quant stay in their stored precision.
* an official release (Tencent's HunyuanVideo / HunyuanImage FP8): a weights file `<name>.pt` (or
  .safetensors) of FP8 weights and beside it `<name>_map.pt` (or _map.safetensors), a dictionary from layer
  name (`double_blocks.0.img_attn_qkv`) to that layer's scale; value = weight * scale. The map is read
  with `torch.load(weights_only=True)`, never full unpickling.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..errors import ModelFileError, summarize_keys
from ..formats.checkpoint import Checkpoint
from ..formats.open import open_file
from .tensor import FP8_SCALED, QuantizedTensor

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
DROPPED_SUFFIXES = (".scale_input", ".input_scale", ".comfy_quant")
MARKERS = ("scaled_fp8",)
SCALE_MAP_SUFFIX = "_map"  # <name>.pt -> <name>_map.pt, as the official inference code derives it
SUPPORTED_COMFY_QUANT = ("float8_e4m3fn", "float8_e5m2")


def _layer(key: str, suffix: str) -> str:
    return key[: -len(suffix)]


class FP8ScaledView(Checkpoint):
    """A checkpoint whose FP8 weights come out as QuantizedTensor(fp8 * scale), scales and markers hidden."""

    format = "safetensors-fp8"

    def __init__(self, inner: Checkpoint, scale_map: dict[str, torch.Tensor] | None = None):
        super().__init__(inner.path)
        self.inner = inner
        self.metadata = inner.metadata
        keys = inner.keys()
        key_set = set(keys)
        self._scales: dict[str, str] = {}  # weight key -> scale key in the file
        for key in keys:
            for suffix in SCALE_SUFFIXES:
                if key.endswith(suffix):
                    self._scales[_layer(key, suffix) + ".weight"] = key
        self._external = dict(scale_map or {})
        self._check_formats(keys)
        hidden = {k for k in keys if k in MARKERS or k.endswith(SCALE_SUFFIXES + DROPPED_SUFFIXES)}
        self._keys = [k for k in keys if k not in hidden]
        marked = any(k in MARKERS or k.endswith(SCALE_SUFFIXES) for k in keys) or bool(self._external)
        orphans = [k for k in self._scales if k not in key_set]
        if orphans:
            raise ModelFileError(self.path, f"has scales for {len(orphans)} weights it does not contain",
                                 found=summarize_keys(orphans))
        if marked:
            # A scaled file whose fp8 weight has no scale would silently compute with the wrong magnitude.
            unscaled = [k for k in self._keys if inner.dtype(k) in FP8_DTYPES
                        and k not in self._scales and k not in self._external]
            if unscaled:
                raise ModelFileError(
                    self.path, f"is a scaled FP8 file, but {len(unscaled)} FP8 weights have no scale tensor",
                    found=f"no scale for {summarize_keys(unscaled)}",
                    expected="a <layer>.scale_weight (or <layer>.weight_scale) beside every FP8 <layer>.weight",
                    hint="The file is incomplete or was written by a converter this pack does not know.",
                )

    def _check_formats(self, keys) -> None:
        for key in keys:
            if not key.endswith(".comfy_quant"):
                continue
            try:
                info = json.loads(bytes(self.inner.tensor(key).to(torch.uint8).tolist()).decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                raise ModelFileError(self.path, f"has an unreadable quantization record {key!r}") from None
            if info.get("format") not in SUPPORTED_COMFY_QUANT:
                raise ModelFileError(
                    self.path, f"uses a quantization format this pack cannot compute ({_layer(key, '.comfy_quant')})",
                    found=str(info.get("format")), expected=", ".join(SUPPORTED_COMFY_QUANT),
                )

    @staticmethod
    def applies_to(checkpoint: Checkpoint) -> bool:
        return any(k in MARKERS or k.endswith(SCALE_SUFFIXES + (".comfy_quant",)) for k in checkpoint.keys())

    def keys(self):
        return self._keys

    def shape(self, key):
        return self.inner.shape(key)

    def dtype(self, key):
        return self.inner.dtype(key)

    def tensor(self, key):
        data = self.inner.tensor(key)
        scale_key = self._scales.get(key)
        scale = self.inner.tensor(scale_key) if scale_key else self._external.get(key)
        if scale is None or data.dtype not in FP8_DTYPES:
            return data
        scale = scale.to(torch.float32).reshape(-1) if scale.numel() > 1 else scale.to(torch.float32).reshape(())
        return QuantizedTensor(data, FP8_SCALED, data.shape, scale=scale)


# --- official releases: weights file + separate per-layer scale map -------------------------------------
def scale_map_path(weights_path) -> Path | None:
    """The scale map beside an official FP8 weights file, if there is one."""
    path = Path(weights_path)
    for suffix in (".pt", ".safetensors", ".pth"):
        candidate = path.with_name(path.stem + SCALE_MAP_SUFFIX + suffix)
        if candidate.is_file() and candidate != path:
            return candidate
    return None


def looks_like_scale_map(checkpoint: Checkpoint) -> bool:
    """A map holds only one-value tensors, under layer names without a `.weight` suffix."""
    keys = checkpoint.keys()
    return bool(keys) and all(
        not k.endswith((".weight", ".bias")) and len(checkpoint.shape(k)) <= 1 and math.prod(checkpoint.shape(k)) == 1
        for k in keys
    )


def read_scale_map(path) -> dict[str, torch.Tensor]:
    """Layer name -> scale, returned keyed by the weight it scales (`<layer>.weight`)."""
    scale_map = open_file(path)
    if not looks_like_scale_map(scale_map):
        raise ModelFileError(path, "is not an FP8 scale map",
                             found=f"tensors such as {summarize_keys(scale_map.keys(), 3)}",
                             expected="one scale per layer name, e.g. double_blocks.0.img_attn_qkv -> 0.0021")
    return {f"{k}.weight": scale_map.tensor(k).reshape(()).to(torch.float32) for k in scale_map.keys()}


def with_official_scale_map(checkpoint: Checkpoint) -> Checkpoint:
    """Fold an official release's scale map into its FP8 weights file; refuse an FP8 .pt without one
    (its weights alone are off by each layer's scale) and a map opened in place of the weights."""
    path = checkpoint.path
    if looks_like_scale_map(checkpoint):
        weights = path.with_name(path.name.replace(SCALE_MAP_SUFFIX + path.suffix, path.suffix))
        raise ModelFileError(path, "is an FP8 scale map, not a model",
                             hint=f"Choose the weights file it belongs to ({weights.name}); its map is found "
                                  f"automatically.")
    fp8 = [k for k in checkpoint.keys() if checkpoint.dtype(k) in FP8_DTYPES]
    if not fp8:
        return checkpoint
    map_path = scale_map_path(path)
    if map_path is None:
        if checkpoint.format == "torch":  # official .pt releases always come with a map
            raise ModelFileError(
                path, f"holds {len(fp8)} FP8 weights but no scales",
                expected=f"the scale map {path.stem}{SCALE_MAP_SUFFIX}.pt beside it",
                hint="Official FP8 releases ship the weights and a *_map.pt file; put both in the same folder.",
            )
        return checkpoint  # plain FP8 safetensors: the weights are the values
    scales = read_scale_map(map_path)
    unknown = [k for k in scales if k not in checkpoint]
    if unknown:
        raise ModelFileError(map_path, f"scales {len(unknown)} layers that {path.name} does not contain",
                             found=summarize_keys(unknown), hint="The map belongs to a different weights file.")
    return FP8ScaledView(checkpoint, scale_map=scales)


def with_fp8_scales(checkpoint: Checkpoint) -> Checkpoint:
    """Scaled FP8 files: present each weight with its scale folded in, whether the scales are inside the
    file or in an official release's separate map."""
    if FP8ScaledView.applies_to(checkpoint):
        return FP8ScaledView(checkpoint)
    return with_official_scale_map(checkpoint)
