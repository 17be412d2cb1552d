"""What a model family is, as small records: network, sampling, text, conditioning, sizes, quantisation.

Nodes and hosts never branch on family names; they read a FamilySpec. A family defines its SPEC in its own
package (model_defs/<family>/spec.py) and families.py collects them. Nothing here names a host: how ComfyUI
binds a family to its native classes lives in nodes/host/comfy_bindings.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol

import torch

from .latents import LatentFormat


class Schedule(Protocol):
    def sigmas(self, steps: int, image_tokens: int) -> torch.Tensor:
        """steps + 1 descending sigmas ending in 0, for an image of `image_tokens` tokens."""


# A guidance rule: rule(scale, positive_extras) -> a fresh guidance object for one sampling run (rules with
# state across steps, like a momentum buffer, start clean), with the interface of model_defs/guidance:
#     needs_uncond(step_index, num_steps) -> bool
#     combine(cond_velocity, uncond_velocity, step_index, num_steps, sigma) -> velocity
# positive_extras: the positive conditioning's extras (a rule may depend on the prompt, e.g. glyph text).
GuidanceRule = Callable[[float, Mapping], object]


@dataclass(frozen=True)
class SamplingSpec:
    """The official sampling of one model variant."""

    steps: int
    guidance_scale: float
    schedule: Schedule  # the official pipeline's sigmas
    shift: float  # the constant shift other schedulers use (ComfyUI: the MODEL's model_sampling shift)
    guidance: GuidanceRule | None = None  # two-pass guidance; None = plain CFG
    guidance_name: str = "CFG"  # for tooltips and logs
    embedded_guidance: bool = False  # guidance-distilled: the scale goes into the network, one pass per step
    meanflow: bool = False  # the network also takes the end time of each step (timestep_r)
    # A stage model that refines a finished image (its own node) and cannot generate one from noise alone.
    refines_only: bool = False


@dataclass(frozen=True)
class EncoderSlot:
    """One text encoder a family's prompts go through."""

    kind: str  # what loaders.text_encoder detects: "qwen25_vl", "byt5", ...
    label: str  # for messages: "Qwen2.5-VL-7B"
    tokenizer: str  # the name hosts know its tokenizer by ("qwen25": ComfyUI's qwen25_tokenizer/)
    required: bool = True


@dataclass(frozen=True)
class TextSpec:
    encoders: tuple[EncoderSlot, ...]
    # encode(encoders {kind: LoadedTextEncoder}, prompt, device, dtype) -> (context [1, L, D], extras dict)
    encode: Callable
    limit_note: str  # e.g. "1024 tokens", for the node's description


# ComfyUI's conditioning keys for reference images (its ReferenceLatent node and Edit nodes write them):
# a list of VAE-space latents, and optionally the name of how the network places them.
REFERENCE_LATENTS = "reference_latents"
REFERENCE_METHOD = "reference_latents_method"


@dataclass(frozen=True)
class ConditioningAdapter:
    """How a conditioning entry's extras become network inputs, the same under both hosts.

    inputs: {name in the conditioning extras: keyword of the network's forward}. Masks whose every entry
    is true are dropped (the network then runs unmasked attention).
    reference_latents / reference_method: the network's keywords for the reference images (REFERENCE_LATENTS,
    normalised into the model's latent space first) and their placement (REFERENCE_METHOD); None for a
    network that takes no reference images."""

    inputs: Mapping[str, str] = field(default_factory=lambda: {"attention_mask": "attention_mask"})
    reference_latents: str | None = None
    reference_method: str | None = None

    def reference_inputs(self, extras: Mapping, latent_format: LatentFormat) -> dict:
        """The reference images of a conditioning entry as network inputs (ComfyUI's own model classes do
        the same in their extra_conds: process_latent_in on each latent)."""
        latents = extras.get(REFERENCE_LATENTS)
        if not latents:
            return {}
        if self.reference_latents is None:
            raise ValueError("this model takes no reference images, but the conditioning holds "
                             f"{len(latents)}: use a model made for editing, or condition with a text encode node")
        out = {self.reference_latents: [latent_format.to_model(latent.float()) for latent in latents]}
        method = extras.get(REFERENCE_METHOD)
        if method is not None and self.reference_method is not None:
            out[self.reference_method] = method
        return out

    def network_inputs(self, extras: Mapping) -> dict:
        out = {}
        for name, keyword in self.inputs.items():
            value = extras.get(name)
            if value is None:
                continue
            if name.endswith("mask") and isinstance(value, torch.Tensor) and bool(value.all()):
                continue
            out[keyword] = value
        return out


@dataclass(frozen=True)
class ReferenceModel:
    """One model that takes reference images (a choice in MMDiTReferenceImages)."""

    label: str  # shown in the node: "Qwen-Image-Edit-2509"
    variant: str  # what the family's reference encode function calls it ("edit", "edit_plus")
    max_images: int
    method: str | None = None  # the placement it forces (REFERENCE_METHOD); None: the model file's own
    output_image: int = 0  # the image whose size the output takes in the official pipeline (0 first, -1 last)


@dataclass(frozen=True)
class ReferenceSpec:
    """How a family conditions on reference images: its models, the official image size and the prompt
    encoding that reads the images too.

    encode(encoders {kind: LoadedTextEncoder}, vision (a vision tower or None), prompts [list of str], images
    [list of [H, W, 3] in 0..1], model: ReferenceModel, device, dtype) -> [(context [1, L, D], extras)] per
    prompt (the positive and negative prompts together, so the images are read once)
    official_size(width, height) -> (width, height) of the VAE path in the official pipeline.
    vision_encoder: the kind of text encoder whose file holds the vision tower the prompt encoding needs
    (None: the images reach the network through the VAE only)."""

    models: tuple[ReferenceModel, ...]
    encode: Callable
    official_size: Callable[[int, int], tuple[int, int]]
    official_note: str  # the official rescale in words, for tooltips
    vision_encoder: str | None = None

    def model(self, label: str) -> ReferenceModel:
        for model in self.models:
            if model.label == label:
                return model
        raise KeyError(label)


@dataclass(frozen=True)
class QuantPolicy:
    """Quantized files written by the pack's converter: name fragments of tensors kept at full precision,
    and of tensors kept at 8 bits at least (1-D tensors always stay precise)."""

    precise_tensors: tuple[str, ...] = ()
    eight_bit_tensors: tuple[str, ...] = ()


@dataclass(frozen=True)
class FamilySpec:
    name: str
    display_name: str
    latent_format: LatentFormat
    network_class: type  # network_class(config, operations, dtype=, device=, attention_backend=)
    config_from_shapes: Callable
    variant_of: Callable[[object], str]  # network config -> variant name ("base", "distilled", ...)
    sampling: Mapping[str, SamplingSpec]  # per variant
    text: TextSpec
    patch_size: int
    size_multiple: int  # pixel sizes must be multiples of this
    timestep_scale: float  # the network's timestep for a sigma: sigma * timestep_scale
    conditioning: ConditioningAdapter = ConditioningAdapter()
    quant: QuantPolicy = QuantPolicy()
    aspect_presets: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    size_note: Callable[[int, int], str | None] | None = None  # (width, height) -> a warning, or None
    references: ReferenceSpec | None = None  # None: text-to-image only

    def image_tokens(self, latent_shape) -> int:
        """Image tokens the network sees for a latent of this shape (drives size-dependent shifts)."""
        height, width = latent_shape[-2:]
        return -(-height // self.patch_size) * -(-width // self.patch_size)

    def sampling_for(self, config) -> SamplingSpec:
        """The official sampling of the variant this network config is."""
        variant = self.variant_of(config) if config is not None else next(iter(self.sampling))
        try:
            return self.sampling[variant]
        except KeyError:
            raise ValueError(f"{self.display_name} has no sampling defaults for its {variant!r} variant") from None

    @property
    def default_sampling(self) -> SamplingSpec:
        return next(iter(self.sampling.values()))
