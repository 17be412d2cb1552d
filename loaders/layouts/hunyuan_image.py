"""HunyuanImage 2.1 DiT (base, distilled, refiner): the four published layouts -> the network's names.

The network uses ComfyUI's module names (manifest hunyuanimage21_dit.comfyui.json), so the `comfyui`
layout is the identity. The others, as the reference mappings record them (tests check every entry):

* `fused_original`: the HunyuanVideo-original names with q/k/v fused, which ComfyUI's
  HunyuanVideo.process_unet_state_dict renames (mlp.0/mlp.2 -> in_layer/out_layer, _mod.linear -> _mod.lin,
  _attn_qkv -> _attn.qkv, q/k norms -> norm.query_norm/key_norm.scale, mlp.fc1/fc2 -> mlp.0/mlp.2, ...);
* `tencent`: the official release (tencent/HunyuanImage-2.1 dit/*.safetensors): fused_original, but the
  double blocks' q/k/v and the single blocks' q/k/v/mlp input projection stored split (the official
  convert_hunyuan_dict_for_tensor_parallel), and linear2 under linear2.fc. They are stacked back in
  q|k|v(|mlp) order. The token refiner's qkv stays fused in this layout;
* `diffusers`: HunyuanImageTransformer2DModel. Everything renamed, q/k/v (and the single blocks' proj_mlp)
  stacked, and the final AdaLN's halves swapped (diffusers' norm_out is (scale, shift), ComfyUI's
  final_layer.adaLN_modulation is (shift, scale)). The diffusers refiner has no time_r_in (its conversion
  script drops it), so a diffusers refiner file lacks four tensors the network has.
"""

from __future__ import annotations

from .base import Layout, fuse, rename, swap

# --- fused_original: pure renames (ComfyUI's own process_unet_state_dict) ----------------------------------
REFINER = "txt_in.individual_token_refiner.blocks.{i}."
DOUBLE = "double_blocks.{i}."
SINGLE = "single_blocks.{i}."

_ORIGINAL_RENAMES = (
    *rename("txt_in.t_embedder.mlp.0.{p}", "txt_in.t_embedder.in_layer.{p}"),
    *rename("txt_in.t_embedder.mlp.2.{p}", "txt_in.t_embedder.out_layer.{p}"),
    *rename("txt_in.c_embedder.linear_1.{p}", "txt_in.c_embedder.in_layer.{p}"),
    *rename("txt_in.c_embedder.linear_2.{p}", "txt_in.c_embedder.out_layer.{p}"),
    *rename("{embedder}_in.mlp.0.{p}", "{embedder}_in.in_layer.{p}"),  # time_in, time_r_in, guidance_in
    *rename("{embedder}_in.mlp.2.{p}", "{embedder}_in.out_layer.{p}"),
    *rename(REFINER + "self_attn_qkv.{p}", REFINER + "self_attn.qkv.{p}"),
    *rename(REFINER + "self_attn_proj.{p}", REFINER + "self_attn.proj.{p}"),
    *rename(REFINER + "mlp.fc1.{p}", REFINER + "mlp.0.{p}"),
    *rename(REFINER + "mlp.fc2.{p}", REFINER + "mlp.2.{p}"),
    # double blocks; {s} is img or txt
    *rename(DOUBLE + "{s}_mod.linear.{p}", DOUBLE + "{s}_mod.lin.{p}"),
    *rename(DOUBLE + "{s}_attn_qkv.{p}", DOUBLE + "{s}_attn.qkv.{p}"),
    *rename(DOUBLE + "{s}_attn_q_norm.weight", DOUBLE + "{s}_attn.norm.query_norm.scale"),
    *rename(DOUBLE + "{s}_attn_k_norm.weight", DOUBLE + "{s}_attn.norm.key_norm.scale"),
    *rename(DOUBLE + "{s}_attn_proj.{p}", DOUBLE + "{s}_attn.proj.{p}"),
    *rename(DOUBLE + "{s}_mlp.fc1.{p}", DOUBLE + "{s}_mlp.0.{p}"),
    *rename(DOUBLE + "{s}_mlp.fc2.{p}", DOUBLE + "{s}_mlp.2.{p}"),
    # single blocks
    *rename(SINGLE + "q_norm.weight", SINGLE + "norm.query_norm.scale"),
    *rename(SINGLE + "k_norm.weight", SINGLE + "norm.key_norm.scale"),
    *rename(SINGLE + "modulation.linear.{p}", SINGLE + "modulation.lin.{p}"),
)  # unchanged: img_in, txt_in.input_embedder, byt5_in, refiner norms/adaLN, single linear1/linear2, final_layer

# --- tencent: fused_original with the projections split -----------------------------------------------------
_TENCENT_SPLITS = (
    *fuse(DOUBLE + "{s}_attn.qkv.{p}", DOUBLE + "{s}_attn_q.{p}", DOUBLE + "{s}_attn_k.{p}", DOUBLE + "{s}_attn_v.{p}"),
    *fuse(SINGLE + "linear1.{p}", SINGLE + "linear1_q.{p}", SINGLE + "linear1_k.{p}", SINGLE + "linear1_v.{p}",
          SINGLE + "linear1_mlp.{p}"),
    *rename(SINGLE + "linear2.fc.{p}", SINGLE + "linear2.{p}"),
)

# --- diffusers: HunyuanImageTransformer2DModel ---------------------------------------------------------------
D_REFINER = "context_embedder.token_refiner.refiner_blocks.{i}."
D_DOUBLE = "transformer_blocks.{i}."
D_SINGLE = "single_transformer_blocks.{i}."
_TIME_EMBEDDERS = {"timestep_embedder": "time_in", "timestep_embedder_r": "time_r_in",
                   "guidance_embedder": "guidance_in"}


def _mlp_embedder(diffusers: str, ours: str):
    return (*rename(diffusers + ".linear_1.{p}", ours + ".in_layer.{p}"),
            *rename(diffusers + ".linear_2.{p}", ours + ".out_layer.{p}"))


_DIFFUSERS_RULES = (
    *rename("x_embedder.proj.{p}", "img_in.proj.{p}"),
    *rename("context_embedder.proj_in.{p}", "txt_in.input_embedder.{p}"),
    *_mlp_embedder("context_embedder.time_text_embed.timestep_embedder", "txt_in.t_embedder"),
    *_mlp_embedder("context_embedder.time_text_embed.text_embedder", "txt_in.c_embedder"),
    *(rule for name, ours in _TIME_EMBEDDERS.items() for rule in _mlp_embedder(f"time_guidance_embed.{name}", ours)),
    *rename("context_embedder_2.norm.{p}", "byt5_in.layernorm.{p}"),
    *rename("context_embedder_2.linear_1.{p}", "byt5_in.fc1.{p}"),
    *rename("context_embedder_2.linear_2.{p}", "byt5_in.fc2.{p}"),
    *rename("context_embedder_2.linear_3.{p}", "byt5_in.fc3.{p}"),
    # token refiner
    *rename(D_REFINER + "norm1.{p}", REFINER + "norm1.{p}"),
    *rename(D_REFINER + "norm2.{p}", REFINER + "norm2.{p}"),
    *fuse(REFINER + "self_attn.qkv.{p}", D_REFINER + "attn.to_q.{p}", D_REFINER + "attn.to_k.{p}",
          D_REFINER + "attn.to_v.{p}"),
    *rename(D_REFINER + "attn.to_out.0.{p}", REFINER + "self_attn.proj.{p}"),
    *rename(D_REFINER + "ff.net.0.proj.{p}", REFINER + "mlp.0.{p}"),
    *rename(D_REFINER + "ff.net.2.{p}", REFINER + "mlp.2.{p}"),
    *rename(D_REFINER + "norm_out.linear.{p}", REFINER + "adaLN_modulation.1.{p}"),
    # double blocks: diffusers' to_* / ff are the image stream, add_* / to_add_out / ff_context the text stream
    *rename(D_DOUBLE + "norm1.linear.{p}", DOUBLE + "img_mod.lin.{p}"),
    *rename(D_DOUBLE + "norm1_context.linear.{p}", DOUBLE + "txt_mod.lin.{p}"),
    *fuse(DOUBLE + "img_attn.qkv.{p}", D_DOUBLE + "attn.to_q.{p}", D_DOUBLE + "attn.to_k.{p}",
          D_DOUBLE + "attn.to_v.{p}"),
    *fuse(DOUBLE + "txt_attn.qkv.{p}", D_DOUBLE + "attn.add_q_proj.{p}", D_DOUBLE + "attn.add_k_proj.{p}",
          D_DOUBLE + "attn.add_v_proj.{p}"),
    *rename(D_DOUBLE + "attn.norm_q.weight", DOUBLE + "img_attn.norm.query_norm.scale"),
    *rename(D_DOUBLE + "attn.norm_k.weight", DOUBLE + "img_attn.norm.key_norm.scale"),
    *rename(D_DOUBLE + "attn.norm_added_q.weight", DOUBLE + "txt_attn.norm.query_norm.scale"),
    *rename(D_DOUBLE + "attn.norm_added_k.weight", DOUBLE + "txt_attn.norm.key_norm.scale"),
    *rename(D_DOUBLE + "attn.to_out.0.{p}", DOUBLE + "img_attn.proj.{p}"),
    *rename(D_DOUBLE + "attn.to_add_out.{p}", DOUBLE + "txt_attn.proj.{p}"),
    *rename(D_DOUBLE + "ff.net.0.proj.{p}", DOUBLE + "img_mlp.0.{p}"),
    *rename(D_DOUBLE + "ff.net.2.{p}", DOUBLE + "img_mlp.2.{p}"),
    *rename(D_DOUBLE + "ff_context.net.0.proj.{p}", DOUBLE + "txt_mlp.0.{p}"),
    *rename(D_DOUBLE + "ff_context.net.2.{p}", DOUBLE + "txt_mlp.2.{p}"),
    # single blocks: linear1 = q|k|v|mlp input projections, linear2 = the output projection
    *fuse(SINGLE + "linear1.{p}", D_SINGLE + "attn.to_q.{p}", D_SINGLE + "attn.to_k.{p}", D_SINGLE + "attn.to_v.{p}",
          D_SINGLE + "proj_mlp.{p}"),
    *rename(D_SINGLE + "proj_out.{p}", SINGLE + "linear2.{p}"),
    *rename(D_SINGLE + "attn.norm_q.weight", SINGLE + "norm.query_norm.scale"),
    *rename(D_SINGLE + "attn.norm_k.weight", SINGLE + "norm.key_norm.scale"),
    *rename(D_SINGLE + "norm.linear.{p}", SINGLE + "modulation.lin.{p}"),
    # output
    *rename("proj_out.{p}", "final_layer.linear.{p}"),
    *swap("norm_out.linear.{p}", "final_layer.adaLN_modulation.1.{p}"),
)

COMFYUI = Layout("comfyui", description="ComfyUI layout")
FUSED_ORIGINAL = Layout("fused_original", _ORIGINAL_RENAMES, "original names, fused q/k/v")
TENCENT = Layout("tencent", _TENCENT_SPLITS + _ORIGINAL_RENAMES, "official Tencent layout, split q/k/v")
DIFFUSERS = Layout("diffusers", _DIFFUSERS_RULES, "diffusers layout")

LAYOUTS = {layout.name: layout for layout in (COMFYUI, FUSED_ORIGINAL, TENCENT, DIFFUSERS)}
