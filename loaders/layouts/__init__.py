"""Key layouts for diffusion models: {family: {layout name: Layout}}, and the step that applies one.

Detection (loaders/detection.py) names a file's family and layout; `diffusion_model_weights` turns the
file into the network's state dict through that layout, knowing every name and shape before any tensor
is read. A new family adds its module here and one line to DIFFUSION_MODEL_LAYOUTS.

A diffusers folder states some variants in its config.json rather than with a tensor (Qwen-Image-Edit-2511:
`"zero_cond_t": true`, where ComfyUI's file holds an empty `__index_timestep_zero__` tensor). A layout names
such flags in `config_markers`; the marker then joins the state dict as an empty tensor, so the variant is
read from the shapes whatever the file's form, and a conversion writes the marker into its output.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelFileError, brief
from ..formats.checkpoint import Checkpoint
from ..formats.strict_json import JSONProblem, parse_json_object
from . import hunyuan_image, qwen_image
from .base import Empty, Layout, LayoutStateDict, Plan, plan_shapes

CONFIG_FILE = "config.json"  # a diffusers model's configuration, in the folder of its weights
MAX_CONFIG_BYTES = 1 << 20  # a diffusers config.json is about 1 kB

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
    if layout.config_markers:
        add_config_markers(plan, layout, checkpoint.path)
    network_shapes = plan_shapes(plan, shapes, checkpoint.path, description or identity.description)
    return LayoutStateDict(plan, network_shapes, lambda key: checkpoint.tensor(prefix + key))


def add_config_markers(plan: Plan, layout: Layout, path) -> None:
    """Add to `plan` the empty marker tensors (`Empty`) that the diffusers config.json beside the weights at
    `path` states as flags (`layout.config_markers`: `"zero_cond_t": true` -> `__index_timestep_zero__`), so
    the configuration read from the shapes says what the config says. A marker the file holds as a tensor
    stays as it is; a flag that is false or absent adds nothing; one that is neither true nor false is
    refused rather than guessed."""
    config_path, config = weights_config(path)
    for key, marker in layout.config_markers.items():
        value = config.get(key, False)
        if value is not True and value is not False and value is not None:
            raise ModelFileError(config_path, f"gives {key} as {brief(value)}, which is neither true nor false",
                                 hint="The file is damaged or edited by hand; diffusers writes true or false.")
        if value is True and marker not in plan:
            plan[marker] = Empty()


def weights_config(path) -> tuple[Path | None, dict]:
    """(path, contents) of the diffusers config.json in the folder of the weights at `path` (a weights file,
    a sharded index, or the folder itself); (None, {}) when there is none. A config.json that is there but
    cannot be read is refused: a flag it holds would otherwise be lost silently."""
    path = Path(path)
    config_path = (path if path.is_dir() else path.parent) / CONFIG_FILE
    if not config_path.is_file():
        return None, {}
    try:
        size = os.path.getsize(config_path)
        if size > MAX_CONFIG_BYTES:
            raise JSONProblem("it is far too large for a model configuration", found=f"{size} bytes")
        return config_path, parse_json_object(config_path.read_bytes())
    except OSError as e:
        problem, found = "it cannot be read", f"{type(e).__name__}: {e}"
    except JSONProblem as e:
        problem, found = e.problem, e.found
    raise ModelFileError(config_path, f"is not a readable model configuration: {problem}", found=found,
                         hint="It sits beside the model's weights, and the loader reads the model variant from "
                              "it; re-download it (or remove it if it belongs to no model in this folder).")


__all__ = ["DIFFUSION_MODEL_LAYOUTS", "Layout", "LayoutStateDict", "add_config_markers",
           "diffusion_model_layout", "diffusion_model_weights", "weights_config"]
