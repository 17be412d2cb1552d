"""Diffusion-model files -> a checked, memory-mapped state dict in the network's own names.

`read_diffusion_model(path)` does everything that can fail on a bad file before any host builds a model,
without reading tensor data: it opens the file, finds the diffusion model in it (family, layout, whatever
prefix it carries), applies the family's key layout (loaders/layouts: renames, split q/k/v to fuse, halves
to swap) to the names and shapes, reads the configuration from the resulting shapes, and checks every
tensor name and shape against the network the family builds on the meta device. The state dict it returns
makes each tensor from the file when asked (memory-mapped views; fused tensors are copied one at a time).
The host then builds the network (with its own `operations`) and assigns the tensors.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ..model_defs.families import FAMILIES, FamilySpec
from ..model_defs.ops import StandaloneOps
from .assign import check_shapes, module_shapes
from .checkpoints import Checkpoint, open_checkpoint
from .detection import DIFFUSION_MODEL, Identity, find_component
from .errors import ModelFileError
from .layouts import diffusion_model_weights
from .layouts.base import LayoutStateDict


@dataclass
class DiffusionModelFile:
    path: str
    identity: Identity
    family: FamilySpec
    config: object  # the family's network config, read from shapes
    state_dict: LayoutStateDict  # the network's names -> tensors made from the file on access
    stored_dtype: torch.dtype  # the dtype most weights are stored in
    parameter_count: int
    quantized: bool = False  # holds QuantizedTensor weights (scaled FP8, GGUF): needs quantized ops
    copied_bytes: int = 0  # what loading copies into memory (fused q/k/v of an official file), about

    def memory_note(self) -> str | None:
        """A note for files whose layout makes loading copy a large part of them into memory."""
        if self.copied_bytes < (1 << 30):
            return None
        return (f"{Path(self.path).name}: its layout ({self.identity.description}) is fused as it loads, copying "
                f"about {self.copied_bytes / 1e9:.1f} GB into memory (the rest stays memory-mapped). To load it "
                f"mapped, convert it once: python cli.py convert {Path(self.path).name} OUT.safetensors --type "
                f"bf16 (or fp8_scaled, or a GGUF type)")

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
    family = _family(checkpoint, identity)
    weights = diffusion_model_weights(checkpoint, identity)
    shapes = weights.shapes

    try:
        config = family.config_from_shapes(shapes)
    except (KeyError, ValueError, IndexError) as e:
        raise ModelFileError(checkpoint.path, f"looks like a {identity.description} but its configuration "
                             f"cannot be read", found=f"{type(e).__name__}: {e}") from None
    check_shapes(checkpoint.path, identity.description, shapes, expected_shapes(family, config))

    file_keys = [identity.prefix + k for k in weights.file_keys()]
    dtypes = Counter(checkpoint.dtype(k) for k in file_keys if len(checkpoint.shape(k)) >= 2)
    stored_dtype = dtypes.most_common(1)[0][0] if dtypes else torch.float32
    count = sum(torch.Size(s).numel() for s in shapes.values())
    quantized = weights.holds_quantized()
    bytes_per_value = 1 if quantized else torch.empty(0, dtype=stored_dtype).element_size()
    return DiffusionModelFile(str(checkpoint.path), identity, family, config, weights, stored_dtype, count,
                              quantized, weights.copied_elements() * bytes_per_value)


def _family(checkpoint: Checkpoint, identity: Identity) -> FamilySpec:
    """The family's spec; a clear error for a family detected but whose network is not part of the pack yet."""
    spec = FAMILIES.get(identity.family)
    if spec is None:
        raise ModelFileError(checkpoint.path, f"holds a {identity.description}, which this pack does not run yet",
                             found=identity.description,
                             expected=" or ".join(s.display_name + " diffusion model" for s in FAMILIES.values()))
    return spec
