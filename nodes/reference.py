"""MMDiTReferenceImages: an edit instruction and its reference images -> native CONDITIONING (positive and
negative) and an empty LATENT at the size the output should have.

Each image takes two paths, as in the official edit pipelines: the family's text encoder reads it with the
prompt (Qwen-Image-Edit: Qwen2.5-VL's vision tower, with the Edit template), and the family VAE encodes it
into reference latents, which the conditioning carries under ComfyUI's own `reference_latents` key (so the
core KSampler, ComfyUI's Edit nodes and ReferenceLatent interoperate with this node's output). The
negative prompt is read with the same images, as the official pipelines read it.
"""

from __future__ import annotations

import torch

from ..loaders.finite import is_finite
from ..model_defs.families import FAMILIES
from ..model_defs.reference_images import POLICIES, check_size, large_size_warning, prepare, rgb_frames
from ..model_defs.spec import REFERENCE_LATENTS, REFERENCE_METHOD
from .common import CATEGORY, log
from .conditioning import FAMILY_KEY
from .host import get_host
from .text import TextEncoderHandle, _explain_nonfinite, _to_host
from .vae import MMDiTVAEEncode, VAEHandle


def _reference_models() -> list[tuple[object, object]]:
    """(family spec, ReferenceModel) for every model that takes reference images, in registry order."""
    return [(spec, model) for spec in FAMILIES.values() if spec.references for model in spec.references.models]


def _max_images() -> int:
    return max(model.max_images for _, model in _reference_models())


def _image_inputs() -> list[str]:
    """The optional image sockets after `image`: image_2 ... up to the most any model takes."""
    return [f"image_{i}" for i in range(2, _max_images() + 1)]


def _models_tooltip() -> str:
    return "; ".join(f"{model.label}: up to {model.max_images} image{'s' if model.max_images > 1 else ''}"
                     for _, model in _reference_models())


class MMDiTReferenceImages:
    DESCRIPTION = ("Conditions an edit model on reference images: the instruction is read together with the images "
                   "by the family's text encoder (Qwen-Image-Edit: Qwen2.5-VL's vision tower, loaded from the same "
                   "text-encoder file on first use), and each image is VAE-encoded into reference latents. Gives the "
                   "positive and negative conditioning and an empty latent at the output size. A batch in one "
                   "socket counts as that many images.")
    CATEGORY = f"{CATEGORY}/conditioning"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    OUTPUT_TOOLTIPS = ("The instruction with the reference images.",
                       "The negative prompt with the same reference images (as the official pipelines do).",
                       "An empty latent at the output size: the size of the image the official pipeline takes it "
                       "from (Qwen-Image-Edit: the first image; 2509/2511: the last), under the resolution policy.")
    FUNCTION = "condition"

    @classmethod
    def INPUT_TYPES(cls):
        labels = [model.label for _, model in _reference_models()]
        optional = {name: ("IMAGE", {"tooltip": "Another reference image (\"Picture N\" in 2509/2511 prompts)."})
                    for name in _image_inputs()}
        return {"required": {
            "text_encoder": ("MMDIT_TEXT_ENCODER",),
            "vae": ("MMDIT_VAE",),
            "image": ("IMAGE", {"tooltip": "The image to edit (Picture 1)."}),
            "prompt": ("STRING", {"multiline": True, "dynamicPrompts": True,
                                  "tooltip": "The edit instruction. With several images, refer to them as "
                                             "Picture 1, Picture 2, ..."}),
            "negative_prompt": ("STRING", {"multiline": True, "default": " ",
                                           "tooltip": "Read with the same images; the official default is a "
                                                      "single space."}),
            "model": (labels, {"default": labels[0],
                               "tooltip": "Which edit model the conditioning is for (prompt template, image count, "
                                          "reference placement). 'from the model file': Edit-2511's timestep-zero "
                                          "references when the diffusion model's file says it is 2511; pick "
                                          "2511 or 2509 explicitly for a file that does not say (some GGUFs). "
                                          + _models_tooltip() + "."}),
            "resolution": (list(POLICIES), {
                "default": "official",
                "tooltip": "official: each image rescaled as the official pipeline does (Qwen-Image-Edit: about 1 "
                           "megapixel), the same image as the official pipeline for the same seed. native: the "
                           "image's own pixels, centre-cropped to whole latent cells (16 pixels): no rescale, so "
                           "the output lines up with the input pixel for pixel (no zoom, no shift)."}),
        }, "optional": optional}

    def condition(self, text_encoder: TextEncoderHandle, vae: VAEHandle, image, prompt: str, negative_prompt: str,
                  model: str, resolution: str, **more_images):
        spec = text_encoder.family
        choice = _reference_model(spec, model)
        references = spec.references
        if vae.loaded.family != spec.name:
            raise ValueError(f"the VAE is {vae.loaded.description}, but the text encoder is loaded for "
                             f"{spec.display_name}: load the {spec.display_name} VAE")
        if resolution not in POLICIES:
            raise ValueError(f"unknown resolution {resolution!r}; expected one of {', '.join(POLICIES)}")
        frames = _frames(image, more_images)
        if len(frames) > choice.max_images:
            raise ValueError(f"{choice.label} takes at most {choice.max_images} reference image"
                             f"{'s' if choice.max_images > 1 else ''}, got {len(frames)} "
                             f"({', '.join(label for _, _, label in frames)})")
        for frame, _, label in frames:  # before seconds of resampling and encoding the other images
            _about(label, check_size, frame.shape[1], frame.shape[0], spec.size_multiple)
        pixels, vision_images = [], []
        for frame, note, label in frames:
            prepared, size_note = _about(label, prepare, frame, resolution, references.official_size,
                                         spec.size_multiple)
            if note:  # the conversion note names the image already
                log.info("%s", note)
            if size_note:
                log.info("%s: %s", label, size_note)
            if resolution == "native":
                warning = large_size_warning(prepared.shape[1], prepared.shape[0], references.official_size)
                if warning:
                    log.warning("%s: %s", label, warning)
            pixels.append(prepared)
            # The vision path resizes from what it is given as the pipeline does: the original image under the
            # official policy, the cropped one under the native policy (so text and latents see the same pixels).
            vision_images.append(frame if resolution == "official" else prepared)

        encoder = MMDiTVAEEncode()
        latents = [encoder.encode(p[None], vae)[0]["samples"] for p in pixels]

        host = get_host()
        device, dtype = text_encoder.load()
        vision = text_encoder.vision_tower(references.vision_encoder) if references.vision_encoder else None
        extras = {FAMILY_KEY: spec.name, REFERENCE_LATENTS: latents}
        if choice.method is not None:
            extras[REFERENCE_METHOD] = choice.method
        out = host.intermediate_device()
        conditionings = []
        with torch.no_grad():
            encoded = references.encode(text_encoder.encoders, vision, [prompt, negative_prompt], vision_images,
                                        choice, device, dtype)
        for context, text_extras in encoded:
            if not is_finite(context):
                _explain_nonfinite(context, text_encoder.encoders.values(), f"(context, {dtype})")
            entry_extras = {name: _to_host(value, out) for name, value in text_extras.items()}
            conditionings.append([[_to_host(context, out), {**entry_extras, **extras}]])

        target = latents[choice.output_image]
        empty = torch.zeros((1, target.shape[1]) + tuple(target.shape[-2:]), device=out)
        height, width = (side * spec.latent_format.downscale for side in target.shape[-2:])
        log.info("%s: %d reference image%s (%s), output %dx%d", choice.label, len(frames),
                 "s" if len(frames) > 1 else "", resolution, width, height)
        return conditionings[0], conditionings[1], {"samples": empty}


def _reference_model(spec, label: str):
    """The ReferenceModel `label` names, checked against the family the text encoder is loaded for."""
    if spec.references is None:
        takers = sorted({owner.display_name for owner, _ in _reference_models()})
        raise ValueError(f"{spec.display_name} takes no reference images (its models are text-to-image); "
                         f"reference images work with {', '.join(takers)}: load that family's text encoder")
    try:
        return spec.references.model(label)
    except KeyError:
        owner = next((o for o, m in _reference_models() if m.label == label), None)
        where = f"a {owner.display_name} model" if owner else "not a model this pack knows"
        raise ValueError(f"model {label!r} is {where}, but the text encoder is loaded for {spec.display_name}; "
                         f"its edit models are: {', '.join(m.label for m in spec.references.models)}") from None


def _about(label: str, function, *args):
    """function(*args), a ValueError from it prefixed with the image it is about (the size checks know only
    the image's size)."""
    try:
        return function(*args)
    except ValueError as error:
        raise ValueError(f"{label}: {error}") from None


def _frames(image, more_images: dict) -> list[tuple[torch.Tensor, str | None, str]]:
    """(frame [H, W, 3], conversion note, label) for every reference image in socket order, a batch
    counting as that many images."""
    unknown = sorted(set(more_images) - set(_image_inputs()))
    if unknown:
        raise ValueError(f"unknown inputs {', '.join(unknown)}; reference images go to image, "
                         f"{', '.join(_image_inputs())}")
    sockets = [("image", image)] + [(name, more_images.get(name)) for name in _image_inputs()]
    frames = []
    for name, value in sockets:
        if value is None:
            continue
        converted = rgb_frames(value, name)
        for index, (frame, note) in enumerate(converted):
            label = name if len(converted) == 1 else f"{name}[{index}]"
            frames.append((frame, note, label))
    return frames
