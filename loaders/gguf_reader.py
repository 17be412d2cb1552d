"""GGUF files as a Checkpoint: quantized tensors stay as their raw blocks, memory-mapped.

The gguf package parses the header; tensor data is viewed straight from a private memory map of the
file (nothing is read until a layer uses it). Quantized tensors become QuantizedTensor (dequantized per
layer at forward time), F32/F16/BF16 tensors plain tensors.

Names: diffusion models are stored under the pack's (ComfyUI) names, as ComfyUI-GGUF's converter writes
them. Text encoders converted by llama.cpp use its own names (token_embd, blk.N.attn_q, ...): they are
mapped back to the transformers / ComfyUI names. Tensors a converter reshaped to fit GGUF's layout get
their shape back from `comfy.gguf.orig_shape.<name>` metadata.
"""

from __future__ import annotations

import os
import re

import torch

from .errors import ModelFileError, summarize_keys
from .gguf_dequant import PLAIN_DTYPES, SUPPORTED_TYPES
from .quant.tensor import GGUF, QuantizedTensor
from .readers import Checkpoint

ORIGINAL_SHAPE_KEY = "comfy.gguf.orig_shape."
# llama.cpp's names for a decoder-only language model (Qwen2/Qwen2-VL, ...) -> transformers' names.
LLAMA_CPP_NAMES = [
    (r"^token_embd\.", "model.embed_tokens."),
    (r"^output_norm\.", "model.norm."),
    (r"^output\.", "lm_head."),
    (r"^blk\.(\d+)\.attn_norm\.", r"model.layers.\1.input_layernorm."),
    (r"^blk\.(\d+)\.ffn_norm\.", r"model.layers.\1.post_attention_layernorm."),
    (r"^blk\.(\d+)\.attn_q\.", r"model.layers.\1.self_attn.q_proj."),
    (r"^blk\.(\d+)\.attn_k\.", r"model.layers.\1.self_attn.k_proj."),
    (r"^blk\.(\d+)\.attn_v\.", r"model.layers.\1.self_attn.v_proj."),
    (r"^blk\.(\d+)\.attn_output\.", r"model.layers.\1.self_attn.o_proj."),
    (r"^blk\.(\d+)\.ffn_gate\.", r"model.layers.\1.mlp.gate_proj."),
    (r"^blk\.(\d+)\.ffn_up\.", r"model.layers.\1.mlp.up_proj."),
    (r"^blk\.(\d+)\.ffn_down\.", r"model.layers.\1.mlp.down_proj."),
]
# Architectures whose llama.cpp conversion permutes the q/k rows (for its RoPE layout); mapping those
# back is not implemented yet, so they are refused rather than loaded wrong.
PERMUTED_QK_ARCHITECTURES = {"llama", "mistral", "mistral3"}


def transformers_name(name: str) -> str:
    for pattern, replacement in LLAMA_CPP_NAMES:
        if re.match(pattern, name):
            return re.sub(pattern, replacement, name)
    return name


class GGUFFile(Checkpoint):
    format = "gguf"

    def __init__(self, path):
        super().__init__(path)
        try:
            import gguf
        except ImportError:
            raise ModelFileError(path, "is a GGUF file, and reading GGUF needs the 'gguf' package",
                                 hint="pip install gguf (it is in the pack's requirements.txt)") from None
        try:
            reader = gguf.GGUFReader(str(path), "r")
        except Exception as e:  # the reader raises ValueError/KeyError/IndexError on damaged headers
            raise ModelFileError(path, "is not a readable GGUF file (corrupt or truncated header, or a "
                                 "tensor type unknown to the gguf package)",
                                 found=f"{type(e).__name__}: {str(e)[:200]}",
                                 hint="Re-download the file, or update the gguf package.") from None
        self.metadata = self._metadata(reader)
        self.architecture = self.metadata.get("general.architecture", "")
        self._entries = {}
        size = os.path.getsize(path)
        llama_cpp = any(t.name.startswith("blk.") for t in reader.tensors)
        if llama_cpp and self.architecture in PERMUTED_QK_ARCHITECTURES:
            raise ModelFileError(path, f"is a llama.cpp GGUF of architecture {self.architecture!r}, whose "
                                 "attention weights llama.cpp stores permuted; reading those is not supported yet",
                                 expected="a Qwen2/Qwen2.5-VL text encoder GGUF")
        for tensor in reader.tensors:
            name = transformers_name(tensor.name) if llama_cpp else tensor.name
            end = tensor.data_offset + int(tensor.n_bytes)
            if end > size:
                raise ModelFileError(path, "is truncated", found=f"{size} bytes",
                                     expected=f"at least {end} bytes (tensor {tensor.name} ends there)",
                                     hint="The download was probably cut short; download the file again.")
            shape = self._original_shape(tensor.name) or tuple(int(d) for d in reversed(tensor.shape.tolist()))
            self._entries[name] = (int(tensor.tensor_type), shape, tensor.data_offset, int(tensor.n_bytes))
        self._check_types(gguf)
        self._storage = None

    def _check_types(self, gguf) -> None:
        """Refuse the file up front (nothing loaded yet) if a tensor is of a type we cannot dequantize."""
        unsupported = {}
        for name, (qtype, *_rest) in self._entries.items():
            if qtype not in SUPPORTED_TYPES:
                unsupported.setdefault(gguf.GGMLQuantizationType(qtype).name, []).append(name)
        if unsupported:
            found = "; ".join(f"{kind} for {summarize_keys(names, 3)}" for kind, names in unsupported.items())
            raise ModelFileError(self.path, f"stores tensors as GGUF types this pack cannot dequantize ({found})",
                                 expected="F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K-Q6_K, IQ4_NL or IQ4_XS")

    @staticmethod
    def _metadata(reader) -> dict:
        out = {}
        for key, field in reader.fields.items():
            if key.startswith("GGUF."):
                continue
            try:
                out[key] = field.contents()
            except Exception:  # fields of types the reader cannot render are not needed here
                continue
        return out

    def _original_shape(self, name: str):
        value = self.metadata.get(ORIGINAL_SHAPE_KEY + name)
        return tuple(int(v) for v in value) if value is not None else None

    def keys(self):
        return list(self._entries)

    def shape(self, key):
        return self._entries[key][1]

    def dtype(self, key):
        qtype = self._entries[key][0]
        return PLAIN_DTYPES.get(qtype, torch.uint8)

    def _mapped(self) -> torch.UntypedStorage:
        if self._storage is None:
            self._storage = torch.UntypedStorage.from_file(str(self.path), shared=False,
                                                           nbytes=os.path.getsize(self.path))
        return self._storage

    def tensor(self, key):
        qtype, shape, offset, nbytes = self._entries[key]
        raw = torch.empty(0, dtype=torch.uint8).set_(self._mapped(), offset, (nbytes,))
        plain = PLAIN_DTYPES.get(qtype)
        if plain is not None:
            element = torch.empty(0, dtype=plain).element_size()
            if offset % element:
                raw = raw.clone()
            return raw.view(plain).reshape(shape)
        return QuantizedTensor(raw, GGUF, shape, qtype=qtype)

