"""Checks on CONDITIONING before it reaches a diffusion model."""

from __future__ import annotations

from pathlib import Path

from ..model_defs.spec import REFERENCE_LATENTS
from .common import log

# MMDiTTextEncode marks each entry with the family it encoded for: families can share an encoder file
# (Qwen-Image and HunyuanImage 2.1 both use Qwen2.5-VL-7B) but not its template and hidden layer.
FAMILY_KEY = "mmdit_family"


def check_text_width(host, model, spec, **conditionings) -> None:
    """Refuse prompts encoded by a text encoder whose feature width the model does not take (a text
    encoder of another family or size, or a tiny demo stand-in beside a real model): the network would
    otherwise fail deep inside with a matrix-shape error."""
    expected = getattr(host.network_config(model), "context_dim", None)
    if expected is None:
        return  # a network that does not say (ComfyUI's own loaders' models)
    for name, conditioning in conditionings.items():
        for context, _ in conditioning:
            width = context.shape[-1]
            if width != expected:
                raise ValueError(
                    f"the {name} conditioning is {width} wide, but this {spec.display_name} diffusion model "
                    f"takes {expected}-wide text features: the text encoder and the diffusion model are from "
                    f"different model families or sizes. Load the text encoder that belongs to this model."
                )


def check_family(spec, families: dict, **conditionings) -> None:
    """Refuse prompts encoded for another family (its template and layers), even when the widths agree."""
    for name, conditioning in conditionings.items():
        for _, extras in conditioning:
            encoded_for = extras.get(FAMILY_KEY)
            if encoded_for is not None and encoded_for != spec.name:
                other = families.get(encoded_for)
                other_name = other.display_name if other is not None else encoded_for
                raise ValueError(
                    f"the {name} conditioning was encoded for {other_name} (its prompt template and text "
                    f"encoders), but the model is {spec.display_name}: set the text encoder loader's family to "
                    f"{spec.display_name} (and load the encoders it lists).")


def check_references(spec, model_path: str | None, **conditionings) -> None:
    """Reference images reach only a family that takes them. Qwen-Image and its Edit models have the same
    tensors, so a text-to-image file cannot be told from an edit one by its weights; its name is the only
    hint, and a name without "edit" gets a warning (it samples, but will not follow the images)."""
    counts = {name: max((len(extras.get(REFERENCE_LATENTS) or ()) for _, extras in conditioning), default=0)
              for name, conditioning in conditionings.items()}
    with_images = {name: count for name, count in counts.items() if count}
    if not with_images:
        return
    if spec.references is None:
        name, count = next(iter(with_images.items()))
        raise ValueError(
            f"the {name} conditioning holds {count} reference image{'s' if count > 1 else ''}, but "
            f"{spec.display_name} models take none (they are text-to-image): encode the prompt with MMDiT Text "
            f"Encode, or load an edit model and its family's text encoder")
    file_name = Path(model_path).name if model_path else ""
    if file_name and "edit" not in file_name.lower():
        log.warning("%s: the conditioning has reference images, but the file name does not say it is an edit model. "
                    "%s text-to-image and edit models have the same tensors, so this cannot be checked; a "
                    "text-to-image model will not follow the reference images.", file_name, spec.display_name)
