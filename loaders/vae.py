"""VAE files -> a ready VAE module, in whatever layout and prefix the file uses.

`read_vae(path)` does everything that can fail on a bad file, without allocating a weight: it opens the
file, finds the VAE in it (a standalone file, a diffusers `vae/` folder, or the `vae.` /
`first_stage_model.` part of a full checkpoint, or the `vae.` entries of an official pickled `state_dict`),
renames other layouts into the network's own names, drops unit axes a family's files may keep,
reads the configuration from the tensor shapes and checks every name and shape against a build on the
meta device. `build_vae` then assigns the memory-mapped tensors; `load_vae` does both. A wrong or damaged
file raises a `ModelFileError` from `read_vae`, so a workflow check can refuse it before anything runs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..model_defs.hunyuan_image.refiner_vae import HunyuanImageRefinerVAE, refiner_vae_config_from_shapes
from ..model_defs.hunyuan_image.vae import HunyuanImageVAE, vae_config_from_shapes as hunyuan_image_vae_config
from ..model_defs.ops import StandaloneOps
from ..model_defs.qwen_image.vae import QwenImageVAE, vae_config_from_shapes as qwen_vae_config
from .assign import assign_state_dict, check_shapes, module_shapes
from .checkpoints import Checkpoint, open_checkpoint
from .detection import VAE, Identity, find_component
from .errors import ModelFileError, summarize_keys
from .keymaps import hunyuan_image_refiner_vae, hunyuan_image_vae, qwen_image_vae


@dataclass(frozen=True)
class VAEFamily:
    network_class: type  # network_class(config, operations, dtype=, device=)
    config_from_shapes: Callable[[dict], object]  # shapes in the network's own names
    # layout -> function(file names) -> {file name: network name}; a layout not listed is already ours
    key_maps: dict[str, Callable]
    # stored shape -> the network's shape, for files that keep extra unit axes (None: as stored). The
    # tensor is reshaped as a view of the file's memory, so this costs nothing.
    network_shape: Callable[[tuple], tuple] | None = None


def squeeze_unit_time_axis(shape: tuple) -> tuple:
    """[O, I, 1, kh, kw] -> [O, I, kh, kw]: the official HunyuanImage VAE checkpoint may store its 2-D conv
    weights with a unit time axis (the official loader and diffusers' conversion script squeeze it)."""
    return shape[:2] + shape[3:] if len(shape) == 5 and shape[2] == 1 else shape


VAE_FAMILIES: dict[str, VAEFamily] = {
    "qwen_image": VAEFamily(QwenImageVAE, qwen_vae_config, {"diffusers": qwen_image_vae.diffusers_to_comfyui}),
    "hunyuan_image": VAEFamily(HunyuanImageVAE, hunyuan_image_vae_config,
                               {"diffusers": hunyuan_image_vae.diffusers_to_comfyui},
                               network_shape=squeeze_unit_time_axis),
    # The refiner's 3-D VAE keeps its 5-D conv weights as stored (the network computes with them as they are).
    "hunyuan_image_refiner": VAEFamily(HunyuanImageRefinerVAE, refiner_vae_config_from_shapes,
                                       {"diffusers": hunyuan_image_refiner_vae.diffusers_to_comfyui,
                                        "comfyui": hunyuan_image_refiner_vae.comfyui_to_network}),
}


@dataclass
class LoadedVAE:
    module: torch.nn.Module  # encode(images) / decode(latent), downscale, latent_channels
    family: str
    layout: str
    path: str
    config: object
    stored_dtype: torch.dtype
    description: str


@dataclass
class VAEFile:
    """A VAE file that passed every check: where its tensors are and what network they fit."""

    checkpoint: Checkpoint
    identity: Identity
    family: VAEFamily
    file_names: dict[str, str]  # {key in the file: name in the network}
    config: object
    shapes: dict[str, tuple]  # {name in the network: its shape there}

    @property
    def description(self) -> str:
        return self.identity.description


def read_vae(path) -> VAEFile:
    """Open and check the VAE in `path` (a file, a diffusers `vae/` folder, or a diffusers model folder)."""
    checkpoint = open_checkpoint(_vae_location(Path(path)))
    identity = find_component(checkpoint, VAE, families=tuple(VAE_FAMILIES))
    family = VAE_FAMILIES[identity.family]
    file_names = _network_names(checkpoint, identity, family)
    to_network = family.network_shape or tuple
    shapes = {name: to_network(tuple(checkpoint.shape(key))) for key, name in file_names.items()}

    try:
        config = family.config_from_shapes(shapes)
    except (KeyError, ValueError, IndexError) as e:
        raise ModelFileError(checkpoint.path, f"looks like a {identity.description} but its configuration "
                             f"cannot be read from its tensors", found=f"{type(e).__name__}: {e}") from None
    expected = module_shapes(family.network_class(config, StandaloneOps, device="meta"))
    check_shapes(checkpoint.path, identity.description, shapes, expected)
    return VAEFile(checkpoint, identity, family, file_names, config, shapes)


def build_vae(vae_file: VAEFile, dtype: torch.dtype | None = None, device="cpu", operations=None) -> LoadedVAE:
    """The VAE module with the checked file's tensors assigned.

    dtype: weight dtype (None keeps the stored one; computation always runs in the input's dtype).
    operations: the layer namespace (ComfyUI's ops inside ComfyUI; ours by default).
    """
    checkpoint, identity = vae_file.checkpoint, vae_file.identity
    module = vae_file.family.network_class(vae_file.config, operations or StandaloneOps, device="meta")
    state_dict = {name: _in_shape(checkpoint.tensor(key), vae_file.shapes[name])
                  for key, name in vae_file.file_names.items()}
    assign_state_dict(module, state_dict, checkpoint.path, identity.description, dtype=dtype, device=device)
    module.eval().requires_grad_(False)
    return LoadedVAE(module, identity.family, identity.layout, str(checkpoint.path), vae_file.config,
                     _stored_dtype(checkpoint, vae_file.file_names), identity.description)


def load_vae(path, dtype: torch.dtype | None = None, device="cpu", operations=None) -> LoadedVAE:
    """read_vae + build_vae: the ready VAE in `path`."""
    return build_vae(read_vae(path), dtype=dtype, device=device, operations=operations)


OFFICIAL_PICKLES = ("pytorch_model.ckpt", "pytorch_model.pt")  # the official HunyuanImage VAE folders' files


def _vae_location(path: Path) -> Path:
    """Folders: a diffusers model folder means its vae/ subfolder; inside a diffusers vae/ folder take the
    main weights file (fp16 variants may sit beside it); an official folder (HunyuanImage's `vae_2_1/`)
    holds its weights as a pickled `pytorch_model.ckpt`."""
    if path.is_dir():
        if (path / "vae").is_dir():
            path = path / "vae"
        for main in ("diffusion_pytorch_model.safetensors",) + OFFICIAL_PICKLES:
            if (path / main).is_file():
                return path / main
    return path


def _network_names(checkpoint: Checkpoint, identity: Identity, family: VAEFamily) -> dict[str, str]:
    """{key in the file: name in the network} for the VAE's tensors (its prefix stripped, layout renamed)."""
    prefix = identity.prefix
    stripped = {key: key[len(prefix):] for key in checkpoint.keys() if key.startswith(prefix)}
    key_map = family.key_maps.get(identity.layout)
    if key_map is not None:
        renamed = key_map(stripped.values())
        stripped = {key: renamed[name] for key, name in stripped.items()}
    duplicates = [name for name, n in Counter(stripped.values()).items() if n > 1]
    if duplicates:
        raise ModelFileError(checkpoint.path, f"holds the same {identity.description} tensor under two names",
                             found=summarize_keys(duplicates))
    return stripped


def _in_shape(tensor: torch.Tensor, shape: tuple) -> torch.Tensor:
    return tensor if tuple(tensor.shape) == tuple(shape) else tensor.view(shape)


def _stored_dtype(checkpoint: Checkpoint, file_names: dict[str, str]) -> torch.dtype:
    counts = Counter(checkpoint.dtype(k) for k in file_names if len(checkpoint.shape(k)) >= 2)
    return counts.most_common(1)[0][0] if counts else torch.float32
