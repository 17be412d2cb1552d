"""GGUF files (versions 2 and 3): our own header parser, then tensors viewed from a private memory map.

The header is parsed with struct over a read-only memory map, and every count and length is checked
against the bytes left in the file before anything is read or allocated (N items of at least k bytes each
need N*k bytes left), so a corrupt count is refused at once instead of being looped over or allocated.
Checked, each failure a ModelFileError naming the file:
* magic `GGUF`, version 2 or 3 (little-endian);
* key/values: UTF-8 keys, each key once, values of the known types, arrays nested at most MAX_NESTING deep;
  `general.alignment` (default 32) a uint32 power of two; `general.architecture` a string;
* tensor infos: unique UTF-8 names, at most MAX_DIMS dimensions, a GGML type we know the block layout of,
  rows that fill whole blocks;
* the tensors tile the data section exactly (tiling.py; as gguf-py's GGUFWriter and llama.cpp write it): the data
  section starts at the header's end aligned up; sorted by offset, the tensors start at 0 and each next one
  at the previous end aligned up, each of the byte size its type and shape require; the file ends at the
  last end aligned up (or exactly at the last end). No overlap, no gap, nothing extra;
* then what this pack needs: types it can dequantize, `comfy.gguf.orig_shape.<name>` (a converter's record
  of a reshaped tensor's shape) a list of positive integers with the stored element count.

Keys and tensor names must be UTF-8; a string value that is not is kept as bytes (the pack reads none of
those). Arrays longer than DECODED_ARRAY_ITEMS (tokenizer vocabularies) and very long strings are stepped
over, not decoded, so memory stays bounded whatever the counts say.

Names are given as stored: diffusion models under the pack's (ComfyUI) names, as ComfyUI-GGUF's converter
writes them; text encoders converted by llama.cpp under its names (token_embd, blk.N.attn_q, ...), which
the llama_cpp key layout (loaders/layouts/llama_cpp.py) maps to transformers' names. Quantized tensors come
out as QuantizedTensor (dequantized per layer at forward time), F32/F16/BF16 tensors as plain tensors.
"""

from __future__ import annotations

import functools
import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelFileError, brief, summarize_keys
from ..gguf_dequant import BLOCKS, NAMES, PLAIN_DTYPES, SUPPORTED_TYPES
from ..quant.tensor import GGUF, QuantizedTensor
from .checkpoint import Checkpoint, MappedFile, element_count
from .tiling import align_up, check_tiling

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
ALIGNMENT_KEY = "general.alignment"
ARCHITECTURE_KEY = "general.architecture"
ORIGINAL_SHAPE_KEY = "comfy.gguf.orig_shape."
MAX_NESTING = 4  # arrays of arrays of ...; GGUF writers use one level
MAX_DIMS = 8  # llama.cpp writes at most 4
DECODED_ARRAY_ITEMS = 1024  # longer arrays are stepped over, not decoded
DECODED_ITEMS_PER_FILE = 1 << 20  # nested arrays could otherwise decode most of a file into Python objects
MAX_DECODED_STRING_BYTES = 1 << 20  # longer string values are stepped over (chat templates are ~10 kB)
MAX_NAME_BYTES = 1 << 16  # keys and tensor names (llama.cpp allows 63 bytes for names)
DAMAGED_HINT = "Re-download the file; it is damaged, truncated, or was not written by a GGUF writer."

# GGUF value types (the format's numbering) -> struct format of one item.
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
SCALAR_FORMATS = {UINT8: "B", INT8: "b", UINT16: "H", INT16: "h", UINT32: "I", INT32: "i", FLOAT32: "f",
                  BOOL: "?", UINT64: "Q", INT64: "q", FLOAT64: "d"}
INTEGER_TYPES = {UINT8, INT8, UINT16, INT16, UINT32, INT32, UINT64, INT64}
STRING_MIN_BYTES = 8  # its uint64 length
ARRAY_MIN_BYTES = 12  # item type (uint32) + count (uint64)
KV_MIN_BYTES = STRING_MIN_BYTES + 4 + 1  # key, value type, the smallest value
TENSOR_INFO_MIN_BYTES = STRING_MIN_BYTES + 4 + 4 + 8  # name, n_dims, type, offset

@functools.cache
def ggml_types() -> dict[int, tuple[str, int, int]]:
    """GGML type -> (name, values per block, bytes per block). The gguf package knows every type (also the
    ones this pack cannot dequantize, which are then refused by name); without it, the ones we read.
    Asked for when a GGUF file is opened, not on import (the package takes a while to import)."""
    try:
        import gguf
    except ImportError:
        return {t: (NAMES[t], *BLOCKS[t]) for t in BLOCKS}
    return {int(t): (t.name, *sizes) for t, sizes in gguf.GGML_QUANT_SIZES.items()}


@dataclass(frozen=True)
class Skipped:
    """A metadata value too large to be worth decoding (a tokenizer's vocabulary, say): stepped over."""

    value_type: int  # STRING (size: its bytes) or ARRAY (size: its items)
    size: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dims: tuple[int, ...]  # GGML order: the fastest-varying dimension first
    qtype: int
    offset: int  # from the start of the data section
    nbytes: int


@dataclass
class Header:
    version: int
    metadata: dict  # key -> value (int, float, bool, str, bytes, list or Skipped)
    value_types: dict  # key -> GGUF value type
    tensors: list[TensorInfo]  # in file order
    data_start: int  # absolute offset of the data section


def _unreadable(path, problem: str, found: str | None = None, expected: str | None = None) -> ModelFileError:
    return ModelFileError(path, f"is not a readable GGUF file: {problem}", found=found, expected=expected,
                          hint=DAMAGED_HINT)


class _Parser:
    """Reads the header front to back; every read is checked against the bytes left first. `what` names
    the field for the error message (`part` says which part of it), formatted only when there is one."""

    def __init__(self, path: Path, buf, size: int):
        self.path, self.buf, self.size, self.pos = path, buf, size, 0
        self.decode_budget = DECODED_ITEMS_PER_FILE

    def need(self, nbytes: int, what: str, part: str = "") -> None:
        if nbytes > self.size - self.pos:
            raise _unreadable(self.path, f"{part}{what} runs past the end of the file",
                              found=f"{nbytes} bytes needed at byte {self.pos}, {self.size - self.pos} left")

    def scalar(self, fmt: str, what: str, part: str = ""):
        size = struct.calcsize("<" + fmt)
        self.need(size, what, part)
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return value

    def skip_string(self, what: str) -> tuple[int, int]:
        """Steps over a string; (where it starts, its length)."""
        length = self.scalar("Q", what, "the length of ")
        self.need(length, what)
        self.pos += length
        return self.pos - length, length

    def text(self, what: str) -> str:
        """A key or a tensor name: valid UTF-8 of a plausible length, or the file is refused."""
        start, length = self.skip_string(what)
        raw = self.buf[start:start + min(length, 60)]
        if length > MAX_NAME_BYTES:
            raise _unreadable(self.path, f"{what} is implausibly long", found=f"{length} bytes: {raw!r}...")
        try:
            return self.buf[start:self.pos].decode("utf-8")
        except UnicodeDecodeError:
            raise _unreadable(self.path, f"{what} is not valid UTF-8", found=repr(raw)) from None

    def value(self, vtype: int, what: str, depth: int = 0):
        fmt = SCALAR_FORMATS.get(vtype)
        if fmt is not None:
            return self.scalar(fmt, what)
        if vtype == STRING:
            start, length = self.skip_string(what)
            if length > MAX_DECODED_STRING_BYTES:
                return Skipped(STRING, length)
            raw = self.buf[start:self.pos]
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return raw  # kept undecoded: no value the pack reads is like this
        if vtype == ARRAY:
            return self.array(what, depth)
        raise _unreadable(self.path, f"{what} has a value type unknown to GGUF", found=str(vtype),
                          expected="0-12")

    def array(self, what: str, depth: int):
        if depth >= MAX_NESTING:
            raise _unreadable(self.path, f"{what} nests arrays more than {MAX_NESTING} deep")
        item_type = self.scalar("I", what, "the item type of ")
        count = self.scalar("Q", what, "the length of ")
        decode = count <= DECODED_ARRAY_ITEMS and count <= self.decode_budget
        if decode:
            self.decode_budget -= count
        fmt = SCALAR_FORMATS.get(item_type)
        if fmt is not None:
            size = struct.calcsize("<" + fmt)
            self.need(count * size, what)
            values = list(struct.unpack_from(f"<{count}{fmt}", self.buf, self.pos)) if decode else None
            self.pos += count * size
        elif item_type in (STRING, ARRAY):
            self.need(count * (STRING_MIN_BYTES if item_type == STRING else ARRAY_MIN_BYTES), what)
            if decode:
                values = [self.value(item_type, what, depth + 1) for _ in range(count)]
            else:
                values = None
                for _ in range(count):
                    if item_type == STRING:
                        self.skip_string(what)
                    else:
                        self.array(what, depth + 1)
        else:
            raise _unreadable(self.path, f"{what} holds items of a value type unknown to GGUF",
                              found=str(item_type), expected="0-12")
        return values if decode else Skipped(ARRAY, count)


def read_header(path: Path) -> Header:
    """The checked header of a GGUF file, or a ModelFileError."""
    size = os.path.getsize(path)
    if size < 24:  # magic, version, two counts
        raise _unreadable(path, "it is too short to hold a GGUF header", found=f"{size} bytes")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return _parse(path, buf, size)


def _parse(path: Path, buf, size: int) -> Header:
    p = _Parser(path, buf, size)
    if buf[:4] != MAGIC:
        raise _unreadable(path, "it does not start with 'GGUF'", found=repr(buf[:4]))
    p.pos = 4
    version = p.scalar("I", "the version")
    if version not in VERSIONS:
        if int.from_bytes(version.to_bytes(4, "little"), "big") in VERSIONS:
            problem = "it is a big-endian GGUF file, which this pack does not read"
        elif version == 1:
            problem = "GGUF version 1 (files from before August 2023) is not supported"
        else:
            problem = "its GGUF version is unknown"
        raise _unreadable(path, problem, found=f"version {version}", expected="version 2 or 3")
    tensor_count = p.scalar("Q", "the tensor count")
    kv_count = p.scalar("Q", "the metadata count")

    p.need(kv_count * KV_MIN_BYTES, f"{kv_count} metadata entries")
    metadata, value_types = {}, {}
    for i in range(kv_count):
        key = p.text(f"metadata key {i}")
        if key in metadata:
            raise _unreadable(path, f"the metadata key {brief(key)} is given twice")
        vtype = p.scalar("I", brief(key), "the value type of ")
        metadata[key] = p.value(vtype, f"the value of {brief(key)}")
        value_types[key] = vtype

    alignment = _alignment(path, metadata, value_types)
    p.need(tensor_count * TENSOR_INFO_MIN_BYTES, f"{tensor_count} tensor descriptions")
    tensors, names = [], set()
    for i in range(tensor_count):
        name = p.text(f"the name of tensor {i}")
        if name in names:
            raise _unreadable(path, f"the tensor name {brief(name)} is given twice")
        names.add(name)
        what = brief(name)
        n_dims = p.scalar("I", what, "the dimension count of ")
        if n_dims > MAX_DIMS:
            raise _unreadable(path, f"tensor {brief(name)} has too many dimensions", found=str(n_dims),
                              expected=f"at most {MAX_DIMS}")
        p.need(n_dims * 8, what, "the dimensions of ")
        dims = tuple(p.scalar("Q", what, "the dimensions of ") for _ in range(n_dims))
        qtype = p.scalar("I", what, "the type of ")
        offset = p.scalar("Q", what, "the offset of ")
        tensors.append(TensorInfo(name, dims, qtype, offset, _nbytes(path, name, dims, qtype, size)))
    data_start = align_up(p.pos, alignment)
    check_tiling(path, [(t.name, t.offset, t.nbytes) for t in tensors], size - data_start, DAMAGED_HINT,
                 alignment)
    return Header(version, metadata, value_types, tensors, data_start)


def _alignment(path, metadata: dict, value_types: dict) -> int:
    if ALIGNMENT_KEY not in metadata:
        return DEFAULT_ALIGNMENT
    value = metadata[ALIGNMENT_KEY]
    if value_types[ALIGNMENT_KEY] != UINT32 or value <= 0 or value & (value - 1):
        raise _unreadable(path, f"{ALIGNMENT_KEY} is not a power of two stored as a uint32",
                          found=f"{brief(value)} (value type {value_types[ALIGNMENT_KEY]})")
    return value


def _nbytes(path, name: str, dims: tuple[int, ...], qtype: int, file_size: int) -> int:
    known = ggml_types().get(qtype)
    if known is None:
        raise _unreadable(path, f"tensor {brief(name)} has a tensor type unknown to this pack and to the "
                          "installed gguf package", found=f"type {qtype}")
    type_name, block, type_size = known
    row = dims[0] if dims else 1
    if row % block:
        raise _unreadable(path, f"the rows of tensor {brief(name)} do not fill whole {type_name} blocks",
                          found=f"rows of {row} values", expected=f"a multiple of {block}")
    count = element_count(dims, file_size * block)
    if count > file_size * block:
        raise _unreadable(path, f"tensor {brief(name)} declares more data than the file holds",
                          found=f"dimensions {list(dims)} of {type_name} in a {file_size}-byte file")
    return count // block * type_size


@dataclass(frozen=True)
class _Entry:
    qtype: int
    shape: tuple[int, ...]  # torch order (slowest first), or the recorded original shape
    offset: int  # absolute
    nbytes: int


class GGUFFile(Checkpoint):
    format = "gguf"

    def __init__(self, path):
        super().__init__(path)
        header = read_header(self.path)
        self.metadata = header.metadata
        self.architecture = self.metadata.get(ARCHITECTURE_KEY, "")
        if not isinstance(self.architecture, str):
            raise _unreadable(self.path, f"{ARCHITECTURE_KEY} is not a string", found=brief(self.architecture))
        self._entries: dict[str, _Entry] = {}
        for info in header.tensors:  # names are unique (the header parser checks)
            shape = self._original_shape(info) or tuple(reversed(info.dims))
            self._entries[info.name] = _Entry(info.qtype, shape, header.data_start + info.offset, info.nbytes)
        self._check_types()
        self._map = MappedFile(self.path)

    def _original_shape(self, info: TensorInfo):
        """The shape a converter recorded for a tensor it stored reshaped, checked against the data."""
        key = ORIGINAL_SHAPE_KEY + info.name
        if key not in self.metadata:
            return None
        value = self.metadata[key]
        stored = math.prod(info.dims)  # bounded by the file size already
        if (not isinstance(value, list) or not value
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
            raise _unreadable(self.path, f"{key} is not a list of positive integers", found=brief(value))
        if element_count(value, stored) != stored:
            raise _unreadable(self.path, f"{key} does not hold as many values as the tensor stores",
                              found=f"original shape {value}", expected=f"{stored} values")
        return tuple(value)

    def _check_types(self) -> None:
        """Refuse the file up front (nothing loaded yet) if a tensor is of a type we cannot dequantize."""
        unsupported = {}
        for name, entry in self._entries.items():
            if entry.qtype not in SUPPORTED_TYPES:
                unsupported.setdefault(ggml_types()[entry.qtype][0], []).append(name)
        if unsupported:
            found = "; ".join(f"{kind} for {summarize_keys(names, 3)}" for kind, names in unsupported.items())
            raise ModelFileError(self.path, f"stores tensors as GGUF types this pack cannot dequantize ({found})",
                                 expected=", ".join(NAMES[t] for t in sorted(SUPPORTED_TYPES)))

    def keys(self):
        return list(self._entries)

    def shape(self, key):
        return self._entries[key].shape

    def dtype(self, key):
        return PLAIN_DTYPES.get(self._entries[key].qtype, torch.uint8)

    def tensor(self, key):
        entry = self._entries[key]
        plain = PLAIN_DTYPES.get(entry.qtype)
        if plain is not None:
            return self._map.view(entry.offset, plain, entry.shape)
        return QuantizedTensor(self._map.bytes_at(entry.offset, entry.nbytes), GGUF, entry.shape, qtype=entry.qtype)
