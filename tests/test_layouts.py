"""Key layouts (loaders/layouts): the generic machinery, HunyuanImage 2.1's four layouts checked against the
published manifests and, entry by entry, against the reference mappings, quantized tensors under slicing
and stacking, and the llama.cpp text-encoder names."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from comfyui_mmdit.loaders.checkpoints import open_checkpoint
from comfyui_mmdit.loaders.errors import ModelFileError
from comfyui_mmdit.loaders.layouts import DIFFUSION_MODEL_LAYOUTS, hunyuan_image, llama_cpp
from comfyui_mmdit.loaders.layouts.base import (Concat, Layout, LayoutStateDict, Rows, SwapHalves, Take, fuse,
                                                plan_shapes, rename, split, swap)
from comfyui_mmdit.loaders.layouts.tensor_ops import cat_rows, reshape, rows, swap_halves
from comfyui_mmdit.loaders.quant.requant import quantize_fp8_rows, quantize_q8_0
from comfyui_mmdit.loaders.quant.tensor import FP8_SCALED, QuantizedTensor, is_quantized
from helpers import manifest, manifest_shapes

VARIANTS = ("dit", "distilled_dit", "refiner_dit")
LAYOUTS = ("comfyui", "fused_original", "tencent", "diffusers")
# The diffusers conversion drops the refiner's MeanFlow embedder (reference README, caveat 4).
DROPPED = {("refiner_dit", "diffusers"): ("time_r_in.",)}


def _network_shapes(variant: str, layout: str) -> dict:
    expected = manifest_shapes(f"hunyuanimage21_{variant}.comfyui")
    dropped = DROPPED.get((variant, layout), ())
    return {k: v for k, v in expected.items() if not k.startswith(dropped)}


# --- the generic machinery ---------------------------------------------------------------------------------
def test_templates_rules_and_sources():
    layout = Layout("toy", (
        *fuse("blocks.{i}.qkv.{p}", "blocks.{i}.q.{p}", "blocks.{i}.k.{p}", "blocks.{i}.v.{p}"),
        *rename("blocks.{i}.{s}_norm.weight", "blocks.{i}.norm_{s}.scale"),
        *swap("out.{p}", "final.{p}"),
        *split("both.{p}", ("first.{p}", "second.{p}"), (1, 3)),
    ))
    shapes = {"blocks.0.q.weight": (4, 8), "blocks.0.k.weight": (4, 8), "blocks.0.v.weight": (4, 8),
              "blocks.0.img_norm.weight": (2,), "out.bias": (6,), "both.weight": (8, 3), "kept.weight": (5,)}
    plan = layout.plan(shapes)
    assert plan["blocks.0.qkv.weight"] == Concat((Take("blocks.0.q.weight"), Take("blocks.0.k.weight"),
                                                  Take("blocks.0.v.weight")))
    assert plan["blocks.0.norm_img.scale"] == Take("blocks.0.img_norm.weight")
    assert plan["final.bias"] == SwapHalves(Take("out.bias"))
    assert plan["first.weight"] == Rows(Take("both.weight"), 0, 2)
    assert plan["second.weight"] == Rows(Take("both.weight"), 2, 8)
    assert plan["kept.weight"] == Take("kept.weight")  # no rule: the name is kept
    assert plan_shapes(plan, shapes) == {"blocks.0.qkv.weight": (12, 8), "blocks.0.norm_img.scale": (2,),
                                         "final.bias": (6,), "first.weight": (2, 3), "second.weight": (6, 3),
                                         "kept.weight": (5,)}

    g = torch.Generator().manual_seed(0)
    tensors = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    state = LayoutStateDict(plan, plan_shapes(plan, shapes), tensors.__getitem__)
    assert set(state) == set(plan) and len(state) == len(plan)
    assert torch.equal(state["blocks.0.qkv.weight"], torch.cat([tensors[f"blocks.0.{x}.weight"] for x in "qkv"]))
    assert torch.equal(state["final.bias"], torch.cat([tensors["out.bias"][3:], tensors["out.bias"][:3]]))
    second = state["second.weight"]
    assert torch.equal(second, tensors["both.weight"][2:])
    assert second.untyped_storage().data_ptr() == tensors["both.weight"].untyped_storage().data_ptr()  # a view


def test_a_field_named_twice_must_repeat_the_same_segment():
    layout = Layout("toy", rename("{a}.{a}.{p}", "same.{a}.{p}"))
    assert layout.plan({"x.x.weight": (1,), "x.y.weight": (1,)}) == {"same.x.weight": Take("x.x.weight"),
                                                                     "x.y.weight": Take("x.y.weight")}


def test_missing_parts_clashes_and_misfits_are_refused_naming_the_tensors():
    layout = Layout("toy", fuse("b.{i}.qkv.{p}", "b.{i}.q.{p}", "b.{i}.k.{p}", "b.{i}.v.{p}"))
    with pytest.raises(ModelFileError) as info:
        layout.plan({"b.0.q.weight": (4, 8), "b.0.k.weight": (4, 8), "b.1.q.weight": (4, 8)}, "model.safetensors")
    message = str(info.value)
    assert "2 tensors split into parts, with parts missing" in message
    assert "b.0.k.weight, b.0.q.weight without b.0.v.weight" in message
    assert "b.1.q.weight without b.1.k.weight, b.1.v.weight" in message and "every part of b.0.qkv.weight" in message

    both = {"b.0.q.weight": (4, 8), "b.0.k.weight": (4, 8), "b.0.v.weight": (4, 8), "b.0.qkv.weight": (12, 8)}
    with pytest.raises(ModelFileError, match="map to the same name 'b.0.qkv.weight'"):
        layout.plan(both)

    misfit = {"b.0.q.weight": (4, 8), "b.0.k.weight": (4, 8), "b.0.v.weight": (4, 7)}
    with pytest.raises(ModelFileError, match="parts of different widths cannot be stacked: b.0.q.weight"):
        plan_shapes(layout.plan(misfit), misfit)
    with pytest.raises(ModelFileError, match="has no two equal halves"):
        plan_shapes({"x": SwapHalves(Take("y"))}, {"y": (5, 2)})
    with pytest.raises(ModelFileError, match="do not divide into 1/1 parts"):
        Layout("toy", split("w", ("a", "b"))).plan({"w": (5, 2)})
    with pytest.raises(ModelFileError, match="cannot be read as"):
        from comfyui_mmdit.loaders.layouts.base import Reshape
        plan_shapes({"x": Reshape(Take("y"), (3, 3))}, {"y": (4, 2)})


# --- HunyuanImage 2.1: every layout gives the network's names and shapes -------------------------------------
def test_the_layout_table_knows_every_family_layout():
    assert set(DIFFUSION_MODEL_LAYOUTS["hunyuan_image"]) == set(LAYOUTS)
    assert set(DIFFUSION_MODEL_LAYOUTS["qwen_image"]) == {"comfyui"}
    qwen = manifest_shapes("qwen_image_transformer.comfyui")
    assert plan_shapes(DIFFUSION_MODEL_LAYOUTS["qwen_image"]["comfyui"].plan(qwen), qwen) == qwen


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_published_layout_becomes_the_comfyui_layout(variant, layout):
    file = manifest_shapes(f"hunyuanimage21_{variant}.{layout}")
    plan = hunyuan_image.LAYOUTS[layout].plan(file)
    assert plan_shapes(plan, file) == _network_shapes(variant, layout)
    used = [k for source in plan.values() for k in source.keys()]
    assert sorted(used) == sorted(file)  # every file tensor read exactly once


# --- ... and reproduces every entry of the reference mappings ------------------------------------------------
def placements(plan, shapes) -> dict:
    """{file name: (network name, op, rows)}: where each file tensor goes, in the mapping files' terms
    (rename, slice_rows with its rows in the network tensor, swap_halves)."""
    out = {}
    for name, source in plan.items():
        if isinstance(source, Take):
            out[source.key] = (name, "rename", None)
        elif isinstance(source, SwapHalves):
            out[source.source.key] = (name, "swap_halves", None)
        else:
            assert isinstance(source, Concat), source
            start = 0
            for part in source.parts:
                stop = start + shapes[part.key][0]
                out[part.key] = (name, "slice_rows", [start, stop])
                start = stop
    return out


def _placements(variant, layout):
    file = manifest_shapes(f"hunyuanimage21_{variant}.{layout}")
    return placements(hunyuan_image.LAYOUTS[layout].plan(file), file)


def _entries(variant, name):
    return manifest(f"mapping.hunyuanimage21_{variant}.{name}")["mapping"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_rules_reproduce_every_mapping_entry(variant):
    fused, tencent, diffusers = (_placements(variant, x) for x in ("fused_original", "tencent", "diffusers"))

    # fused_original -> comfyui: ComfyUI's process_unet_state_dict, pure renames
    renames = _entries(variant, "fused_original_to_comfyui")
    assert {e["src"]: (e["dst"], e["op"], None) for e in renames} == fused
    to_comfyui = {e["src"]: e["dst"] for e in renames}

    # fused_original -> tencent (the official split): each tencent tensor is a row range of a fused one
    expected = {e["dst"]: (to_comfyui[e["src"]], e["op"], e.get("src_rows")) for e in
                _entries(variant, "fused_original_to_tencent")}
    assert expected == tencent

    # comfyui -> diffusers (composed and traced through the diffusers script)
    expected = {e["dst"]: (e["src"], e["op"], e.get("src_rows")) for e in _entries(variant, "comfyui_to_diffusers")}
    assert expected == diffusers

    # tencent -> diffusers (traced through the diffusers script): our two plans must agree with it
    entries = _entries(variant, "tencent_to_diffusers")
    assert {e["dst"] for e in entries} == set(diffusers)
    for entry in entries:
        network, op_d, rows_d = diffusers[entry["dst"]]
        network_t, op_t, rows_t = tencent[entry["src"]]
        assert network == network_t, entry
        if op_t == "rename":  # the tencent tensor is the whole network tensor: diffusers' op is the mapping's
            assert (entry["op"], entry.get("src_rows")) == (op_d, rows_d), entry
        else:  # both are the same part of it
            assert (op_d, rows_d, entry["op"]) == ("slice_rows", rows_t, "rename"), entry


# --- quantized tensors under rows / cat_rows / swap_halves / reshape ----------------------------------------
def _fp8(weight, scale):
    data = (weight / scale).to(torch.float8_e4m3fn)
    return QuantizedTensor(data, FP8_SCALED, weight.shape, scale=torch.tensor(scale, dtype=torch.float32))


def test_fp8_parts_with_their_own_scales_stack_exactly_and_stay_one_byte():
    torch.manual_seed(0)
    q, k, v = (_fp8(torch.randn(4, 32), s) for s in (0.01, 0.02, 0.005))
    fused = cat_rows([q, k, v])
    assert is_quantized(fused) and fused.raw().dtype == torch.float8_e4m3fn and fused.raw().shape == (12, 32)
    assert fused.scale.shape == (12,)  # one scale per row, since the parts' scales differ
    assert torch.equal(fused.dequantize(), torch.cat([t.dequantize() for t in (q, k, v)]))
    assert torch.equal(rows(fused, 4, 8).dequantize(), k.dequantize())
    assert rows(fused, 4, 8).raw().data_ptr() == fused.raw()[4:8].data_ptr()  # a view

    same = cat_rows([_fp8(torch.randn(4, 32), 0.01), _fp8(torch.randn(2, 32), 0.01)])
    assert same.scale.ndim == 0  # equal per-tensor scales stay one scalar
    unscaled = QuantizedTensor(torch.randn(2, 32).to(torch.float8_e4m3fn), FP8_SCALED, (2, 32))
    mixed = cat_rows([q, unscaled])
    assert torch.equal(mixed.dequantize(), torch.cat([q.dequantize(), unscaled.dequantize()]))
    assert cat_rows([unscaled, unscaled]).scale is None

    rowwise = quantize_fp8_rows(torch.randn(6, 32))
    swapped = swap_halves(rowwise)
    assert is_quantized(swapped)
    assert torch.equal(swapped.dequantize(), torch.cat([rowwise.dequantize()[3:], rowwise.dequantize()[:3]]))

    plain = torch.randn(3, 32, dtype=torch.bfloat16)
    stacked = cat_rows([q, plain])  # FP8 beside a plain tensor: dequantized to the plain dtype, exactly
    assert not is_quantized(stacked) and stacked.dtype == torch.bfloat16
    assert torch.equal(stacked, torch.cat([q.dequantize(torch.bfloat16), plain]))


def test_gguf_rows_are_byte_ranges_when_they_hold_whole_blocks():
    torch.manual_seed(0)
    weight = quantize_q8_0(torch.randn(6, 64))
    expected = weight.dequantize()
    part = rows(weight, 2, 5)
    assert is_quantized(part) and part.raw().numel() == 3 * 2 * 34  # 3 rows of two 34-byte blocks
    assert torch.equal(part.dequantize(), expected[2:5])
    other = quantize_q8_0(torch.randn(2, 64))
    fused = cat_rows([weight, other])
    assert is_quantized(fused) and fused.qtype == weight.qtype
    assert torch.equal(fused.dequantize(), torch.cat([expected, other.dequantize()]))
    assert torch.equal(swap_halves(weight).dequantize(), torch.cat([expected[3:], expected[:3]]))
    assert torch.equal(reshape(weight, (3, 128)).dequantize(), expected.reshape(3, 128))

    bias = quantize_q8_0(torch.randn(64))  # 1-D: dim 0 runs inside the blocks
    assert is_quantized(rows(bias, 32, 64))
    cut = rows(bias, 0, 16)  # mid-block: that tensor is dequantized
    assert not is_quantized(cut) and torch.equal(cut, bias.dequantize()[:16])

    from comfyui_mmdit.loaders.gguf_dequant import Q4_0
    q4 = QuantizedTensor(torch.from_numpy(gguf.quants.quantize(np.random.default_rng(0).standard_normal((2, 64))
                                                               .astype(np.float32), gguf.GGMLQuantizationType.Q4_0)
                                          .reshape(-1).copy()), "gguf", (2, 64), qtype=Q4_0)
    mixed = cat_rows([weight, q4])  # two GGUF types: dequantized, exactly
    assert not is_quantized(mixed) and mixed.dtype == torch.float32
    assert torch.equal(mixed, torch.cat([expected, q4.dequantize()]))


def test_reading_a_hunyuan_tencent_file_fuses_qkv_exactly(tmp_path):
    """The official split layout on a small real file: the fused tensors equal the parts, row for row."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1)
    file = {f"double_blocks.0.img_attn_{x}.weight": torch.randn(8, 8, generator=g) for x in "qkv"}
    file |= {f"single_blocks.0.linear1_{x}.bias": torch.randn(n, generator=g) for x, n in
             (("q", 8), ("k", 8), ("v", 8), ("mlp", 32))}
    file["single_blocks.0.linear2.fc.weight"] = torch.randn(8, 40, generator=g)
    path = tmp_path / "split.safetensors"
    save_file(file, str(path))
    checkpoint = open_checkpoint(path)
    plan = hunyuan_image.TENCENT.plan(checkpoint.shapes())
    state = LayoutStateDict(plan, plan_shapes(plan, checkpoint.shapes()), checkpoint.tensor)
    assert state.shapes == {"double_blocks.0.img_attn.qkv.weight": (24, 8), "single_blocks.0.linear1.bias": (56,),
                            "single_blocks.0.linear2.weight": (8, 40)}
    assert torch.equal(state["double_blocks.0.img_attn.qkv.weight"],
                       torch.cat([file[f"double_blocks.0.img_attn_{x}.weight"] for x in "qkv"]))
    assert torch.equal(state["single_blocks.0.linear1.bias"],
                       torch.cat([file[f"single_blocks.0.linear1_{x}.bias"] for x in ("q", "k", "v", "mlp")]))
    assert torch.equal(state["single_blocks.0.linear2.weight"], file["single_blocks.0.linear2.fc.weight"])


# --- llama.cpp names (text encoders) -------------------------------------------------------------------------
def test_llama_cpp_names():
    names = llama_cpp.transformers_names(["token_embd.weight", "blk.3.attn_q.bias", "blk.3.ffn_down.weight",
                                          "output_norm.weight", "output.weight", "rope_freqs.weight"], "qwen2vl")
    assert names == {"token_embd.weight": "model.embed_tokens.weight",
                     "blk.3.attn_q.bias": "model.layers.3.self_attn.q_proj.bias",
                     "blk.3.ffn_down.weight": "model.layers.3.mlp.down_proj.weight",
                     "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight",
                     "rope_freqs.weight": "rope_freqs.weight"}
    with pytest.raises(ModelFileError, match="architecture 'llama', whose attention weights llama.cpp stores"):
        llama_cpp.transformers_names(["token_embd.weight"], "llama")


def test_gguf_llama_cpp_names_mapping_to_one_name(tmp_path):
    """A GGUF holding both llama.cpp's and transformers' name for one tensor is refused when its names are
    mapped (the reader itself reads names as stored)."""
    path = tmp_path / "two_norms.gguf"
    writer = gguf.GGUFWriter(str(path), arch="qwen2vl")
    for name in ("model.norm.weight", "output_norm.weight", "blk.0.attn_q.weight"):
        writer.add_tensor(name, np.zeros(32, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    checkpoint = open_checkpoint(path)
    assert set(checkpoint.keys()) == {"model.norm.weight", "output_norm.weight", "blk.0.attn_q.weight"}
    with pytest.raises(ModelFileError) as info:
        llama_cpp.transformers_names(checkpoint.keys(), "qwen2vl", checkpoint.path)
    assert "two_norms.gguf: has tensors that map to the same name 'model.norm.weight'" in str(info.value)
