"""HunyuanImage 2.1 diffusion-model files: detection (base / distilled / refiner, four layouts, never mistaken
for HunyuanVideo), reading small real files in every layout (safetensors, GGUF, the official FP8 release
with its scale file) into the network's names, and the errors for incomplete or foreign files.

The small files are the real layouts at a tiny width: the published names of the first two blocks of each
kind, every dimension that is a multiple of the hidden size scaled to a multiple of 32, and the tensors of
each layout made from random ComfyUI-layout tensors by the reference mapping files (the fact source, not
our rules)."""

from __future__ import annotations

import dataclasses
import re

import gguf
import pytest
import torch
from safetensors.torch import save_file

from comfyui_mmdit.loaders.checkpoints import open_checkpoint
from comfyui_mmdit.loaders.detection import DIFFUSION_MODEL, find_component, identify_all
from comfyui_mmdit.loaders.diffusion_model import read_diffusion_model
from comfyui_mmdit.loaders.errors import ModelFileError
from comfyui_mmdit.loaders.formats.checkpoint import Checkpoint
from comfyui_mmdit.loaders.layouts import diffusion_model_weights
from comfyui_mmdit.loaders.quant.tensor import FP8_SCALED, GGUF, is_quantized
from comfyui_mmdit.model_defs import families
from helpers import manifest, manifest_shapes, official_fp8_release

HIDDEN = {"dit": 3584, "distilled_dit": 3584, "refiner_dit": 3328}
WIDTH = 32  # the tiny hidden size (a multiple of GGUF's block of 32)
LAYOUTS = ("comfyui", "fused_original", "tencent", "diffusers")
BLOCK = re.compile(r"(?:double_blocks|single_blocks|blocks|refiner_blocks|transformer_blocks)\.(\d+)\.")


def _kept(name: str) -> bool:
    """The first two blocks of each kind (and everything outside blocks)."""
    return all(int(i) < 2 for i in BLOCK.findall(name))


def _tiny(dim: int, hidden: int) -> int:
    return dim // hidden * WIDTH if dim % hidden == 0 else (dim if dim <= 128 else WIDTH)


def _apply(entry, source: torch.Tensor, hidden: int) -> torch.Tensor:
    """One mapping entry (rename / slice_rows / swap_halves) applied to a tiny tensor."""
    if entry["op"] == "slice_rows":
        start, stop = entry["src_rows"]
        assert start % hidden == 0 and stop % hidden == 0
        return source[start // hidden * WIDTH: stop // hidden * WIDTH]
    if entry["op"] == "swap_halves":
        half = source.shape[0] // 2
        return torch.cat([source[half:], source[:half]])
    assert entry["op"] == "rename" and "reshape" not in entry
    return source


def tiny_layouts(variant: str, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """{layout: {name: tensor}}: random ComfyUI-layout tensors and the same values in the other layouts."""
    hidden = HIDDEN[variant]
    g = torch.Generator().manual_seed(seed)
    comfy = {name: torch.randn([_tiny(d, hidden) for d in shape], generator=g)
             for name, shape in manifest_shapes(f"hunyuanimage21_{variant}.comfyui").items() if _kept(name)}
    mapping = lambda name: manifest(f"mapping.hunyuanimage21_{variant}.{name}")["mapping"]  # noqa: E731
    fused = {e["src"]: comfy[e["dst"]] for e in mapping("fused_original_to_comfyui") if e["dst"] in comfy}
    tencent = {e["dst"]: _apply(e, fused[e["src"]], hidden) for e in mapping("fused_original_to_tencent")
               if e["src"] in fused}
    diffusers = {e["dst"]: _apply(e, comfy[e["src"]], hidden) for e in mapping("comfyui_to_diffusers")
                 if e["src"] in comfy}
    return {"comfyui": comfy, "fused_original": fused, "tencent": tencent, "diffusers": diffusers}


def _save(tensors: dict, path) -> object:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def _network_reference(variant, layout, files):
    comfy = files["comfyui"]
    if (variant, layout) == ("refiner_dit", "diffusers"):  # diffusers' refiner has no time_r_in
        return {k: v for k, v in comfy.items() if not k.startswith("time_r_in.")}
    return comfy


class ShapesOnly(Checkpoint):
    """A checkpoint of names and shapes only (detection never reads data)."""

    format = "test"

    def __init__(self, shapes):
        super().__init__("shapes-only.safetensors")
        self._shapes = {k: tuple(v) for k, v in shapes.items()}

    def keys(self):
        return list(self._shapes)

    def shape(self, key):
        return self._shapes[key]

    def dtype(self, key):
        return torch.bfloat16


# --- detection -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
def test_detection_names_family_layout_and_variant(layout):
    where = {"comfyui": "ComfyUI layout", "fused_original": "original names, fused q/k/v",
             "tencent": "official Tencent layout, split q/k/v", "diffusers": "diffusers layout"}[layout]
    for variant, description, supported in (
            ("dit", f"HunyuanImage 2.1 diffusion model ({where})", True),
            ("distilled_dit", f"HunyuanImage 2.1 distilled diffusion model ({where})", True),
            ("refiner_dit", f"HunyuanImage 2.1 refiner diffusion model ({where})", True)):
        for prefix in ("", "model.diffusion_model."):
            shapes = {prefix + k: v for k, v in manifest_shapes(f"hunyuanimage21_{variant}.{layout}").items()}
            (part,) = [p for p in identify_all(ShapesOnly(shapes)) if p.component == DIFFUSION_MODEL]
            assert (part.family, part.layout, part.prefix, part.description, part.supported) == (
                "hunyuan_image", layout, prefix, description, supported), (variant, prefix)


def _video_shapes(layout: str) -> dict:
    """HunyuanVideo 1.0 (3-D patch, CLIP vector_in, 4096-wide LLaVA text) in the given names."""
    if layout == "diffusers":
        return {"x_embedder.proj.weight": (3072, 16, 1, 2, 2),
                "context_embedder.token_refiner.refiner_blocks.0.norm1.weight": (3072,),
                "context_embedder.proj_in.weight": (3072, 4096),
                "time_text_embed.text_embedder.linear_1.weight": (3072, 768),
                "transformer_blocks.0.attn.to_q.weight": (3072, 3072)}
    qkv = {"comfyui": "double_blocks.0.img_attn.qkv.weight", "fused_original": "double_blocks.0.img_attn_qkv.weight",
           "tencent": "double_blocks.0.img_attn_q.weight"}[layout]
    return {"img_in.proj.weight": (3072, 16, 1, 2, 2), "vector_in.in_layer.weight": (3072, 768),
            "txt_in.input_embedder.weight": (3072, 4096), qkv: (9216, 3072),
            "txt_in.individual_token_refiner.blocks.0.norm1.weight": (3072,)}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_hunyuan_video_is_not_mistaken_for_hunyuan_image(layout):
    shapes = _video_shapes(layout)
    (part,) = identify_all(ShapesOnly(shapes))
    assert part.family == "hunyuan_video" and not part.supported, part
    # HunyuanVideo 1.5: no vector_in, a vision input, 3-D patch over 65 channels, Qwen2.5-VL text + ByT5
    v15 = {k: v for k, v in shapes.items() if not k.startswith(("vector_in.", "time_text_embed."))}
    image_in = "x_embedder.proj.weight" if layout == "diffusers" else "img_in.proj.weight"
    v15 |= {image_in: (2048, 65, 1, 1, 1), "vision_in.proj.0.weight": (1152, 1152), "byt5_in.fc1.weight": (2048, 1472)}
    (part,) = identify_all(ShapesOnly(v15))
    assert part.family == "hunyuan_video" and not part.supported, part
    with pytest.raises(ModelFileError, match="holds a HunyuanVideo diffusion model.*which this pack does not run"):
        find_component(ShapesOnly(shapes), DIFFUSION_MODEL)


def test_refiner_file_reads_as_the_refiner_variant(tmp_path):
    """The model loader cannot know the intended stage: a refiner file loads as the refiner variant, and the
    stages refuse the wrong one (model_defs/hunyuan_image/refiner.py; tests/test_hunyuan_refiner.py)."""
    from comfyui_mmdit.tools.tiny_models import TINY_HUNYUAN_REFINER_DIT, tiny_hunyuan_refiner_dit_state_dict
    from hunyuan_layouts import in_layout

    state = in_layout(tiny_hunyuan_refiner_dit_state_dict(), "tencent", "refiner_dit",
                      TINY_HUNYUAN_REFINER_DIT.hidden_size)
    model_file = read_diffusion_model(_save(state, tmp_path / "hunyuanimage-refiner.safetensors"))
    assert model_file.description.startswith("HunyuanImage 2.1 refiner diffusion model (official Tencent layout")
    assert model_file.config.variant == "refiner" and model_file.config.in_channels == 128


# --- reading tiny files in every layout ----------------------------------------------------------------------
@pytest.mark.parametrize("variant", ("dit", "distilled_dit", "refiner_dit"))
def test_every_layout_reads_to_the_same_network_tensors(variant, tmp_path):
    files = tiny_layouts(variant)
    for layout in LAYOUTS:
        path = _save(files[layout], tmp_path / f"{layout}.safetensors")
        checkpoint = open_checkpoint(path)
        (identity,) = [p for p in identify_all(checkpoint) if p.component == DIFFUSION_MODEL]
        assert identity.layout == layout
        weights = diffusion_model_weights(checkpoint, identity)
        reference = _network_reference(variant, layout, files)
        assert weights.shapes == {k: tuple(v.shape) for k, v in reference.items()}
        for name, expected in reference.items():
            assert torch.equal(weights[name], expected), (layout, name)


def _stub_family(monkeypatch, expected_shapes: dict):
    """HunyuanImage registered with a stand-in network whose state dict has `expected_shapes` (the real
    network is built elsewhere): read_diffusion_model's whole generic path runs on it."""

    class StandIn(torch.nn.Module):
        def __init__(self, config, operations, dtype=None, device=None, **kwargs):
            super().__init__()
            self.shapes = config

        def state_dict(self, *args, **kwargs):
            return {name: torch.empty(shape, device="meta") for name, shape in self.shapes.items()}

    spec = dataclasses.replace(families.QWEN_IMAGE, name="hunyuan_image", display_name="HunyuanImage 2.1",
                               network_class=StandIn, config_from_shapes=lambda shapes: dict(expected_shapes))
    monkeypatch.setitem(families.FAMILIES, "hunyuan_image", spec)


def test_read_diffusion_model_applies_the_layout_before_the_network_check(tmp_path, monkeypatch):
    files = tiny_layouts("distilled_dit")
    expected = {k: tuple(v.shape) for k, v in files["comfyui"].items()}
    _stub_family(monkeypatch, expected)
    path = _save(files["tencent"], tmp_path / "hunyuanimage2.1-distilled.safetensors")
    model_file = read_diffusion_model(path)
    assert model_file.description.startswith("HunyuanImage 2.1 distilled diffusion model (official Tencent layout")
    assert model_file.state_dict.shapes == expected and not model_file.quantized
    assert model_file.parameter_count == sum(v.numel() for v in files["comfyui"].values())
    fused = model_file.state_dict["single_blocks.1.linear1.weight"]
    assert torch.equal(fused, files["comfyui"]["single_blocks.1.linear1.weight"])

    missing = dict(files["diffusers"])
    del missing["transformer_blocks.1.attn.to_out.0.weight"]
    path = _save(missing, tmp_path / "incomplete.safetensors")
    with pytest.raises(ModelFileError, match="1 tensors are missing.*no double_blocks.1.img_attn.proj.weight"):
        read_diffusion_model(path)
    extra = dict(files["fused_original"]) | {"double_blocks.0.img_attn_extra.weight": torch.zeros(2)}
    with pytest.raises(ModelFileError, match="1 tensors are not part of it.*double_blocks.0.img_attn_extra.weight"):
        read_diffusion_model(_save(extra, tmp_path / "extra.safetensors"))


def test_split_file_with_a_missing_part_names_it(tmp_path):
    files = tiny_layouts("dit")["tencent"]
    del files["double_blocks.1.txt_attn_k.weight"], files["single_blocks.0.linear1_mlp.bias"]
    path = _save(files, tmp_path / "hunyuanimage2.1.safetensors")
    checkpoint = open_checkpoint(path)
    with pytest.raises(ModelFileError) as info:
        diffusion_model_weights(checkpoint, find_component(checkpoint, DIFFUSION_MODEL))
    message = str(info.value)
    assert "hunyuanimage2.1.safetensors: stores 2 tensors split into parts, with parts missing" in message
    assert ("double_blocks.1.txt_attn_q.weight, double_blocks.1.txt_attn_v.weight without "
            "double_blocks.1.txt_attn_k.weight") in message
    assert "without single_blocks.0.linear1_mlp.bias" in message


def test_gguf_in_the_split_and_diffusers_layouts_stays_quantized(tmp_path):
    files = tiny_layouts("dit", seed=3)
    for layout in ("tencent", "diffusers"):
        path = tmp_path / f"{layout}.gguf"
        writer = gguf.GGUFWriter(str(path), arch="hunyuan_image")
        for name, tensor in files[layout].items():
            array = tensor.numpy()
            if array.ndim == 2 and array.shape[-1] % 32 == 0:
                writer.add_tensor(name, gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0),
                                  raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            else:
                writer.add_tensor(name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        checkpoint = open_checkpoint(path)
        weights = diffusion_model_weights(checkpoint, find_component(checkpoint, DIFFUSION_MODEL))
        assert weights.holds_quantized()
        for name in ("double_blocks.0.img_attn.qkv.weight", "single_blocks.1.linear1.weight",
                     "final_layer.adaLN_modulation.1.weight"):
            tensor = weights[name]
            assert is_quantized(tensor) and tensor.qformat == GGUF, (layout, name)
            parts = [checkpoint.tensor(k) for k in weights.plan[name].keys()]
            if layout == "diffusers" and name.startswith("final_layer"):  # the halves come back in ComfyUI order
                whole = parts[0].dequantize()
                expected = torch.cat([whole[WIDTH:], whole[:WIDTH]])
            else:
                expected = torch.cat([p.dequantize() for p in parts])
            assert torch.equal(tensor.dequantize(), expected), (layout, name)


# --- the official FP8 release: weights + *_fp8_scale.safetensors --------------------------------------------
@pytest.mark.parametrize("in_file_scales", (True, False), ids=("weight_scale-in-file", "scale-file-only"))
def test_official_fp8_release_with_its_scale_file(tmp_path, in_file_scales):
    tencent = tiny_layouts("dit", seed=5)["tencent"]
    path, values, _ = official_fp8_release(tencent, tmp_path, in_file_scales)
    checkpoint = open_checkpoint(path)
    weights = diffusion_model_weights(checkpoint, find_component(checkpoint, DIFFUSION_MODEL))
    assert weights.holds_quantized()

    def value(name):  # the official formula: fp8 weight x its layer's scale
        return values[name]

    qkv = weights["double_blocks.1.txt_attn.qkv.weight"]
    assert is_quantized(qkv) and qkv.qformat == FP8_SCALED and qkv.raw().dtype == torch.float8_e4m3fn
    assert qkv.scale.shape == (3 * WIDTH,)  # q, k and v each keep their own scale: one per row
    expected = torch.cat([value(f"double_blocks.1.txt_attn_{x}.weight") for x in "qkv"])
    assert torch.equal(qkv.dequantize(torch.float32), expected)
    linear1 = weights["single_blocks.0.linear1.weight"]
    assert torch.equal(linear1.dequantize(torch.float32),
                       torch.cat([value(f"single_blocks.0.linear1_{x}.weight") for x in ("q", "k", "v", "mlp")]))
    linear2 = weights["single_blocks.0.linear2.weight"]
    assert linear2.scale.ndim == 0 and torch.equal(linear2.dequantize(torch.float32),
                                                   value("single_blocks.0.linear2.fc.weight"))
    # outside the blocks nothing is FP8; e4m3 (3 mantissa bits) keeps each weight within 1/16 of itself
    assert not is_quantized(weights["img_in.proj.weight"])
    original = torch.cat([tencent[f"double_blocks.1.txt_attn_{x}.weight"] for x in "qkv"])
    error = ((qkv.dequantize(torch.float32) - original).norm() / original.norm()).item()
    assert error < 0.04, error


def test_the_scale_file_picked_as_the_model_points_to_the_weights(tmp_path):
    official_fp8_release(tiny_layouts("dit")["tencent"], tmp_path, in_file_scales=True)
    with pytest.raises(ModelFileError, match="is an FP8 scale map, not a model.*hunyuanimage2.1_fp8.safetensors"):
        open_checkpoint(tmp_path / "hunyuanimage2.1_fp8_scale.safetensors")


@pytest.mark.parametrize("layout, copied", [("comfyui", False), ("diffusers", True), ("tencent", True)])
def test_what_loading_copies_is_known_before_loading(tmp_path, layout, copied):
    """Fused q/k/v (and swapped halves) are copies: the loader knows their size up front, to say so for a big
    official file; a ComfyUI-layout file copies nothing."""
    from comfyui_mmdit.tools.tiny_models import TINY_HUNYUAN_DIT, tiny_hunyuan_dit_state_dict
    from hunyuan_layouts import in_layout

    state = in_layout(tiny_hunyuan_dit_state_dict(), layout, "dit", TINY_HUNYUAN_DIT.hidden_size)
    model_file = read_diffusion_model(_save(state, tmp_path / f"{layout}.safetensors"))
    assert model_file.identity.layout == layout
    assert (model_file.copied_bytes > 0) == copied
    if layout == "tencent":  # at least every block's fused q/k/v and linear1 matrix, in float32
        fused = sum(v.numel() for k, v in tiny_hunyuan_dit_state_dict().items()
                    if k.startswith(("double_blocks.", "single_blocks.")) and k.endswith(("qkv.weight", "linear1.weight")))
        assert model_file.copied_bytes >= fused * 4 > 0
    assert model_file.memory_note() is None  # under a gigabyte: nothing to say
