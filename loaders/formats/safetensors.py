"""safetensors files: the header checked against the format's rules, tensors viewed from a memory map.

Checked before any tensor is touched, each failure a ModelFileError naming the file:
* the 8-byte header length fits the file, the header is UTF-8 JSON starting with '{' (trailing spaces
  allowed), at most MAX_HEADER_BYTES, not nested absurdly deep, with no key given twice at any level;
* `__metadata__`, when present, maps strings to strings;
* every other entry is an object with a known `dtype` name, a `shape` list of non-negative integers and
  `data_offsets` of two integers begin <= end, where (elements x element size) == end - begin;
* the tensors tile the data section exactly (tiling.py), as the format requires: sorted by offset the first starts at
  0, each starts where the previous ends (no gap, no overlap), and the last ends at the end of the file.
  Zero-size tensors (a 0 in the shape, e.g. ComfyUI's `scaled_fp8` marker) have empty ranges [x, x].
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelFileError, brief
from .checkpoint import Checkpoint, MappedFile, element_count
from .strict_json import JSONProblem, parse_json_object
from .tiling import check_tiling

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
METADATA_KEY = "__metadata__"
DAMAGED_HINT = "Re-download the file; it is damaged or is not a safetensors file."


@dataclass(frozen=True)
class Entry:
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # byte range in the data section
    end: int


class SafetensorsFile(Checkpoint):
    format = "safetensors"

    def __init__(self, path):
        super().__init__(path)
        self._entries, self.metadata, self._data_start = read_header(self.path)
        self._map = MappedFile(self.path)

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, key):
        return self._entries[key].shape

    def dtype(self, key):
        return self._entries[key].dtype

    def tensor(self, key):
        entry = self._entries[key]
        return self._map.view(self._data_start + entry.begin, entry.dtype, entry.shape)


def _corrupt(path, problem: str, found: str | None = None) -> ModelFileError:
    return ModelFileError(path, f"has a corrupt safetensors header: {problem}", found=found, hint=DAMAGED_HINT)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_header(path: Path) -> tuple[dict[str, Entry], dict[str, str], int]:
    """(entries in file order, metadata, where the data section starts), or a ModelFileError."""
    size = os.path.getsize(path)
    if size < 8:
        raise ModelFileError(path, "is not a safetensors file (too short to hold a header)",
                             found=f"{size} bytes", hint="The file is empty or the download failed.")
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        if header_len > MAX_HEADER_BYTES or header_len > size - 8:
            raise ModelFileError(
                path, "has a corrupt or truncated safetensors header",
                found=f"a header length of {header_len} bytes in a {size}-byte file", hint=DAMAGED_HINT,
            )
        raw = f.read(header_len)
    header = _parse_json(path, raw)
    metadata = _metadata(path, header.pop(METADATA_KEY, None))
    data_start = 8 + header_len
    entries = {key: _entry(path, key, value, size - data_start) for key, value in header.items()}
    check_tiling(path, [(key, e.begin, e.end - e.begin) for key, e in entries.items()], size - data_start,
                 DAMAGED_HINT)
    return entries, metadata, data_start


def _parse_json(path, raw: bytes) -> dict:
    if not raw.startswith(b"{"):
        raise _corrupt(path, "it does not start with '{'", found=repr(raw[:16]))
    try:
        header = parse_json_object(raw)
    except JSONProblem as e:
        raise _corrupt(path, e.problem, found=e.found) from None
    return header


def _metadata(path, metadata) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _corrupt(path, f"{METADATA_KEY} is not an object of strings", found=brief(metadata))
    return metadata


def _entry(path, key: str, value, data_size: int) -> Entry:
    def malformed(problem):
        return _corrupt(path, f"the entry for tensor {brief(key)} {problem}", found=brief(value))

    if not isinstance(value, dict):
        raise malformed("is not an object")
    missing = [field for field in ("dtype", "shape", "data_offsets") if field not in value]
    if missing:
        raise malformed(f"has no {', '.join(missing)}")
    dtype_name, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    if not isinstance(dtype_name, str):
        raise malformed("has a dtype that is not a string")
    if dtype_name not in SAFETENSORS_DTYPES:
        raise ModelFileError(path, f"stores tensor {brief(key)} in a data type this pack cannot read",
                             found=dtype_name[:50], expected=", ".join(SAFETENSORS_DTYPES))
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise malformed("has a shape that is not a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise malformed("has data_offsets that are not two integers 0 <= begin <= end")
    dtype = SAFETENSORS_DTYPES[dtype_name]
    begin, end = offsets
    count = element_count(shape, data_size)
    if count > data_size:
        raise ModelFileError(path, f"declares more data for tensor {brief(key)} than the file holds",
                             found=f"shape {brief(shape)} {dtype_name} in a "
                                   f"{data_size}-byte data section", hint=DAMAGED_HINT)
    nbytes = count * dtype.itemsize
    if end - begin != nbytes:
        raise ModelFileError(path, f"has inconsistent sizes for tensor {brief(key)}",
                             found=f"shape {brief(shape)} {dtype_name} ({nbytes} bytes) in a range of "
                                   f"{end - begin} bytes",
                             hint=DAMAGED_HINT)
    return Entry(dtype, tuple(shape), begin, end)
