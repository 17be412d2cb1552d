"""Diffusion-model files -> a checked, memory-mapped state dict in the network's own names.

`read_diffusion_model(path)` does everything that can fail on a bad file before any host builds a model:
it opens the file, finds the diffusion model in it (whatever prefix it carries), reads the configuration
from the tensor shapes, and checks every tensor name and shape against the network the family builds.
The host then builds the network (with its own `operations`) and assigns the tensors.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ..model_defs.families import FamilySpec, family_spec
from ..model_defs.ops import StandaloneOps
from .checkpoints import Checkpoint, open_checkpoint
from .detection import DIFFUSION_MODEL, Identity, find_component
from .assign import check_shapes, module_shapes
from .errors import ModelFileError
from .quant.tensor import holds_quantized


@dataclass
class DiffusionModelFile:
    path: str
    identity: Identity
    family: FamilySpec
    config: object  # the family's network config, read from shapes
    state_dict: dict[str, torch.Tensor]  # memory-mapped, keys in the network's names
    stored_dtype: torch.dtype  # the dtype most weights are stored in
    parameter_count: int
    quantized: bool = False  # holds QuantizedTensor weights (scaled FP8, GGUF): needs quantized ops

    @property
    def description(self) -> str:
        storage = "quantized" if self.quantized else str(self.stored_dtype).replace("torch.", "")
        return (f"{self.identity.description} ({self.family.display_name}, {self.parameter_count / 1e9:.2f}B "
                f"params, {storage})")


def expected_shapes(family: FamilySpec, config) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the network's state dict, from a build on the meta device (no memory)."""
    return module_shapes(family.network_class(config, StandaloneOps, dtype=torch.bfloat16, device="meta"))


def read_diffusion_model(path, checkpoint: Checkpoint | None = None) -> DiffusionModelFile:
    path = Path(path)
    if path.is_dir() and (path / "transformer").is_dir():
        path = path / "transformer"  # a diffusers repo root: the diffusion model is in transformer/
    checkpoint = checkpoint or open_checkpoint(path)
    identity = find_component(checkpoint, DIFFUSION_MODEL)
    family = family_spec(identity.family)
    prefix = identity.prefix
    keys = [k for k in checkpoint.keys() if k.startswith(prefix)]
    names = {k: k[len(prefix):] for k in keys}
    shapes = {names[k]: checkpoint.shape(k) for k in keys}

    try:
        config = family.config_from_shapes(shapes)
    except (KeyError, ValueError, IndexError) as e:
        raise ModelFileError(checkpoint.path, f"looks like a {identity.description} but its configuration "
                             f"cannot be read", found=f"{type(e).__name__}: {e}") from None
    check_shapes(checkpoint.path, identity.description, shapes, expected_shapes(family, config))

    state_dict = {names[k]: checkpoint.tensor(k) for k in keys}
    dtypes = Counter(checkpoint.dtype(k) for k in keys if len(checkpoint.shape(k)) >= 2)
    stored_dtype = dtypes.most_common(1)[0][0] if dtypes else torch.float32
    count = sum(torch.Size(s).numel() for s in shapes.values())
    return DiffusionModelFile(str(checkpoint.path), identity, family, config, state_dict, stored_dtype, count,
                              holds_quantized(state_dict))
