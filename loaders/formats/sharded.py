"""Hugging Face sharded safetensors: a `*.safetensors.index.json` naming the shard that holds each tensor.

Checked before any shard is opened: the index is UTF-8 JSON (no key given twice, not absurdly nested) whose
`weight_map` maps tensor names to shard file names, each a plain relative path inside the index's folder
(no absolute paths, no `..`); every shard exists and holds the tensors the index places in it. Each shard
is then checked as any safetensors file is (formats/safetensors.py).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..errors import ModelFileError, brief
from .checkpoint import Checkpoint
from .safetensors import SafetensorsFile
from .strict_json import JSONProblem, parse_json_object

MAX_INDEX_BYTES = 64 * 1024 * 1024  # the index of a 20B model is about 150 kB


class ShardedCheckpoint(Checkpoint):
    format = "safetensors-sharded"

    def __init__(self, index_path):
        super().__init__(index_path)
        index = _read_index(self.path)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise _invalid(self.path, "its weight_map is not an object from tensor names to shard file names",
                           found=brief(weight_map))
        metadata = index.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise _invalid(self.path, "its metadata is not an object", found=brief(metadata))
        self.metadata = metadata or {}
        folder = self.path.parent
        self._shards: dict[str, SafetensorsFile] = {}
        self._where: dict[str, SafetensorsFile] = {}
        for key, shard_name in weight_map.items():
            if shard_name not in self._shards:
                _check_shard_name(self.path, shard_name)
                shard_path = folder / shard_name
                if not _is_file(shard_path):
                    raise ModelFileError(self.path, f"lists a shard that is missing: {shard_name}",
                                         hint="Download every shard listed in the index.")
                self._shards[shard_name] = SafetensorsFile(shard_path)
            shard = self._shards[shard_name]
            if key not in shard:
                raise ModelFileError(shard.path, f"does not contain {brief(key)}, which the index places there")
            self._where[key] = shard

    def keys(self):
        return list(self._where)

    def shape(self, key):
        return self._where[key].shape(key)

    def dtype(self, key):
        return self._where[key].dtype(key)

    def tensor(self, key):
        return self._where[key].tensor(key)


def _invalid(path, problem: str, found: str | None = None) -> ModelFileError:
    return ModelFileError(path, f"is not a valid sharded-checkpoint index: {problem}", found=found,
                          hint="Re-download the index file (*.safetensors.index.json) of this model.")


def _read_index(path: Path) -> dict:
    try:
        size = os.path.getsize(path)
        if size > MAX_INDEX_BYTES:
            raise _invalid(path, "it is far too large for an index", found=f"{size} bytes")
        raw = path.read_bytes()
    except OSError as e:
        raise _invalid(path, "it cannot be read", found=str(e)) from None
    try:
        index = parse_json_object(raw)
    except JSONProblem as e:
        raise _invalid(path, e.problem, found=e.found) from None
    return index


def _check_shard_name(index_path: Path, name: str) -> None:
    """Shards sit beside their index. Checked on the name alone, not on resolved paths: a Hugging Face
    cache links each shard to a blob elsewhere, and that is fine."""
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if (not name or "\x00" in name or posix.is_absolute() or windows.is_absolute() or windows.drive
            or ".." in posix.parts or ".." in windows.parts):
        raise _invalid(index_path, "it names a shard outside its folder", found=brief(name))


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long for the file system, say
        return False
