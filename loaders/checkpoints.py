"""Open model files for the loaders: the file as stored (loaders/formats), with FP8 scales folded in
(loaders/quant/fp8.py).

`open_checkpoint(path)` returns a `Checkpoint`: tensor names, shapes and dtypes straight from the file's
header, and tensors created on demand as zero-copy views of a private memory map. Supported: safetensors
files, Hugging Face sharded folders or index files, GGUF files, and PyTorch .pt/.ckpt/.bin files read with
`torch.load(weights_only=True)`. A damaged file is refused with a ModelFileError naming it before any tensor
is touched; each format module says what it checks.
"""

from __future__ import annotations

from .formats.checkpoint import Checkpoint
from .formats.open import open_file
from .formats.safetensors import SAFETENSORS_DTYPES
from .quant.fp8 import with_fp8_scales

__all__ = ["Checkpoint", "SAFETENSORS_DTYPES", "open_checkpoint", "open_file"]


def open_checkpoint(path) -> Checkpoint:
    """A model file, a sharded index, or a folder holding one of those, FP8 scales folded in."""
    return with_fp8_scales(open_file(path))

