"""The Checkpoint interface every reader implements: tensor names, shapes and dtypes from the file's header,
tensors on demand, plus the private memory map the mapped formats share.

Checks nothing itself; the readers check their format before they construct one.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator

import torch


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


class MappedFile:
    """A private (copy-on-write) memory map of a whole file, made on first use: nothing can ever write
    back to the file, and pages are read from disk only when a tensor is used."""

    def __init__(self, path: Path):
        self.path = path
        self._storage = None

    def bytes_at(self, offset: int, nbytes: int) -> torch.Tensor:
        """`nbytes` bytes at `offset` as a uint8 tensor viewing the map (the caller checked the range)."""
        if nbytes == 0:
            return torch.empty(0, dtype=torch.uint8)  # also for a range at the very end of the file
        if self._storage is None:
            self._storage = torch.UntypedStorage.from_file(str(self.path), shared=False,
                                                           nbytes=os.path.getsize(self.path))
        return torch.empty(0, dtype=torch.uint8).set_(self._storage, offset, (nbytes,))

    def view(self, offset: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        """A `dtype` tensor of `shape` stored at `offset`: a view of the map, or a copy of this one tensor
        when the offset is not a multiple of the element size (a wider type cannot view unaligned bytes)."""
        raw = self.bytes_at(offset, math.prod(shape) * dtype.itemsize)
        if offset % dtype.itemsize:
            raw = raw.clone()
        return raw.view(dtype).reshape(shape)
