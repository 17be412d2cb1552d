"""Open a model file as it is stored: pick the reader by folder layout, suffix or magic bytes.

Checks only that the path exists, can be read and is of a kind some reader takes; each reader checks its
own format.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelFileError
from .checkpoint import Checkpoint
from .gguf import MAGIC as GGUF_MAGIC, GGUFFile
from .safetensors import SafetensorsFile
from .sharded import ShardedCheckpoint
from .torch_pickle import TORCH_PICKLE_SUFFIXES, TorchPickleFile

# What a models folder lists as model files (a sharded index names its shards, which are .safetensors).
MODEL_FILE_SUFFIXES = (".safetensors", ".sft", ".gguf") + TORCH_PICKLE_SUFFIXES


def open_file(path) -> Checkpoint:
    """A file, a sharded index, or a folder holding one of those; tensors exactly as stored."""
    path = Path(path)
    try:
        return _open(path)
    except OSError as e:  # unreadable (permissions, a folder where a file should be, an I/O error)
        raise ModelFileError(path, "could not be read", found=f"{type(e).__name__}: {e}") from None


def _open(path: Path) -> Checkpoint:
    if not path.exists():
        raise ModelFileError(path, "does not exist")
    if path.is_dir():
        indexes = sorted(path.glob("*.safetensors.index.json"))
        files = sorted(path.glob("*.safetensors"))
        if indexes:
            return ShardedCheckpoint(indexes[0])
        if len(files) == 1:
            return SafetensorsFile(files[0])
        raise ModelFileError(path, "is a folder without a single safetensors file or a sharded index",
                             found=f"{len(files)} .safetensors files")
    name = path.name.lower()
    if name.endswith(".safetensors.index.json"):
        return ShardedCheckpoint(path)
    if name.endswith((".safetensors", ".sft")):
        return SafetensorsFile(path)
    if name.endswith(TORCH_PICKLE_SUFFIXES):
        return TorchPickleFile(path)
    with open(path, "rb") as f:
        magic = f.read(len(GGUF_MAGIC))
    if name.endswith(".gguf") or magic == GGUF_MAGIC:
        return GGUFFile(path)
    raise ModelFileError(path, "has a file type this pack does not read",
                         found=path.suffix or "no extension", expected=".safetensors, .gguf, .pt, .ckpt or .bin")
