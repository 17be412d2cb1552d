"""Damaged model files are refused with a ModelFileError naming the file, never loaded quietly and never
failing with a raw Python error: safetensors headers, GGUF headers, sharded indexes, .pt files, FP8 scales
and quantization records. Each case was found loading quietly, or failing with an internal error, before
the readers checked it."""

from __future__ import annotations

import json
import signal
import struct
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from comfyui_mmdit.loaders.checkpoints import open_checkpoint
from comfyui_mmdit.loaders.errors import ModelFileError
from comfyui_mmdit.loaders.quant.tensor import QuantizedTensor

from file_builders import (
    ARRAY, FLOAT32, STRING, UINT8, UINT32, UINT64, GGUFBuilder, gguf_tensor, put_u32, put_u64, safetensors_bytes,
    tensors_layout,
)

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType


@pytest.fixture(autouse=True)
def hang_guard():
    """A reader that loops or allocates without bound fails the test instead of stalling the run."""
    def timeout(*_):
        raise TimeoutError("reading the file took over 20 s")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def refused(path, *fragments, damaged=None) -> str:
    """Opening `path` raises a ModelFileError naming the damaged file (`path` unless another is given) and
    containing each fragment; its message."""
    with pytest.raises(ModelFileError) as info:
        open_checkpoint(path)
    message = str(info.value)
    assert f"{(damaged or path).name}:" in message and str(damaged or path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def read_all(path) -> dict:
    checkpoint = open_checkpoint(path)
    out = {}
    for key in checkpoint.keys():
        tensor = checkpoint.tensor(key)
        out[key] = tensor.dequantize(torch.float32) if isinstance(tensor, QuantizedTensor) else tensor
        assert tuple(out[key].shape) == tuple(checkpoint.shape(key))
    return out


# --- safetensors ----------------------------------------------------------------------------------------
TENSORS = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)}


def write(tmp_path, name, header, data, **kwargs):
    path = tmp_path / name
    path.write_bytes(safetensors_bytes(header, data, **kwargs))
    return path


@pytest.fixture
def layout():
    return tensors_layout(TENSORS)  # a: F32 [2, 3] at [0, 24], b: BF16 [4] at [24, 32]


def test_the_builder_writes_what_safetensors_reads(tmp_path, layout):
    header, data = layout
    path = write(tmp_path, "good.safetensors", header, data)
    from safetensors.torch import load_file

    loaded = load_file(str(path))
    assert all(torch.equal(loaded[k], TENSORS[k]) for k in TENSORS)
    assert all(torch.equal(v, TENSORS[k]) for k, v in read_all(path).items())


def test_header_length_one_byte_short(tmp_path, layout):
    """The JSON still parses (the trailing padding space is cut), and every tensor would be read one byte off."""
    header, data = layout
    raw = json.dumps(header, separators=(",", ":"))
    assert len(raw) % 8, "the header needs padding for this case"
    path = write(tmp_path, "short_header.safetensors", header, data, header_len_delta=-1)
    refused(path, "(1 byte extra)")


@pytest.mark.parametrize("offsets, fragment", [
    ({"a": [0, 24], "b": [16, 24]}, "inside tensor 'a'"),  # overlap
    ({"a": [0, 24], "b": [28, 36]}, "leaving 4 bytes unused after tensor 'a'"),  # gap
    ({"a": [8, 32], "b": [32, 40]}, "leaving 8 bytes unused after the header"),  # data not starting at 0
    ({"a": [0, 24], "b": [0, 8]}, "inside tensor 'b'"),  # two tensors on the same bytes
], ids=["overlap", "gap", "not-from-0", "same-bytes"])
def test_tensors_must_tile_the_data_section(tmp_path, layout, offsets, fragment):
    header, _ = layout
    for key, value in offsets.items():
        header[key]["data_offsets"] = value
    data = bytes(max(end for _, end in offsets.values()))
    refused(write(tmp_path, "tiling.safetensors", header, data), "overlapping or misplaced tensors", fragment)


def test_data_section_longer_or_shorter_than_declared(tmp_path, layout):
    header, data = layout
    refused(write(tmp_path, "longer.safetensors", header, data + bytes(5)), "5 bytes extra")
    refused(write(tmp_path, "shorter.safetensors", header, data[:-3]), "truncated", "3 bytes missing")


def test_duplicate_key(tmp_path, layout):
    header, data = layout
    text = json.dumps(header, separators=(",", ":"))
    entry_b = json.dumps(header["b"], separators=(",", ":"))
    text = text[:-1] + ',"a":' + entry_b + "}"  # "a" again, now pointing at b's bytes: the second would win
    refused(write(tmp_path, "dup.safetensors", text, data), "a key is given twice", "'a'")


@pytest.mark.parametrize("entry, fragment", [
    ({"dtype": "F32", "shape": "23", "data_offsets": [0, 24]}, "shape that is not a list"),
    ({"dtype": "F32", "shape": {"2": 3}, "data_offsets": [0, 24]}, "shape that is not a list"),
    ({"dtype": "F32", "shape": [2.0, 3], "data_offsets": [0, 24]}, "shape that is not a list"),
    ({"dtype": "F32", "shape": [True, 6], "data_offsets": [0, 24]}, "shape that is not a list"),
    ({"dtype": "F32", "shape": [-2, -3], "data_offsets": [0, 24]}, "shape that is not a list"),
    ({"dtype": ["F32"], "shape": [2, 3], "data_offsets": [0, 24]}, "dtype that is not a string"),
    ({"dtype": "F32", "shape": [2, 3], "data_offsets": [24]}, "data_offsets that are not two integers"),
    ({"dtype": "F32", "shape": [2, 3], "data_offsets": ["0", "24"]}, "data_offsets that are not two integers"),
    ({"dtype": "F32", "shape": [2, 3], "data_offsets": [24, 0]}, "data_offsets that are not two integers"),
    ({"dtype": "F32", "shape": [2, 3], "data_offsets": [-24, 0]}, "data_offsets that are not two integers"),
    ({"dtype": "F32", "shape": [2, 3]}, "has no data_offsets"),
    ([0, 24], "is not an object"),
    ("F32", "is not an object"),
    ({"dtype": "F32", "shape": [2**70], "data_offsets": [0, 2**72]}, "more data for tensor 'a' than the file holds"),
    ({"dtype": "F32", "shape": [2**62, 2**62, 0], "data_offsets": [0, 24]}, "inconsistent sizes"),
    ({"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 2**70]}, "inconsistent sizes"),
    ({"dtype": "F32", "shape": [3, 3], "data_offsets": [0, 24]}, "inconsistent sizes"),
], ids=lambda v: v if isinstance(v, str) and " " not in v else None)
def test_header_values_of_the_wrong_type_or_size(tmp_path, layout, entry, fragment):
    header, data = layout
    header["a"] = entry
    refused(write(tmp_path, "types.safetensors", header, data), fragment)


def test_messages_stay_short_whatever_the_file_holds(tmp_path, layout):
    header, data = layout
    header["k" * 100_000] = {"dtype": "F32", "shape": [[[[[1]]]]] * 10_000, "data_offsets": [0, 4]}
    message = refused(write(tmp_path, "long.safetensors", header, data), "shape that is not a list")
    assert len(message) < 1000, len(message)


@pytest.mark.parametrize("metadata", [{"k": 1}, {"k": ["v"]}, ["k", "v"], "k=v"])
def test_metadata_must_map_strings_to_strings(tmp_path, layout, metadata):
    header, data = layout
    header["__metadata__"] = metadata
    refused(write(tmp_path, "meta.safetensors", header, data), "__metadata__ is not an object of strings")


def test_absurd_nesting_unicode_and_start(tmp_path, layout):
    header, data = layout
    deep = '{"__metadata__":' + "[" * 100_000 + "]" * 100_000 + "}"
    refused(write(tmp_path, "deep.safetensors", deep, b""), "nested too deeply")
    text = json.dumps(header, separators=(",", ":")).encode()
    refused(write(tmp_path, "latin1.safetensors", text.replace(b'"b"', b'"\xe9"'), data), "not valid UTF-8")
    refused(write(tmp_path, "space.safetensors", b" " + text, data), "does not start with '{'")
    refused(write(tmp_path, "list.safetensors", b"[" + text + b"]", data), "does not start with '{'")
    refused(write(tmp_path, "nan.safetensors", text[:-1] + b',"__metadata__":{"k":NaN}}', data), "not valid JSON")
    refused(write(tmp_path, "digits.safetensors", text[:-1] + b',"c":' + b"9" * 5000 + b"}", data), "not valid JSON")


def test_zero_size_tensors_are_legal(tmp_path):
    """Empty byte ranges [x, x] anywhere, as ComfyUI's `scaled_fp8` marker (shape [0]) has."""
    tensors = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn), "a": TENSORS["a"],
               "empty": torch.empty(3, 0), "b": TENSORS["b"], "last": torch.empty(0, 2, dtype=torch.int64)}
    header, data = tensors_layout(tensors)
    path = write(tmp_path, "zeros.safetensors", header, data)
    from comfyui_mmdit.loaders.checkpoints import open_file

    checkpoint = open_file(path)
    assert checkpoint.keys() == list(tensors)
    for key, tensor in tensors.items():
        assert torch.equal(checkpoint.tensor(key).view(torch.uint8), tensor.view(torch.uint8))
        assert checkpoint.tensor(key).shape == tensor.shape
    save_file({k: v for k, v in tensors.items()}, str(tmp_path / "by_safetensors.safetensors"))
    assert open_file(tmp_path / "by_safetensors.safetensors").shape("scaled_fp8") == (0,)


# --- GGUF -----------------------------------------------------------------------------------------------
def _base_gguf() -> GGUFBuilder:
    rng = np.random.default_rng(0)
    return GGUFBuilder(
        kvs=[("general.architecture", STRING, "qwen_image"), ("general.alignment", UINT32, 32),
             ("some.floats", ARRAY, (FLOAT32, [0.5, 1.5])), ("some.strings", ARRAY, (STRING, ["x", "yz"]))],
        tensors=[gguf_tensor("norm.weight", rng.standard_normal(20).astype(np.float32), "F32"),  # 80 bytes
                 gguf_tensor("a.weight", rng.standard_normal((4, 64)).astype(np.float32), "Q8_0"),  # 272 bytes
                 gguf_tensor("b.weight", rng.standard_normal((2, 32)).astype(np.float32), "Q4_0")],  # 36 bytes
    )


@pytest.fixture
def good_gguf(tmp_path):
    builder = _base_gguf()
    data = builder.build()
    path = tmp_path / "good.gguf"
    path.write_bytes(data)
    return path, data, builder.positions


def test_the_builder_writes_what_gguf_writer_writes(tmp_path):
    builder = _base_gguf()
    writer = gguf.GGUFWriter(str(tmp_path / "writer.gguf"), arch="qwen_image")
    writer.add_uint32("general.alignment", 32)
    writer.add_array("some.floats", [0.5, 1.5])
    writer.add_array("some.strings", ["x", "yz"])
    for t in builder.tensors:
        raw = np.frombuffer(t.data, np.uint8)
        shape = tuple(reversed(t.dims))
        if t.qtype == T.F32:
            writer.add_tensor(t.name, raw.view(np.float32).reshape(shape))
        else:
            writer.add_tensor(t.name, raw.reshape(shape[0], -1), raw_dtype=T(t.qtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert (tmp_path / "writer.gguf").read_bytes() == builder.build()


def test_good_gguf_reads(good_gguf):
    path, _, _ = good_gguf
    tensors = read_all(path)
    assert tensors["a.weight"].shape == (4, 64) and tensors["norm.weight"].shape == (20,)
    checkpoint = open_checkpoint(path)
    assert checkpoint.metadata["some.strings"] == ["x", "yz"] and checkpoint.architecture == "qwen_image"


def test_gguf_reads_without_the_gguf_package(good_gguf, monkeypatch):
    """The package only lends block sizes; without it, the types the pack dequantizes are still known."""
    from comfyui_mmdit.loaders.formats import gguf as reader

    path, _, _ = good_gguf
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now raises ImportError
    reader.ggml_types.cache_clear()
    try:
        assert {k: v.shape for k, v in read_all(path).items()} == {
            "norm.weight": (20,), "a.weight": (4, 64), "b.weight": (2, 32)}
    finally:
        reader.ggml_types.cache_clear()


def _variant(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("tensor, new_type", [("a.weight", T.Q4_0), ("a.weight", T.F32), ("b.weight", T.Q8_0),
                                              ("norm.weight", T.F16), ("b.weight", T.F16)])
def test_gguf_tensor_type_changed(tmp_path, good_gguf, tensor, new_type):
    _, data, positions = good_gguf
    path = _variant(tmp_path, "retyped.gguf", put_u32(data, positions[f"type:{tensor}"], int(new_type)))
    refused(path)


@pytest.mark.parametrize("tensor, change", [("a.weight", 1), ("b.weight", 1), ("b.weight", -1),
                                            ("norm.weight", 32), ("b.weight", 10**6), ("b.weight", 2**63)])
def test_gguf_tensor_offset_changed(tmp_path, good_gguf, tensor, change):
    _, data, positions = good_gguf
    where = positions[f"offset:{tensor}"]
    (offset,) = struct.unpack_from("<Q", data, where)
    path = _variant(tmp_path, "offset.gguf", put_u64(data, where, (offset + change) % 2**64))
    refused(path)


def test_gguf_data_shifted_or_cut(tmp_path, good_gguf):
    _, data, positions = good_gguf
    start = positions["data"]
    refused(_variant(tmp_path, "shifted.gguf", data[:start] + b"\0" + data[start:]), "(1 byte extra)")
    refused(_variant(tmp_path, "extra.gguf", data + bytes(32)), "32 bytes extra")
    refused(_variant(tmp_path, "truncated.gguf", data[:-40]), "truncated")
    for cut in (3, 23, positions["value:some.strings"] + 5, positions["name:b.weight"] + 4, start - 1):
        refused(_variant(tmp_path, f"cut{cut}.gguf", data[:cut]))


@pytest.mark.parametrize("alignment", [16, 64, 3, 0])
def test_gguf_alignment_changed(tmp_path, good_gguf, alignment):
    _, data, positions = good_gguf
    refused(_variant(tmp_path, "aligned.gguf", put_u32(data, positions["value:general.alignment"], alignment)))


def test_gguf_alignment_of_another_type(tmp_path):
    builder = _base_gguf()
    builder.kvs[1] = ("general.alignment", UINT64, 32)
    refused(_variant(tmp_path, "align64.gguf", builder.build()), "general.alignment is not a power of two")


@pytest.mark.parametrize("field, value", [("value:some.strings", 2**28), ("value:some.floats", 2**28),
                                          ("value:some.strings", 2**64 - 1), ("kv_count", 2**40),
                                          ("tensor_count", 2**40)])
def test_gguf_corrupt_counts_are_refused_at_once(tmp_path, good_gguf, field, value):
    """Before: gguf's reader looped over (and allocated for) 2**28 items, minutes and gigabytes."""
    _, data, positions = good_gguf
    where = positions[field] + (4 if field.startswith("value:") else 0)  # arrays: item type, then count
    refused(_variant(tmp_path, "count.gguf", put_u64(data, where, value)), "runs past the end of the file")


def test_gguf_arrays_of_arrays(tmp_path):
    builder = _base_gguf()
    builder.kvs.append(("nested", ARRAY, (ARRAY, [(UINT8, [1, 2]), (STRING, ["a"])])))
    path = _variant(tmp_path, "nested.gguf", builder.build())
    assert open_checkpoint(path).metadata["nested"] == [[1, 2], ["a"]]
    data = builder.build()
    refused(_variant(tmp_path, "nested_count.gguf", put_u64(data, builder.positions["value:nested"] + 4, 2**28)),
            "runs past the end of the file")
    deep = (UINT8, [1])
    for _ in range(6):
        deep = (ARRAY, [deep])
    builder.kvs[-1] = ("nested", ARRAY, deep)
    refused(_variant(tmp_path, "deep.gguf", builder.build()), "nests arrays more than")


def test_gguf_names_keys_and_value_types(tmp_path, good_gguf):
    _, data, positions = good_gguf
    builder = _base_gguf()
    builder.tensors[1].name = "norm.weight"
    refused(_variant(tmp_path, "dup_tensor.gguf", builder.build()), "tensor name 'norm.weight' is given twice")
    builder = _base_gguf()
    builder.kvs.append(("some.floats", UINT8, 1))
    refused(_variant(tmp_path, "dup_key.gguf", builder.build()), "'some.floats' is given twice")
    refused(_variant(tmp_path, "vtype.gguf", put_u32(data, positions["value:some.floats"] - 4, 13)),
            "value type unknown to GGUF")
    name_at = positions["name:a.weight"] + 8
    refused(_variant(tmp_path, "utf8.gguf", data[:name_at] + b"\xff" + data[name_at + 1:]), "not valid UTF-8")
    refused(_variant(tmp_path, "version.gguf", put_u32(data, 4, 1)), "version 1")
    refused(_variant(tmp_path, "magic.gguf", b"GGUG" + data[4:]), "does not start with 'GGUF'")
    refused(_variant(tmp_path, "unknown_type.gguf", put_u32(data, positions["type:a.weight"], 99)),
            "tensor type unknown")


@pytest.mark.parametrize("shape, fragment", [
    ([64, 5], "does not hold as many values"), ([256, 0], "not a list of positive integers"),
    ([-4, -64], "not a list of positive integers"), ("4x64", "not a list of positive integers"),
    ([True, 256], "not a list of positive integers"), ([4.0, 64.0], "not a list of positive integers"),
])
def test_gguf_original_shape_must_fit_the_data(tmp_path, shape, fragment):
    builder = _base_gguf()
    if isinstance(shape, str):
        builder.kvs.append(("comfy.gguf.orig_shape.a.weight", STRING, shape))
    elif any(isinstance(v, float) for v in shape):
        builder.kvs.append(("comfy.gguf.orig_shape.a.weight", ARRAY, (FLOAT32, shape)))
    else:
        item = 7 if any(isinstance(v, bool) for v in shape) else 5  # BOOL, INT32 (what ComfyUI-GGUF writes)
        builder.kvs.append(("comfy.gguf.orig_shape.a.weight", ARRAY, (item, shape)))
    refused(_variant(tmp_path, "orig.gguf", builder.build()), fragment)
    builder.kvs[-1] = ("comfy.gguf.orig_shape.a.weight", ARRAY, (5, [2, 2, 64]))
    assert open_checkpoint(_variant(tmp_path, "orig_ok.gguf", builder.build())).shape("a.weight") == (2, 2, 64)


# --- sharded indexes, .pt files ------------------------------------------------------------------------
@pytest.fixture
def sharded(tmp_path):
    folder = tmp_path / "sharded"
    folder.mkdir()
    save_file({"a": TENSORS["a"]}, str(folder / "one.safetensors"))
    save_file({"b": TENSORS["b"]}, str(folder / "two.safetensors"))
    index = folder / "model.safetensors.index.json"
    return folder, index


@pytest.mark.parametrize("content, fragment", [
    ({"weight_map": [["a", "one.safetensors"]]}, "weight_map is not an object"),
    ({"weight_map": {"a": 1}}, "weight_map is not an object"),
    ({"weight_map": {"a": None}}, "weight_map is not an object"),
    ({"weight_map": {"a": "../outside.safetensors"}}, "names a shard outside its folder"),
    ({"weight_map": {"a": "/tmp/outside.safetensors"}}, "names a shard outside its folder"),
    ({"weight_map": {"a": "sub/../../outside.safetensors"}}, "names a shard outside its folder"),
    ({"weight_map": {"a": "one.safetensors"}, "metadata": [1]}, "metadata is not an object"),
    ([1, 2], "not a JSON object"),
    ('{"weight_map": {"a": "one.safetensors", "a": "two.safetensors"}}', "given twice"),
    ('{"weight_map": ' + "[" * 50_000 + "]" * 50_000 + "}", "nested too deeply"),
])
def test_broken_sharded_index(sharded, content, fragment):
    folder, index = sharded
    save_file({"a": TENSORS["a"]}, str(folder.parent / "outside.safetensors"))
    index.write_text(content if isinstance(content, str) else json.dumps(content))
    refused(index, "not a valid sharded-checkpoint index", fragment)


def test_good_sharded_index(sharded):
    folder, index = sharded
    index.write_text(json.dumps({"metadata": {"total_size": 32},
                                 "weight_map": {"a": "one.safetensors", "b": "two.safetensors"}}))
    assert {k: v.shape for k, v in read_all(folder).items()} == {"a": (2, 3), "b": (4,)}


@pytest.mark.parametrize("content", [b"", b"\x80", b"PK\x03\x04", b"\x80\x02}q\x00."],
                         ids=["empty", "bare-proto", "zip-magic", "empty-dict"])
def test_unreadable_or_empty_pt(tmp_path, content):
    """A 0-byte .pt made torch raise an error with an empty message, which the reader's own handler then
    failed on (IndexError)."""
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    refused(path)


def test_pt_with_odd_keys_or_tensors(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({1: torch.zeros(2), "b": torch.zeros(2)}, path)
    refused(path, "names tensors with something other than strings")
    torch.save({"a": torch.zeros(3, 3).to_sparse()}, path)
    refused(path, "not plain dense tensors")


def test_folder_in_place_of_a_weights_file(tmp_path):
    (tmp_path / "models" / "inner.safetensors").mkdir(parents=True)
    refused(tmp_path / "models", "could not be read", "IsADirectoryError")


# --- FP8 scales and quantization records ----------------------------------------------------------------
def _scaled_fp8(tmp_path, name="scaled.safetensors", **changes):
    """A ComfyUI-style scaled FP8 file: marker, two FP8 weights with scale_weight, bf16 biases."""
    g = torch.Generator().manual_seed(0)
    tensors = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for layer, (rows, cols) in {"l1": (8, 4), "l2": (3, 8)}.items():
        tensors[f"{layer}.weight"] = torch.randn(rows, cols, generator=g).to(torch.float8_e4m3fn)
        tensors[f"{layer}.bias"] = torch.randn(rows, generator=g).to(torch.bfloat16)
        tensors[f"{layer}.scale_weight"] = torch.tensor(0.5)
    tensors.update(changes)
    tensors = {k: v for k, v in tensors.items() if v is not None}
    save_file(tensors, str(tmp_path / name))
    return tmp_path / name


@pytest.mark.parametrize("scale", [torch.ones(3), torch.ones(8, 2), torch.ones(1, 8), torch.ones(4)])
def test_scale_of_the_wrong_shape(tmp_path, scale):
    """Before: loaded, and failed only at forward ("The size of tensor a (64) must match ... (3)")."""
    refused(_scaled_fp8(tmp_path, **{"l1.scale_weight": scale}), "scale of the wrong shape for l1.weight",
            "one value, or one per output row (8)")


def test_scales_of_the_right_shapes(tmp_path):
    rows = torch.linspace(0.5, 2.0, 8)
    path = _scaled_fp8(tmp_path, **{"l1.scale_weight": rows.reshape(8, 1), "l2.scale_weight": torch.ones(1)})
    checkpoint = open_checkpoint(path)
    weight = checkpoint.tensor("l1.weight")
    assert torch.equal(weight.dequantize(torch.float32), weight.raw().float() * rows[:, None])
    assert checkpoint.tensor("l2.weight").scale.shape == ()


def test_scale_beside_a_weight_that_is_not_fp8(tmp_path):
    refused(_scaled_fp8(tmp_path, **{"l1.weight": torch.zeros(8, 4, dtype=torch.bfloat16)}),
            "has a scale for l1.weight, which is stored as bfloat16, not FP8")


def _record(value) -> torch.Tensor:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return torch.tensor(list(raw), dtype=torch.uint8)


@pytest.mark.parametrize("record", [["float8_e4m3fn"], "float8_e4m3fn", {"format": 8}, {"fmt": "float8_e4m3fn"},
                                    b"\xff\xfe", b"{" * 3000 + b"}" * 1000, None])
def test_broken_comfy_quant_record(tmp_path, record):
    changes = {"l1.comfy_quant": _record(record) if record is not None else torch.zeros(2, 2, dtype=torch.uint8),
               "l1.weight_scale": torch.tensor(0.5), "l1.scale_weight": None}
    refused(_scaled_fp8(tmp_path, **changes), "unreadable quantization record 'l1.comfy_quant'")


def test_comfy_quant_record_without_its_weight(tmp_path):
    refused(_scaled_fp8(tmp_path, **{"l9.comfy_quant": _record({"format": "float8_e4m3fn"})}),
            "scales for 1 weights it does not contain", "l9.weight")


def test_official_map_scale_of_the_wrong_shape(tmp_path):
    weights = {"l1.weight": torch.randn(8, 4).to(torch.float8_e4m3fn), "l1.bias": torch.zeros(8)}
    torch.save(weights, tmp_path / "release.pt")
    for bad in (torch.ones(8), torch.ones(2, 1), torch.tensor(3)):
        torch.save({"l1": bad}, tmp_path / "release_map.pt")
        refused(tmp_path / "release.pt", "scale of the wrong kind for layer l1", damaged=tmp_path / "release_map.pt")
    torch.save({"l1": torch.tensor(0.25)}, tmp_path / "release_map.pt")
    weight = open_checkpoint(tmp_path / "release.pt").tensor("l1.weight")
    assert torch.equal(weight.dequantize(torch.float32), weights["l1.weight"].float() * 0.25)
