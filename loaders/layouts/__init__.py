"""Key layouts for diffusion models: {family: {layout name: Layout}}, and the step that applies one.

Detection (loaders/detection.py) names a file's family and layout; `diffusion_model_weights` turns the
file into the network's state dict through that layout, knowing every name and shape before any tensor
is read. A new family adds its module here and one line to DIFFUSION_MODEL_LAYOUTS.
"""

from __future__ import annotations

from ..errors import ModelFileError
from ..formats.checkpoint import Checkpoint
from . import hunyuan_image, qwen_image
from .base import Layout, LayoutStateDict, plan_shapes

DIFFUSION_MODEL_LAYOUTS: dict[str, dict[str, Layout]] = {
    "qwen_image": qwen_image.LAYOUTS,
    "hunyuan_image": hunyuan_image.LAYOUTS,
}


def diffusion_model_layout(family: str, layout: str, path=None) -> Layout:
    try:
        return DIFFUSION_MODEL_LAYOUTS[family][layout]
    except KeyError:
        known = ", ".join(DIFFUSION_MODEL_LAYOUTS.get(family, {})) or "none"
        raise ModelFileError(path, f"is a {family} diffusion model in a layout this pack cannot read ({layout})",
                             expected=f"one of these layouts: {known}") from None


def diffusion_model_weights(checkpoint: Checkpoint, identity, description: str | None = None) -> LayoutStateDict:
    """The diffusion model `identity` (from detection) in `checkpoint` as the network's state dict: names and
    shapes in `.shapes` (nothing read), tensors made from the file on access."""
    layout = diffusion_model_layout(identity.family, identity.layout, checkpoint.path)
    prefix = identity.prefix
    shapes = {k[len(prefix):]: tuple(checkpoint.shape(k)) for k in checkpoint.keys() if k.startswith(prefix)}
    plan = layout.plan(shapes, checkpoint.path)
    network_shapes = plan_shapes(plan, shapes, checkpoint.path, description or identity.description)
    return LayoutStateDict(plan, network_shapes, lambda key: checkpoint.tensor(prefix + key))


__all__ = ["DIFFUSION_MODEL_LAYOUTS", "Layout", "LayoutStateDict", "diffusion_model_layout",
           "diffusion_model_weights"]
