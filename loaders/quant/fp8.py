"""FP8 files: FP8 weights presented as QuantizedTensor (kept FP8 in memory, dequantized per layer), each
with its scale folded in, scales and markers hidden, so loaders see plain weight names.

Layouts read:
* plain FP8 (no scales; the published qwen_image_fp8_e4m3fn.safetensors is one): value = the fp8 number.
  FP8 tensors of 2 or more dimensions come out as QuantizedTensor without a scale, so every host keeps
  them FP8 (on the CPU too) and dequantizes per layer; 1-D ones (biases, norms) stay plain FP8 tensors
  that layers cast at use;
* ComfyUI "scaled fp8": a root marker tensor `scaled_fp8`, and per layer `<layer>.scale_weight`
  (value = weight * scale_weight) and optionally `<layer>.scale_input` (an activation scale for fp8
  matmuls; not needed to compute in bf16/fp32, dropped). ComfyUI 0.3.64 itself saves such models with
  every Linear bias in FP8 and no scale of its own (its scaled_fp8 ops build the whole Linear, bias
  included, in the FP8 dtype, and cast the bias at use: value = the fp8 number); unscaled FP8 tensors of
  fewer than 2 dimensions are read that way;
* ComfyUI's newer mixed-precision files: per layer `<layer>.comfy_quant` (UTF-8 JSON as uint8, e.g.
  {"format": "float8_e4m3fn"}), `<layer>.weight_scale` and optionally `<layer>.input_scale`; layers
  without comfy_quant stay in their stored precision;
* an official release: a weights file of FP8 weights and beside it a map from layer name to that layer's
  scale (value = weight * scale). The map is read with `torch.load(weights_only=True)`, never full
  unpickling. As in the official code, a map entry for a weight that is not FP8 is not applied.
  - HunyuanVideo: `<name>.pt` + `<name>_map.pt` (layer names like `double_blocks.0.img_attn_qkv`).
  - HunyuanImage 2.1 (tencent/HunyuanImage-2.1 dit/): `<name>_fp8.safetensors` +
    `<name>_fp8_scale.safetensors`, layer names of the official split layout (`double_blocks.0.img_attn_q`,
    `single_blocks.0.linear1_mlp`, `single_blocks.0.linear2.fc`), one float32 per Linear inside the
    double/single blocks. The official loader (hyimage convert_fp8_linear, then load_state_dict(strict=True)
    of the FP8 file) gives each such Linear a `weight_scale` parameter set from the map and then overwritten
    by the weights file's own `<layer>.weight_scale`, so that file must hold them too; each scale is
    amax / 448 (per_tensor_quantize) and is applied as weight.to(dtype) * scale.to(dtype). Here: the
    file's own `.weight_scale` tensors are used where present (as the strict load leaves them), the map
    supplies any the file lacks; the product is taken in float32 (the official code rounds the scale to the
    compute dtype first, a difference of at most one bf16 rounding of the scale).

Checked, each failure a ModelFileError naming the file (all from the header, no tensor data read except
the small comfy_quant records and, in an FP8 file without any scale, its smallest FP8 matrix):
* a scale in the file belongs to an FP8 weight the file holds, is floating point, and has 1 element or one
  per output row of that weight; a layer has one scale, not two;
* in a scaled file every FP8 tensor of 2 or more dimensions has a scale (ComfyUI writes one for every
  Linear, so a missing one means a damaged file, and the weight alone would have the wrong magnitude);
* comfy_quant records are small uint8 JSON objects with a supported string "format", for FP8 weights;
* official maps hold one floating-point value per layer, for layers the weights file holds; with a map,
  every FP8 layer has a scale (from the map or the file), else the layers without one are named; an FP8
  .pt without its map is refused, and so is an FP8 file without any scale whose weights are stored
  scaled to the format's full range (an official release's weights without their scale file: a plain
  FP8 cast of a real network never reaches 448).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import ModelFileError, brief, summarize_keys
from ..formats.checkpoint import Checkpoint
from ..formats.open import open_file
from ..formats.strict_json import JSONProblem, parse_json_object
from .tensor import FP8_SCALED, QuantizedTensor

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
RECORD_SUFFIX = ".comfy_quant"
DROPPED_SUFFIXES = (".scale_input", ".input_scale", RECORD_SUFFIX)
MARKERS = ("scaled_fp8",)
SCALE_MAP_SUFFIX = "_map"  # <name>.pt -> <name>_map.pt, as the official HunyuanVideo code derives it
# <name>.safetensors -> <name>_scale.safetensors: HunyuanImage 2.1's hunyuanimage2.1_fp8.safetensors and
# hunyuanimage2.1_fp8_scale.safetensors (hyimage/models/model_zoo.py names them so).
SCALE_MAP_SUFFIXES = (SCALE_MAP_SUFFIX, "_scale")
SUPPORTED_COMFY_QUANT = ("float8_e4m3fn", "float8_e5m2")
MAX_RECORD_BYTES = 4096  # a comfy_quant record is a few dozen bytes of JSON
DAMAGED_HINT = "The file is damaged or incomplete, or was written by a converter this pack does not know."


def _layer(key: str, suffix: str) -> str:
    return key[: -len(suffix)]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def has_in_file_scales(checkpoint: Checkpoint) -> bool:
    return any(k in MARKERS or k.endswith(SCALE_SUFFIXES + (RECORD_SUFFIX,)) for k in checkpoint.keys())


class FP8View(Checkpoint):
    """`inner` with its FP8 weights as QuantizedTensor: scaled by the file's own scale tensors, by an
    official map (`scale_map`: weight key -> scale), or unscaled (a plain FP8 file)."""

    def __init__(self, inner: Checkpoint, scale_map: dict[str, torch.Tensor] | None = None, map_path=None):
        super().__init__(inner.path)
        self.inner = inner
        self.format = f"{inner.format}-fp8"
        self.metadata = inner.metadata
        keys = inner.keys()
        self._scale_keys: dict[str, str] = {}  # weight key -> its scale's key in the file
        for key in keys:
            for suffix in SCALE_SUFFIXES:
                if key.endswith(suffix):
                    weight = _layer(key, suffix) + ".weight"
                    if weight in self._scale_keys:
                        raise ModelFileError(self.path, f"has two scales for {weight}",
                                             found=f"{self._scale_keys[weight]} and {key}", hint=DAMAGED_HINT)
                    self._scale_keys[weight] = key
        self._map_scales = dict(scale_map or {})
        self.scaled = has_in_file_scales(inner) or bool(self._map_scales)
        self._keys = [k for k in keys if not (k in MARKERS or k.endswith(SCALE_SUFFIXES + DROPPED_SUFFIXES))]
        key_set = set(keys)
        records = [k for k in keys if k.endswith(RECORD_SUFFIX)]
        orphans = [w for w in self._scale_keys if w not in key_set]
        orphans += [_layer(k, RECORD_SUFFIX) + ".weight" for k in records
                    if _layer(k, RECORD_SUFFIX) + ".weight" not in key_set]
        if orphans:
            raise ModelFileError(self.path, f"has scales for {len(orphans)} weights it does not contain",
                                 found=summarize_keys(orphans), hint=DAMAGED_HINT)
        for weight, scale_key in self._scale_keys.items():
            self._check_scale(weight, scale_key)
        for key in records:
            self._check_record(key)
        if self.scaled:
            unscaled = [k for k in self._keys if inner.dtype(k) in FP8_DTYPES and len(inner.shape(k)) >= 2
                        and k not in self._scale_keys and k not in self._map_scales]
            if unscaled and map_path is not None:
                layers = [_layer(k, ".weight") if k.endswith(".weight") else k for k in unscaled]
                raise ModelFileError(
                    self.path, f"has {len(unscaled)} FP8 layers that neither it nor its scale map "
                               f"{Path(map_path).name} gives a scale",
                    found=f"no scale for layer {summarize_keys(layers)}",
                    expected=f"a scale in {Path(map_path).name} (or a <layer>.weight_scale in the file) for every "
                             f"FP8 layer",
                    hint="The scale map belongs to another release or is incomplete; download the weights file "
                         "and its scale map of the same release again.",
                )
            if unscaled:
                raise ModelFileError(
                    self.path, f"is a scaled FP8 file, but {len(unscaled)} FP8 weights have no scale tensor",
                    found=f"no scale for {summarize_keys(unscaled)}",
                    expected="a <layer>.scale_weight (or <layer>.weight_scale) beside every FP8 <layer>.weight",
                    hint=DAMAGED_HINT,
                )

    def _check_scale(self, weight: str, scale_key: str) -> None:
        weight_dtype, weight_shape = self.inner.dtype(weight), self.inner.shape(weight)
        if weight_dtype not in FP8_DTYPES:
            raise ModelFileError(self.path, f"has a scale for {weight}, which is stored as "
                                 f"{_dtype_name(weight_dtype)}, not FP8", found=scale_key, hint=DAMAGED_HINT)
        scale_dtype, scale_shape = self.inner.dtype(scale_key), self.inner.shape(scale_key)
        if not scale_dtype.is_floating_point:
            raise ModelFileError(self.path, f"stores the scale {scale_key} as {_dtype_name(scale_dtype)}",
                                 expected="a floating-point scale", hint=DAMAGED_HINT)
        rows = weight_shape[0] if weight_shape else 1
        if math.prod(scale_shape) != 1 and tuple(scale_shape) not in ((rows,), (rows, 1)):
            raise ModelFileError(self.path, f"has a scale of the wrong shape for {weight}",
                                 found=f"{scale_key} of shape {list(scale_shape)} for a weight of shape "
                                       f"{list(weight_shape)}",
                                 expected=f"one value, or one per output row ({rows})", hint=DAMAGED_HINT)

    def _check_record(self, key: str) -> None:
        layer = _layer(key, RECORD_SUFFIX)
        dtype, shape = self.inner.dtype(key), self.inner.shape(key)
        if dtype != torch.uint8 or len(shape) != 1 or shape[0] > MAX_RECORD_BYTES:
            raise ModelFileError(self.path, f"has an unreadable quantization record {brief(key)}",
                                 found=f"{_dtype_name(dtype)} of shape {list(shape)}",
                                 expected=f"UTF-8 JSON as uint8, at most {MAX_RECORD_BYTES} bytes", hint=DAMAGED_HINT)
        raw = self.inner.tensor(key).numpy().tobytes()
        try:
            info = parse_json_object(raw)
        except JSONProblem:
            info = None
        if not isinstance(info, dict) or not isinstance(info.get("format"), str):
            raise ModelFileError(self.path, f"has an unreadable quantization record {brief(key)}",
                                 found=repr(raw[:80]), expected='a JSON object such as {"format": "float8_e4m3fn"}',
                                 hint=DAMAGED_HINT)
        if info["format"] not in SUPPORTED_COMFY_QUANT:
            raise ModelFileError(
                self.path, f"uses a quantization format this pack cannot compute ({layer})",
                found=info["format"][:40], expected=", ".join(SUPPORTED_COMFY_QUANT),
            )
        weight_dtype = self.inner.dtype(layer + ".weight")
        if weight_dtype not in FP8_DTYPES:
            raise ModelFileError(self.path, f"records {layer}.weight as {info['format']}, but it is stored as "
                                 f"{_dtype_name(weight_dtype)}", hint=DAMAGED_HINT)

    def keys(self):
        return self._keys

    def shape(self, key):
        return self.inner.shape(key)

    def dtype(self, key):
        return self.inner.dtype(key)

    def _scale(self, key: str) -> torch.Tensor | None:
        scale_key = self._scale_keys.get(key)
        scale = self.inner.tensor(scale_key) if scale_key else self._map_scales.get(key)
        if scale is None:
            return None
        scale = scale.to(torch.float32)
        return scale.reshape(()) if scale.numel() == 1 else scale.reshape(-1)

    def tensor(self, key):
        data = self.inner.tensor(key)
        if data.dtype not in FP8_DTYPES:
            return data
        scale = self._scale(key)
        if scale is None and data.ndim < 2:
            return data  # biases, norms: value = the fp8 number, cast by the layer at use
        return QuantizedTensor(data, FP8_SCALED, data.shape, scale=scale)


# --- official releases: weights file + separate per-layer scale map -------------------------------------
def scale_map_path(weights_path) -> Path | None:
    """The scale map beside an official FP8 weights file, if there is one."""
    path = Path(weights_path)
    for name in SCALE_MAP_SUFFIXES:
        for suffix in (".pt", ".safetensors", ".pth"):
            candidate = path.with_name(path.stem + name + suffix)
            if candidate.is_file() and candidate != path:
                return candidate
    return None


def weights_beside_map(map_path) -> Path:
    """The weights file a scale map belongs to (its name without _map / _scale)."""
    path = Path(map_path)
    for name in SCALE_MAP_SUFFIXES:
        if path.stem.endswith(name):
            stem = path.stem[: -len(name)]
            for suffix in (".safetensors", ".pt", ".pth"):
                if path.with_name(stem + suffix).is_file():
                    return path.with_name(stem + suffix)
            return path.with_name(stem + path.suffix)
    return path


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
    keys = scale_map.keys()
    if not keys or any(k.endswith((".weight", ".bias")) for k in keys):
        raise ModelFileError(path, "is not an FP8 scale map",
                             found=f"tensors such as {summarize_keys(keys, 3)}" if keys else "no tensors",
                             expected="one scale per layer name, e.g. double_blocks.0.img_attn_qkv -> 0.0021")
    for key in keys:
        shape, dtype = scale_map.shape(key), scale_map.dtype(key)
        if math.prod(shape) != 1 or not dtype.is_floating_point:
            raise ModelFileError(path, f"holds a scale of the wrong kind for layer {key}",
                                 found=f"{_dtype_name(dtype)} of shape {list(shape)}",
                                 expected="one floating-point value per layer", hint=DAMAGED_HINT)
    return {f"{k}.weight": scale_map.tensor(k).reshape(()).to(torch.float32) for k in keys}


def with_fp8_scales(checkpoint: Checkpoint) -> Checkpoint:
    """`checkpoint` with its FP8 weights as QuantizedTensor, scales from the file itself and/or from an
    official release's map beside it folded in (the file's own scale wins where both give one); a
    checkpoint without FP8 tensors as it is. Refuses an FP8 .pt without its map (its weights alone are off
    by each layer's scale) and a map opened in place of the weights."""
    path = checkpoint.path
    in_file = has_in_file_scales(checkpoint)
    if not in_file and looks_like_scale_map(checkpoint):
        raise ModelFileError(path, "is an FP8 scale map, not a model",
                             hint=f"Choose the weights file it belongs to ({weights_beside_map(path).name}); its "
                                  f"map is found automatically.")
    fp8 = [k for k in checkpoint.keys() if checkpoint.dtype(k) in FP8_DTYPES]
    map_path = scale_map_path(path) if fp8 else None
    if map_path is None:
        if in_file:
            return FP8View(checkpoint)
        if not fp8:
            return checkpoint
        if checkpoint.format == "torch":  # official .pt releases always come with a map
            raise ModelFileError(
                path, f"holds {len(fp8)} FP8 weights but no scales",
                expected=f"the scale map {path.stem}{SCALE_MAP_SUFFIX}.pt beside it",
                hint="Official FP8 releases ship the weights and a *_map.pt file; put both in the same folder.",
            )
        _refuse_scaled_weights_without_scales(checkpoint, fp8)
        return FP8View(checkpoint)  # plain FP8: the weights are the values
    scales = read_scale_map(map_path)
    unknown = [k for k in scales if k not in checkpoint]
    if unknown:
        raise ModelFileError(map_path, f"scales {len(unknown)} layers that {path.name} does not contain",
                             found=summarize_keys(unknown), hint="The map belongs to a different weights file.")
    return FP8View(checkpoint, scale_map=scales, map_path=map_path)


def _refuse_scaled_weights_without_scales(checkpoint: Checkpoint, fp8_keys: list[str]) -> None:
    """FP8 weights without any scale are either a plain FP8 file (value = the fp8 number) or an official
    release's weights whose scale file is missing (each layer then off by its scale, amax / 448: garbage,
    not an error, if loaded). One thing tells them apart: a scaled weight is stored so that its largest
    magnitude is the format's largest value (448 for e4m3fn), which a real network's weight cast to FP8
    does not reach. The smallest FP8 matrix is read to tell (the only tensor data this check reads)."""
    matrices = [k for k in fp8_keys if len(checkpoint.shape(k)) >= 2]
    if not matrices:
        return
    key = min(matrices, key=lambda k: math.prod(checkpoint.shape(k)))
    data = checkpoint.tensor(key)
    largest = torch.finfo(data.dtype).max
    if data.numel() and data.float().abs().max().item() == largest:
        path = Path(checkpoint.path)
        raise ModelFileError(
            path, "holds FP8 weights scaled to the format's full range, but no scales",
            found=f"{key} reaches {largest:g}, the largest {_dtype_name(data.dtype)} value, and no scale file "
                  f"beside it",
            expected=f"its scale file beside it ({path.stem}_scale.safetensors, or {path.stem}{SCALE_MAP_SUFFIX}.pt)",
            hint="Official FP8 releases ship the weights and a separate scale file; put both in the same folder "
                 "(without it every layer would be off by its scale).",
        )
