"""Seeded fuzzing of the readers. Small valid files of each format (safetensors, scaled FP8 safetensors, a
sharded index, GGUF with legacy and K quant types, a llama.cpp-named GGUF text encoder, zip and legacy .pt)
are damaged in seeded ways: bytes flipped, inserted or deleted in the header, the file cut short, length
fields changed, JSON and GGUF fields rewritten. Each variant must either be refused with a ModelFileError
or load with every tensor readable (quantized ones dequantized) and of its declared shape, within a few
seconds; any other exception fails. A second test damages every tensor of the GGUF and safetensors files
in the ways the format's structure rules out (type, offset, alignment, shifted data, truncation) and
requires a refusal. (test_damaged_files.py holds the named cases, with their messages.)"""

from __future__ import annotations

import json
import random
import signal
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from comfyui_mmdit.loaders.checkpoints import open_checkpoint
from comfyui_mmdit.loaders.errors import ModelFileError
from comfyui_mmdit.loaders.quant.tensor import QuantizedTensor

from file_builders import (
    ARRAY, FLOAT32, INT32, STRING, UINT8, UINT32, GGUFBuilder, gguf_tensor, put_u32, put_u64, safetensors_bytes,
    tensors_layout,
)

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType
SECONDS_PER_VARIANT = 10
VARIANTS_PER_BASE = 48
INTERESTING_COUNTS = [0, 1, 2, 7, 31, 32, 33, 255, 2**16, 2**28, 2**31, 2**32 - 1, 2**63, 2**64 - 1]


@dataclass
class Base:
    name: str
    path: Path  # what open_checkpoint is given (the weights file, or the index)
    target: Path  # the file the mutations damage
    data: bytes
    header_end: int  # the header region (mutations there matter most)
    positions: dict  # GGUF field name -> byte offset
    json_header: dict | None = None  # safetensors: the parsed header
    gguf_builder: GGUFBuilder | None = None


def _safetensors_base(folder: Path, name: str, tensors: dict, metadata=None) -> Base:
    header, data = tensors_layout(tensors, metadata)
    raw = safetensors_bytes(header, data)
    path = folder / name
    path.write_bytes(raw)
    return Base(name, path, path, raw, 8 + struct.unpack_from("<Q", raw)[0], {}, json_header=header)


def _gguf_base(folder: Path, name: str, builder: GGUFBuilder) -> Base:
    raw = builder.build()
    path = folder / name
    path.write_bytes(raw)
    return Base(name, path, path, raw, builder.positions["data"], dict(builder.positions), gguf_builder=builder)


def _record(value: dict) -> torch.Tensor:
    return torch.tensor(list(json.dumps(value).encode()), dtype=torch.uint8)


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> list[Base]:
    folder = tmp_path_factory.mktemp("fuzz_bases")
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    out = [_safetensors_base(folder, "plain.safetensors", {
        "w": torch.randn(6, 4, generator=g), "b": torch.randn(6, generator=g).to(torch.bfloat16),
        "empty": torch.empty(0, 3), "steps": torch.arange(5), "h": torch.randn(3, 2, generator=g).half(),
    }, {"format": "pt", "mmdit.family": "qwen_image"})]

    fp8 = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for layer, (rows, cols) in {"l1": (8, 4), "l2": (4, 8)}.items():
        fp8[f"{layer}.weight"] = torch.randn(rows, cols, generator=g).to(torch.float8_e4m3fn)
        fp8[f"{layer}.bias"] = torch.randn(rows, generator=g).to(torch.float8_e4m3fn)
        fp8[f"{layer}.scale_weight"] = torch.tensor(0.05)
        fp8[f"{layer}.scale_input"] = torch.tensor(1.0)
    fp8["l2.scale_weight"] = torch.rand(4, generator=g)
    fp8["norm.weight"] = torch.ones(8, dtype=torch.bfloat16)
    out.append(_safetensors_base(folder, "scaled_fp8.safetensors", fp8))
    mixed = {"l1.weight": fp8["l1.weight"], "l1.weight_scale": torch.tensor(0.5),
             "l1.comfy_quant": _record({"format": "float8_e4m3fn"}), "l2.weight": torch.randn(4, 8, generator=g)}
    out.append(_safetensors_base(folder, "comfy_quant.safetensors", mixed))
    out.append(_safetensors_base(folder, "plain_fp8.safetensors", {
        "a.weight": torch.randn(16, 8, generator=g).to(torch.float8_e5m2),
        "a.bias": torch.zeros(16).to(torch.float8_e5m2)}))

    sharded = folder / "sharded"
    sharded.mkdir()
    save_file({"a": torch.randn(4, 4, generator=g)}, str(sharded / "one.safetensors"))
    save_file({"b": torch.randn(4, generator=g), "c": torch.zeros(2, 2)}, str(sharded / "two.safetensors"))
    index = sharded / "model.safetensors.index.json"
    text = json.dumps({"metadata": {"total_size": 96},
                       "weight_map": {"a": "one.safetensors", "b": "two.safetensors", "c": "two.safetensors"}})
    index.write_text(text)
    out.append(Base("sharded index", sharded, index, text.encode(), len(text), {}))
    raw = (sharded / "two.safetensors").read_bytes()
    header_end = 8 + struct.unpack_from("<Q", raw)[0]
    out.append(Base("shard", sharded, sharded / "two.safetensors", raw, header_end, {},
                    json_header=json.loads(raw[8:header_end])))

    def array(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    diffusion = GGUFBuilder(
        kvs=[("general.architecture", STRING, "qwen_image"), ("general.quantization_version", UINT32, 2),
             ("general.alignment", UINT32, 32), ("comfy.gguf.orig_shape.flat.weight", ARRAY, (INT32, [4, 2, 64])),
             ("names", ARRAY, (STRING, ["alpha", "beta", "gamma"])), ("nested", ARRAY, (ARRAY, [(UINT8, [1, 2])])),
             ("pi", FLOAT32, 3.14)],
        tensors=[gguf_tensor("norm.weight", array(24), "F32"), gguf_tensor("half.weight", array(3, 32), "F16"),
                 gguf_tensor("q8.weight", array(4, 64), "Q8_0"), gguf_tensor("q4.weight", array(2, 64), "Q4_0"),
                 gguf_tensor("q51.weight", array(2, 32), "Q5_1"), gguf_tensor("q4k.weight", array(2, 256), "Q4_K"),
                 gguf_tensor("q6k.weight", array(1, 512), "Q6_K"), gguf_tensor("flat.weight", array(8, 64), "Q8_0")])
    out.append(_gguf_base(folder, "diffusion.gguf", diffusion))
    text_encoder = GGUFBuilder(
        kvs=[("general.architecture", STRING, "qwen2vl"),
             ("tokenizer.ggml.tokens", ARRAY, (STRING, [f"tok{i}" for i in range(1500)])),
             ("tokenizer.ggml.scores", ARRAY, (FLOAT32, [0.0] * 1500))],
        tensors=[gguf_tensor("token_embd.weight", array(16, 64), "Q8_0"),
                 gguf_tensor("output_norm.weight", array(64), "F32"),
                 gguf_tensor("blk.0.attn_q.weight", array(64, 64), "Q4_0"),
                 gguf_tensor("blk.0.attn_q.bias", array(64), "F32"),
                 gguf_tensor("blk.0.ffn_down.weight", array(64, 256), "Q4_K")])
    out.append(_gguf_base(folder, "text_encoder.gguf", text_encoder))

    tensors = {"model.w": torch.randn(5, 3, generator=g), "model.b": torch.arange(4, dtype=torch.int64)}
    torch.save({"state_dict": tensors, "epoch": 3}, folder / "zip.pt")
    torch.save(tensors, folder / "legacy.ckpt", _use_new_zipfile_serialization=False)
    for name in ("zip.pt", "legacy.ckpt"):
        raw = (folder / name).read_bytes()
        out.append(Base(name, folder / name, folder / name, raw, min(len(raw), 2048), {}))
    return out


# --- one variant ----------------------------------------------------------------------------------------
def _timeout(*_):
    raise TimeoutError(f"a read took over {SECONDS_PER_VARIANT} s")


def load_or_refuse(path) -> str:
    """'refused' or 'loaded'; anything else (another exception, a hang) propagates."""
    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.setitimer(signal.ITIMER_REAL, SECONDS_PER_VARIANT)
    try:
        try:
            checkpoint = open_checkpoint(path)
        except ModelFileError:
            return "refused"
        for key in checkpoint.keys():
            tensor = checkpoint.tensor(key)
            values = tensor.dequantize(torch.float32) if isinstance(tensor, QuantizedTensor) else tensor.clone()
            assert tuple(values.shape) == tuple(checkpoint.shape(key)), (key, values.shape, checkpoint.shape(key))
        return "loaded"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- mutations: each takes (base, rng) and returns the damaged bytes and a description ---------------------
def flip(base, rng):
    pos = rng.randrange(base.header_end)
    data = bytearray(base.data)
    data[pos] = rng.randrange(256) if rng.random() < 0.5 else data[pos] ^ (1 << rng.randrange(8))
    return bytes(data), f"byte {pos} set to {data[pos]}"


def insert(base, rng):
    pos, chunk = rng.randrange(base.header_end + 1), bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
    return base.data[:pos] + chunk + base.data[pos:], f"{chunk!r} inserted at {pos}"


def delete(base, rng):
    pos, n = rng.randrange(base.header_end), rng.randint(1, 4)
    return base.data[:pos] + base.data[pos + n:], f"{n} bytes deleted at {pos}"


def truncate(base, rng):
    cut = rng.randrange(len(base.data))
    return base.data[:cut], f"cut to {cut} bytes"


def length_field(base, rng):
    if base.positions:  # GGUF: a count, a string length, an offset, a dimension
        name = rng.choice(sorted(k for k in base.positions if k.split(":")[0] in
                                 ("tensor_count", "kv_count", "kv", "value", "name", "offset")))
        pos = base.positions[name] + (4 if name.startswith("value:") and rng.random() < 0.5 else 0)
        value = rng.choice(INTERESTING_COUNTS)
        return put_u64(base.data, pos, value), f"u64 at {name} (+{pos - base.positions[name]}) set to {value}"
    if base.target.suffix == ".safetensors":
        (length,) = struct.unpack_from("<Q", base.data)
        value = max(0, length + rng.choice([-9, -8, -1, 1, 7, 8, 2**20])) if rng.random() < 0.8 else rng.choice(
            INTERESTING_COUNTS)
        return struct.pack("<Q", value) + base.data[8:], f"header length {length} -> {value}"
    return truncate(base, rng)


def _json_value(rng):
    return rng.choice([None, True, 1.5, -1, 2**70, "F32", "", [], {}, [1, 2], [2.0], {"a": 1}, [[1]], "x" * 300])


def structured(base, rng):
    """A field rewritten in the format's own terms: a JSON entry (safetensors) or a GGUF field."""
    if base.json_header is not None:
        header = json.loads(json.dumps(base.json_header))
        key = rng.choice(sorted(header))
        entry = header[key]
        field = rng.choice(["dtype", "shape", "data_offsets", "entry", "drop", "swap", "duplicate", "metadata"])
        if field == "entry":
            header[key] = _json_value(rng)
        elif field == "drop" and isinstance(entry, dict):
            entry.pop(rng.choice(sorted(entry)))
        elif field == "swap":
            other = rng.choice(sorted(k for k in header if k != "__metadata__"))
            if key != "__metadata__":
                ours, theirs = entry["data_offsets"], header[other]["data_offsets"]
                entry["data_offsets"], header[other]["data_offsets"] = theirs, ours
        elif field == "metadata":
            header["__metadata__"] = rng.choice([_json_value(rng), {"k": _json_value(rng)}])
        elif field == "duplicate":
            text = json.dumps(header)
            return safetensors_bytes(text[:-1] + f', "{key}": ' + json.dumps(entry) + "}",
                                     base.data[base.header_end:]), f"{key!r} given twice"
        elif isinstance(entry, dict):
            current = entry.get(field)
            choices = [_json_value(rng)]
            if field == "dtype":
                choices += ["F16", "BF16", "I64", "U8", "F8_E4M3", "F64", "F4", "bogus"]
            elif field == "shape" and isinstance(current, list):
                choices += [current + [1], current[:-1], [d + rng.choice([-1, 1]) for d in current], current + [0]]
            elif field == "data_offsets" and isinstance(current, list):
                choices += [[current[0] + d, current[1] + d] for d in (-1, 1, 8)] + [[current[0], current[1] + 1]]
            entry[field] = rng.choice(choices)
        return safetensors_bytes(header, base.data[base.header_end:]), f"{key}: {field} rewritten"
    if base.gguf_builder is not None:
        names = [t.name for t in base.gguf_builder.tensors]
        name = rng.choice(names)
        kind = rng.choice(["type", "offset", "alignment", "dims", "value_type"])
        if kind == "type":
            value = rng.choice([int(t) for t in T] + [99, 2**32 - 1])
            return put_u32(base.data, base.positions[f"type:{name}"], value), f"{name}: type {value}"
        if kind == "offset":
            pos = base.positions[f"offset:{name}"]
            (offset,) = struct.unpack_from("<Q", base.data, pos)
            value = (offset + rng.choice([-32, -1, 1, 31, 32, 64, 2**40])) % 2**64
            return put_u64(base.data, pos, value), f"{name}: offset {offset} -> {value}"
        if kind == "alignment" and "value:general.alignment" in base.positions:
            value = rng.choice([0, 1, 3, 8, 16, 64, 2**31])
            return put_u32(base.data, base.positions["value:general.alignment"], value), f"alignment {value}"
        if kind == "value_type":
            key = rng.choice([k for k in base.positions if k.startswith("kv:")])[3:]
            value = rng.randrange(15)
            return put_u32(base.data, base.positions[f"value:{key}"] - 4, value), f"{key}: value type {value}"
        pos = base.positions[f"type:{name}"] - 8  # the last dimension
        value = rng.choice(INTERESTING_COUNTS)
        return put_u64(base.data, pos, value), f"{name}: last dimension {value}"
    return flip(base, rng)


MUTATIONS = [flip, flip, insert, delete, truncate, length_field, structured, structured]


def test_bases_are_valid(bases):
    assert [load_or_refuse(b.path) for b in bases] == ["loaded"] * len(bases)


def test_damaged_files_are_refused_or_read_whole(bases, tmp_path):
    failures, outcomes = [], {"refused": 0, "loaded": 0}
    for index, base in enumerate(bases):
        for variant in range(VARIANTS_PER_BASE):
            seed = index * 1000 + variant
            rng = random.Random(seed)
            mutation = MUTATIONS[variant % len(MUTATIONS)]
            data, description = mutation(base, rng)
            base.target.write_bytes(data)
            try:
                outcomes[load_or_refuse(base.path)] += 1
            except Exception as error:  # noqa: BLE001 - every other error is what this test looks for
                failures.append(f"{base.name}, seed {seed}, {mutation.__name__}: {description}: "
                                f"{type(error).__name__}: {str(error)[:300]}")
            finally:
                base.target.write_bytes(base.data)
    print(f"{sum(outcomes.values())} variants: {outcomes}")
    assert not failures, "\n".join(failures)
    assert outcomes["refused"] > outcomes["loaded"] > 0  # the mutations do damage, and some are harmless


def _must_refuse(base: Base) -> list[tuple[str, bytes]]:
    """Damage the structure rules out, to every tensor of a GGUF or safetensors base."""
    out = []
    if base.gguf_builder is not None:
        alignment = 32
        for t in base.gguf_builder.tensors:
            count = int(np.prod(t.dims))
            for other in T:
                values, size = gguf.GGML_QUANT_SIZES[other]
                if other == t.qtype or t.dims[0] % values:
                    continue
                new_bytes = count // values * size
                old_padded, new_padded = -(-len(t.data) // alignment), -(-new_bytes // alignment)
                if old_padded != new_padded:  # a change inside the padding is not visible in the header
                    retyped = put_u32(base.data, base.positions[f"type:{t.name}"], other)
                    out.append((f"{t.name} as {other.name}", retyped))
            pos = base.positions[f"offset:{t.name}"]
            (offset,) = struct.unpack_from("<Q", base.data, pos)
            for change in (-1, 1, 32, len(base.data)):
                if offset + change >= 0:
                    out.append((f"{t.name} offset {change:+}", put_u64(base.data, pos, offset + change)))
        start = base.positions["data"]
        out.append(("a byte inserted before the data", base.data[:start] + b"\0" + base.data[start:]))
        if "value:general.alignment" in base.positions:
            for value in (16, 64, 3):
                out.append((f"alignment {value}", put_u32(base.data, base.positions["value:general.alignment"], value)))
        last = base.gguf_builder.tensors[-1]
        unaligned_end = base.positions[f"data:{last.name}"] + len(last.data)
        out += [(f"cut to {n}", base.data[:n]) for n in range(0, len(base.data), 7) if n != unaligned_end]
    elif base.json_header is not None and base.target.suffix == ".safetensors":
        (length,) = struct.unpack_from("<Q", base.data)
        for delta in (-1, 1, -8, 8):
            out.append((f"header length {delta:+}", struct.pack("<Q", length + delta) + base.data[8:]))
        for key, entry in base.json_header.items():
            if key == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            for change in ([begin - 1, end - 1], [begin + 1, end + 1], [begin, end + 1], [begin + 1, end]):
                if min(change) >= 0:
                    header = json.loads(json.dumps(base.json_header))
                    header[key]["data_offsets"] = change
                    out.append((f"{key} at {change}", safetensors_bytes(header, base.data[base.header_end:])))
        out += [(f"cut to {n}", base.data[:n]) for n in range(0, len(base.data), 5)]
        out.append(("data longer", base.data + b"\0"))
    return out


def test_structural_damage_is_always_refused(bases):
    wrongly_loaded, checked = [], 0
    for base in bases:
        for description, data in _must_refuse(base):
            base.target.write_bytes(data)
            try:
                if load_or_refuse(base.path) != "refused":
                    wrongly_loaded.append(f"{base.name}: {description}")
            finally:
                base.target.write_bytes(base.data)
            checked += 1
    assert checked > 300
    assert not wrongly_loaded, "\n".join(wrongly_loaded)
