"""Read model files into memory-mapped tensors, checking them before anything is loaded.

`open_checkpoint(path)` returns a `Checkpoint`: tensor names, shapes and dtypes straight from the file's
header, and tensors created on demand as zero-copy views of a private memory map (pages are read from disk
only when a tensor is used). Supported: safetensors files, Hugging Face sharded folders or index files, and
PyTorch .pt/.ckpt/.bin files read with `torch.load(weights_only=True)` (never full unpickling).

A damaged file (truncated download, corrupt header) is reported with the file name and what is wrong
before any tensor is touched.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterator

import torch

from .errors import ModelFileError

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
for _name, _attr in (("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64"), ("F8_E8M0", "float8_e8m0fnu")):
    if hasattr(torch, _attr):
        SAFETENSORS_DTYPES[_name] = getattr(torch, _attr)

MAX_HEADER_BYTES = 100 * 1024 * 1024
TORCH_PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


class Checkpoint:
    """Tensor names, shapes and dtypes of one model file (or sharded set), with tensors on demand."""

    format = "unknown"

    def __init__(self, path):
        self.path = Path(path)
        self.metadata: dict[str, str] = {}

    def keys(self) -> list[str]:
        raise NotImplementedError

    def shape(self, key: str) -> tuple[int, ...]:
        raise NotImplementedError

    def dtype(self, key: str) -> torch.dtype:
        raise NotImplementedError

    def tensor(self, key: str) -> torch.Tensor:
        raise NotImplementedError

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: self.shape(k) for k in self.keys()}

    def __contains__(self, key: str) -> bool:
        if getattr(self, "_key_set", None) is None:
            self._key_set = set(self.keys())
        return key in self._key_set

    def __len__(self) -> int:
        return len(self.keys())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def nbytes(self) -> int:
        return sum(
            torch.Size(self.shape(k)).numel() * torch.empty(0, dtype=self.dtype(k)).element_size() for k in self.keys()
        )


class SafetensorsFile(Checkpoint):
    format = "safetensors"

    def __init__(self, path):
        super().__init__(path)
        self._entries, self.metadata, self._data_start = _read_safetensors_header(self.path)
        self._storage = None

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, key):
        return tuple(self._entries[key]["shape"])

    def dtype(self, key):
        return self._entries[key]["torch_dtype"]

    def _mapped(self) -> torch.UntypedStorage:
        if self._storage is None:
            size = os.path.getsize(self.path)
            # shared=False: a private (copy-on-write) map, so nothing can ever write back to the file.
            self._storage = torch.UntypedStorage.from_file(str(self.path), shared=False, nbytes=size)
        return self._storage

    def tensor(self, key):
        entry = self._entries[key]
        begin, end = entry["data_offsets"]
        dtype = entry["torch_dtype"]
        shape = tuple(entry["shape"])
        offset = self._data_start + begin
        nbytes = end - begin
        raw = torch.empty(0, dtype=torch.uint8).set_(self._mapped(), offset, (nbytes,))
        element = torch.empty(0, dtype=dtype).element_size()
        if offset % element:
            raw = raw.clone()  # unaligned data cannot be viewed as a wider type; copy this one tensor
        if dtype == torch.bool:
            return raw.view(torch.bool).reshape(shape)
        return raw.view(dtype).reshape(shape)


def _read_safetensors_header(path: Path):
    size = os.path.getsize(path)
    if size < 8:
        raise ModelFileError(path, "is not a safetensors file (too short to hold a header)",
                             found=f"{size} bytes", hint="The file is empty or the download failed.")
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > MAX_HEADER_BYTES or header_len > size - 8:
            raise ModelFileError(
                path, "has a corrupt or truncated safetensors header",
                found=f"a header length of {header_len} bytes in a {size}-byte file",
                hint="Re-download the file; it is damaged or is not a safetensors file.",
            )
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(path, "has a corrupt safetensors header (not valid JSON)", found=str(e),
                             hint="Re-download the file.") from None
    if not isinstance(header, dict):
        raise ModelFileError(path, "has a corrupt safetensors header", found=f"a JSON {type(header).__name__}")

    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    data_size = size - data_start
    needed = 0
    for key, entry in header.items():
        try:
            begin, end = entry["data_offsets"]
            dtype_name = entry["dtype"]
            shape = entry["shape"]
        except (KeyError, TypeError, ValueError):
            raise ModelFileError(path, f"has a malformed header entry for tensor {key!r}", found=repr(entry)[:200]) from None
        if dtype_name not in SAFETENSORS_DTYPES:
            raise ModelFileError(path, f"stores tensor {key!r} in a data type this pack cannot read",
                                 found=dtype_name, expected=", ".join(SAFETENSORS_DTYPES))
        entry["torch_dtype"] = SAFETENSORS_DTYPES[dtype_name]
        element = torch.empty(0, dtype=entry["torch_dtype"]).element_size()
        if end - begin != torch.Size(shape).numel() * element or begin > end:
            raise ModelFileError(path, f"has inconsistent sizes for tensor {key!r}",
                                 found=f"shape {shape} {dtype_name} in {end - begin} bytes")
        needed = max(needed, end)
    if needed > data_size:
        raise ModelFileError(
            path, "is truncated",
            found=f"{data_size} bytes of tensor data",
            expected=f"{needed} bytes as its header declares ({needed - data_size} bytes missing)",
            hint="The download was probably cut short; download the file again.",
        )
    return header, metadata, data_start


class ShardedCheckpoint(Checkpoint):
    """A Hugging Face sharded set: `*.safetensors.index.json` naming one file per tensor."""

    format = "safetensors-sharded"

    def __init__(self, index_path):
        super().__init__(index_path)
        try:
            index = json.loads(Path(index_path).read_text())
            weight_map = index["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ModelFileError(index_path, "is not a valid sharded-checkpoint index", found=str(e)) from None
        self.metadata = index.get("metadata") or {}
        folder = Path(index_path).parent
        self._shards: dict[str, SafetensorsFile] = {}
        self._where: dict[str, SafetensorsFile] = {}
        for key, shard_name in weight_map.items():
            shard_path = folder / shard_name
            if shard_name not in self._shards:
                if not shard_path.exists():
                    raise ModelFileError(index_path, f"lists a shard that is missing: {shard_name}",
                                         hint="Download every shard listed in the index.")
                self._shards[shard_name] = SafetensorsFile(shard_path)
            shard = self._shards[shard_name]
            if key not in shard._entries:
                raise ModelFileError(shard_path, f"does not contain {key!r}, which the index places there")
            self._where[key] = shard

    def keys(self):
        return list(self._where)

    def shape(self, key):
        return self._where[key].shape(key)

    def dtype(self, key):
        return self._where[key].dtype(key)

    def tensor(self, key):
        return self._where[key].tensor(key)


class TorchPickleFile(Checkpoint):
    """A .pt/.ckpt/.bin file, read with weights_only=True (memory-mapped when the format allows)."""

    format = "torch"

    def __init__(self, path):
        super().__init__(path)
        try:
            try:
                data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                data = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
        except Exception as e:  # torch raises several types for damaged or unsafe pickles
            raise ModelFileError(
                path, "could not be read as a PyTorch weights file",
                found=str(e).splitlines()[0][:300],
                hint="Only plain tensor dictionaries are read (weights_only=True); files that need full "
                     "unpickling are refused because unpickling can run arbitrary code.",
            ) from None
        self._tensors = _unwrap_state_dict(path, data)

    def keys(self):
        return list(self._tensors)

    def shape(self, key):
        return tuple(self._tensors[key].shape)

    def dtype(self, key):
        return self._tensors[key].dtype

    def tensor(self, key):
        return self._tensors[key]


def _unwrap_state_dict(path, data) -> dict[str, torch.Tensor]:
    """Official releases wrap weights as {"state_dict": ...}, {"module": ...} or {"model": ...}."""
    for _ in range(3):
        if isinstance(data, dict) and not any(isinstance(v, torch.Tensor) for v in data.values()):
            for wrapper in ("state_dict", "module", "model", "ema"):
                if isinstance(data.get(wrapper), dict):
                    data = data[wrapper]
                    break
            else:
                break
    if not isinstance(data, dict):
        raise ModelFileError(path, "does not hold a dictionary of tensors", found=type(data).__name__)
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelFileError(path, "holds no tensors", found=f"keys {list(data)[:8]}")
    return tensors


def open_checkpoint(path) -> Checkpoint:
    """Open a model file, a sharded index, or a folder holding one of those, quantization scales folded in."""
    return _with_quantization(open_file(path))


def open_file(path) -> Checkpoint:
    """The file's tensors exactly as stored (no scales folded in)."""
    path = Path(path)
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
    if name.endswith(".safetensors") or name.endswith(".sft"):
        return SafetensorsFile(path)
    if name.endswith(TORCH_PICKLE_SUFFIXES):
        return TorchPickleFile(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if name.endswith(".gguf") or magic == b"GGUF":
        from .gguf_reader import GGUFFile

        return GGUFFile(path)
    raise ModelFileError(path, "has a file type this pack does not read",
                         found=path.suffix or "no extension", expected=".safetensors, .gguf, .pt, .ckpt or .bin")


def _with_quantization(checkpoint: Checkpoint) -> Checkpoint:
    """Scaled FP8 files: present each weight with its scale folded in, whether the scales are inside the
    file or in an official release's separate map (see quant/fp8.py)."""
    from .quant.fp8 import FP8ScaledView, with_official_scale_map

    if FP8ScaledView.applies_to(checkpoint):
        return FP8ScaledView(checkpoint)
    return with_official_scale_map(checkpoint)


def load_state_dict(checkpoint: Checkpoint, keys=None) -> dict[str, torch.Tensor]:
    """Memory-mapped tensors for `keys` (all by default); nothing is copied until a tensor is used."""
    return {k: checkpoint.tensor(k) for k in (checkpoint.keys() if keys is None else keys)}
