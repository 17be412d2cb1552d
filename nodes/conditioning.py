"""Checks on CONDITIONING before it reaches a diffusion model."""

from __future__ import annotations


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
