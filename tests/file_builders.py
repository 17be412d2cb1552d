"""Small model files written byte by byte, so tests can damage exactly one field.

`safetensors_bytes` writes a safetensors file from a header (a dict, or raw JSON text to write keys twice
and the like) and a data section; `GGUFBuilder` writes a GGUF v3 file the way gguf-py's GGUFWriter and
llama.cpp do (a test checks the two agree byte for byte) and remembers where each field sits.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

import numpy as np
import torch

# --- safetensors ----------------------------------------------------------------------------------------
SAFETENSORS_NAMES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64",
                     torch.uint8: "U8", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}


def safetensors_bytes(header, data: bytes, header_len_delta: int = 0) -> bytes:
    """header: a dict (serialised compactly) or JSON text; padded with spaces to 8 bytes, as writers do."""
    raw = (header if isinstance(header, (str, bytes)) else json.dumps(header, separators=(",", ":")))
    raw = raw.encode() if isinstance(raw, str) else raw
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw) + header_len_delta) + raw + data


def tensors_layout(tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> tuple[dict, bytes]:
    """(header dict, data) for `tensors` stored one after another in the given order."""
    header, chunks, offset = {}, [], 0
    for name, tensor in tensors.items():
        raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header[name] = {"dtype": SAFETENSORS_NAMES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    return header, b"".join(chunks)


# --- GGUF -----------------------------------------------------------------------------------------------
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
SCALARS = {UINT8: "B", INT8: "b", UINT16: "H", INT16: "h", UINT32: "I", INT32: "i", FLOAT32: "f", BOOL: "?",
           UINT64: "Q", INT64: "q", FLOAT64: "d"}


def _pad(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


@dataclass
class GGUFTensor:
    name: str
    dims: tuple[int, ...]  # GGML order: fastest-varying first
    qtype: int
    data: bytes


@dataclass
class GGUFBuilder:
    """kvs: (key, value type, value); an ARRAY value is (item type, [items]) (items of nested arrays alike)."""

    kvs: list = field(default_factory=list)
    tensors: list[GGUFTensor] = field(default_factory=list)
    alignment: int = 32
    positions: dict = field(default_factory=dict)  # field name -> byte offset, filled by build()

    def _value(self, out: bytearray, vtype: int, value) -> None:
        if vtype in SCALARS:
            out += struct.pack("<" + SCALARS[vtype], value)
        elif vtype == STRING:
            raw = value.encode() if isinstance(value, str) else value
            out += struct.pack("<Q", len(raw)) + raw
        elif vtype == ARRAY:
            item_type, items = value
            out += struct.pack("<IQ", item_type, len(items))
            for item in items:
                self._value(out, item_type, item)
        else:
            raise ValueError(vtype)

    def build(self) -> bytes:
        out = bytearray(b"GGUF")
        out += struct.pack("<I", 3)
        self.positions["tensor_count"] = len(out)
        out += struct.pack("<Q", len(self.tensors))
        self.positions["kv_count"] = len(out)
        out += struct.pack("<Q", len(self.kvs))
        for key, vtype, value in self.kvs:
            self.positions[f"kv:{key}"] = len(out)
            self._value(out, STRING, key)
            out += struct.pack("<I", vtype)
            self.positions[f"value:{key}"] = len(out)
            self._value(out, vtype, value)
        offset = 0
        for t in self.tensors:
            self.positions[f"name:{t.name}"] = len(out)
            self._value(out, STRING, t.name)
            out += struct.pack("<I", len(t.dims))
            for d in t.dims:
                out += struct.pack("<Q", d)
            self.positions[f"type:{t.name}"] = len(out)
            out += struct.pack("<I", t.qtype)
            self.positions[f"offset:{t.name}"] = len(out)
            out += struct.pack("<Q", offset)
            offset += _pad(len(t.data), self.alignment)
        out += bytes(_pad(len(out), self.alignment) - len(out))
        self.positions["data"] = len(out)
        for t in self.tensors:
            self.positions[f"data:{t.name}"] = len(out)
            out += t.data + bytes(_pad(len(t.data), self.alignment) - len(t.data))
        return bytes(out)


def gguf_tensor(name: str, array: np.ndarray, qtype_name: str) -> GGUFTensor:
    """A tensor quantized with the gguf package (or our K quantizers), torch-order `array` shape."""
    import gguf

    from comfyui_mmdit.tools.kquants import QUANTIZERS

    qtype = gguf.GGMLQuantizationType[qtype_name]
    if qtype_name in ("F32", "F16"):
        data = array.astype(np.float32 if qtype_name == "F32" else np.float16).tobytes()
    elif qtype_name in QUANTIZERS:
        data = QUANTIZERS[qtype_name](array).tobytes()
    else:
        data = gguf.quants.quantize(array.astype(np.float32), qtype).tobytes()
    return GGUFTensor(name, tuple(reversed(array.shape)), int(qtype), data)


def put_u32(data: bytes, position: int, value: int) -> bytes:
    return data[:position] + struct.pack("<I", value) + data[position + 4:]


def put_u64(data: bytes, position: int, value: int) -> bytes:
    return data[:position] + struct.pack("<Q", value) + data[position + 8:]
