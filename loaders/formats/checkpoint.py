"""The Checkpoint interface every reader implements: tensor names, shapes and dtypes from the file's header,
tensors on demand, plus the private memory map the mapped formats share.

Checks nothing itself; the readers check their format before they construct one.
"""

from __future__ import annotations

import math
import mmap
import os
import platform
import sys
from pathlib import Path
from typing import Iterator

import torch

from ..errors import ModelFileError


class Checkpoint:
    """Tensor names, shapes and dtypes of one model file (or sharded set), with tensors on demand."""

    format = "unknown"

    def __init__(self, path):
        self.path = Path(path)
        self.metadata: dict = {}

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
        return sum(math.prod(self.shape(k)) * self.dtype(k).itemsize for k in self.keys())


def element_count(shape, limit: int) -> int:
    """The product of `shape`, or limit + 1 as soon as it is known to exceed `limit`: a corrupt shape such
    as [2**60] * 100000 would otherwise multiply ever larger integers for minutes."""
    if 0 in shape:
        return 0
    count = 1
    for dim in shape:
        count *= dim
        if count > limit:
            return limit + 1
    return count


# Linux's default overcommit heuristic refuses a writable private map larger than RAM + swap (a 41 GB bf16
# model on a 32 GB machine: "Cannot allocate memory") unless the map asks for no swap reservation. Python
# 3.13 names the flag; before that, its value on the architectures ComfyUI runs on.
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform.startswith("linux")
                        and platform.machine().lower() in ("x86_64", "amd64", "aarch64", "arm64") else 0)


def private_map(path: Path) -> torch.Tensor:
    """The whole file as a uint8 tensor over a private (copy-on-write) memory map: nothing can ever write
    back to the file, pages are read from disk only when a tensor is used, and no memory is reserved for
    them up front (see MAP_NORESERVE)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        try:
            if os.name == "nt":
                mapped = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
            else:
                mapped = mmap.mmap(f.fileno(), size, flags=mmap.MAP_PRIVATE | MAP_NORESERVE,
                                   prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as error:
            raise ModelFileError(path, "could not be memory-mapped", found=f"{error.strerror} ({size} bytes)",
                                 hint="The system refused to map the file: with Linux's strict overcommit "
                                      "(vm.overcommit_memory=2) add swap or use a smaller (FP8/GGUF) file.") from None
    return torch.frombuffer(mapped, dtype=torch.uint8)  # the tensor keeps the map alive


class MappedFile:
    """A file's private memory map (private_map), made on first use; tensors are views of it."""

    def __init__(self, path: Path):
        self.path = path
        self._data = None

    def bytes_at(self, offset: int, nbytes: int) -> torch.Tensor:
        """`nbytes` bytes at `offset` as a uint8 tensor viewing the map (the caller checked the range)."""
        if nbytes == 0:
            return torch.empty(0, dtype=torch.uint8)  # also for a range at the very end of the file
        if self._data is None:
            self._data = private_map(self.path)
        return self._data[offset:offset + nbytes]

    def view(self, offset: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        """A `dtype` tensor of `shape` stored at `offset`: a view of the map, or a copy of this one tensor
        when the offset is not a multiple of the element size (a wider type cannot view unaligned bytes)."""
        raw = self.bytes_at(offset, math.prod(shape) * dtype.itemsize)
        if offset % dtype.itemsize:
            raw = raw.clone()
        return raw.view(dtype).reshape(shape)
