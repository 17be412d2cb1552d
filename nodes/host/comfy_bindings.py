"""How each family binds to ComfyUI's own classes: the native model class our model subclasses (so
ComfyUI's LoRA key formats, model patches and memory estimates apply), the model type that sets how a sigma
becomes the network's timestep, and the cond names that count in the memory estimate.

Pure data, importable without ComfyUI; nodes/host/comfyui_host.py reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

# ComfyUI's model types, by the sigma -> timestep multiplier they imply (comfy.model_sampling):
# FLUX passes sigma itself, FLOW passes sigma * 1000.
TIMESTEP_SCALE = {"FLUX": 1.0, "FLOW": 1000.0}


@dataclass(frozen=True)
class ComfyBinding:
    native_model: str  # comfy.model_base / comfy.supported_models class name
    model_type: str  # comfy.model_base.ModelType name
    memory_conds: tuple[str, ...] = ()
    # The MODEL's sampling shift follows the variant's official shift (else: the native class's default).
    family_shift: bool = False
    # Native classes that are this family's, for ComfyUI's own loaders' models (exact class names).
    native_models: tuple[str, ...] = ()
    # The variant of such a model, from ComfyUI's own network (None: the family's first variant).
    native_variant: Callable[[object], str] | None = None


def _hunyuan_native_variant(network) -> str:
    """ComfyUI's HunyuanVideo network records its options in `params`: the distilled model embeds guidance."""
    params = getattr(network, "params", None)
    return "distilled" if getattr(params, "guidance_embed", False) else "base"


BINDINGS: dict[str, ComfyBinding] = {
    "qwen_image": ComfyBinding("QwenImage", "FLUX", ("ref_latents",), native_models=("QwenImage",)),
    "hunyuan_image": ComfyBinding("HunyuanImage21", "FLOW", family_shift=True, native_models=("HunyuanImage21",),
                                  native_variant=_hunyuan_native_variant),
}


def binding(spec) -> ComfyBinding:
    try:
        found = BINDINGS[spec.name]
    except KeyError:
        raise ValueError(f"{spec.display_name} has no ComfyUI binding") from None
    if TIMESTEP_SCALE[found.model_type] != spec.timestep_scale:
        raise ValueError(f"{spec.display_name}: ComfyUI model type {found.model_type} passes sigma * "
                         f"{TIMESTEP_SCALE[found.model_type]:g}, the network takes sigma * {spec.timestep_scale:g}")
    return found
