"""Building blocks shared by the diffusion transformers of the FLUX / HunyuanVideo lineage.

HunyuanImage 2.1 uses them now; HunyuanVideo and FLUX.2 are built from the same pieces. Module and
parameter names are those of the ComfyUI / BFL checkpoints (`img_mod.lin`, `img_attn.qkv`,
`norm.query_norm.scale`, `linear1`, ...), so a file in that layout loads by plain assignment.

- modulation:    adaLN parameter vectors (shift / scale / gate) from the conditioning vector
- layers:        q/k RMS norm, fused-qkv attention projections, MLP kinds (GELU-tanh, SiLU-gated)
- double_stream: image and text with their own weights, one joint attention
- single_stream: one joint sequence, fused qkv + MLP input (`linear1`) and output (`linear2`)
- token_refiner: HunyuanVideo/Image's individual token refiner over the text states (`txt_in`)
- patchify:      latent <-> tokens (Conv2d/Conv3d patch embedding, unpatchify, grid positions)
- final_layer:   adaLN output norm + linear projection
- hooks:         the block loop honouring ComfyUI's patches_replace / patches / ControlNet hooks
"""
