"""Qwen-Image VAE names: diffusers (`AutoencoderKLQwenImage`) -> ComfyUI (Wan 2.1 original names).

The two layouts hold the same tensors with the same shapes; only the names differ:

    diffusers                                     ComfyUI / Wan 2.1
    quant_conv / post_quant_conv                  conv1 / conv2
    {encoder,decoder}.conv_in                     {encoder,decoder}.conv1
    {encoder,decoder}.norm_out / .conv_out        {encoder,decoder}.head.0 / .head.2
    *.mid_block.resnets.K / .attentions.K         *.middle.(2K) / .middle.(2K+1)
    encoder.down_blocks.N                         encoder.downsamples.N        (both flat lists)
    decoder.up_blocks.I.resnets.J                 decoder.upsamples.(I*S+J)    S = blocks per stage:
    decoder.up_blocks.I.upsamplers.0              decoder.upsamples.(I*S+S-1)  resnets + 1 upsampler
    (in a residual block) norm1, conv1, norm2, conv2, conv_shortcut
                                                  residual.0, residual.2, residual.3, residual.6, shortcut

The decoder's flat index needs the number of residual blocks per stage, which is read from the names.
Names that match no rule are returned unchanged, so a loader reports them as unexpected tensors.
"""

from __future__ import annotations

import re

_RESIDUAL_PARTS = {
    "norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6",
    "conv_shortcut": "shortcut",
}
_TOP_LEVEL = {"quant_conv": "conv1", "post_quant_conv": "conv2"}
_ENDS = {"conv_in": "conv1", "norm_out": "head.0", "conv_out": "head.2"}

_UP_RESNET = re.compile(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)")
_UPSAMPLER = re.compile(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)")
_DOWN_BLOCK = re.compile(r"encoder\.down_blocks\.(\d+)\.(.+)")
_MID = re.compile(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)")
_END = re.compile(r"(encoder|decoder)\.(conv_in|norm_out|conv_out)\.(.+)")
_TOP = re.compile(r"(quant_conv|post_quant_conv)\.(.+)")


def _residual_part(rest: str) -> str:
    """'norm1.gamma' -> 'residual.0.gamma'; anything else (resample.1.weight, time_conv.bias) unchanged."""
    head, _, tail = rest.partition(".")
    return f"{_RESIDUAL_PARTS[head]}.{tail}" if head in _RESIDUAL_PARTS else rest


def diffusers_key_to_comfyui(key: str, resnets_per_up_block: int = 3) -> str:
    """One diffusers name -> its ComfyUI name (`resnets_per_up_block` = num_res_blocks + 1)."""
    stage_length = resnets_per_up_block + 1  # the residual blocks plus the upsampler
    if m := _UP_RESNET.fullmatch(key):
        stage, block, rest = int(m[1]), int(m[2]), m[3]
        return f"decoder.upsamples.{stage * stage_length + block}.{_residual_part(rest)}"
    if m := _UPSAMPLER.fullmatch(key):
        stage, rest = int(m[1]), m[2]
        return f"decoder.upsamples.{stage * stage_length + resnets_per_up_block}.{rest}"
    if m := _DOWN_BLOCK.fullmatch(key):
        return f"encoder.downsamples.{m[1]}.{_residual_part(m[2])}"
    if m := _MID.fullmatch(key):
        half, kind, index, rest = m[1], m[2], int(m[3]), m[4]
        if kind == "resnets":
            return f"{half}.middle.{2 * index}.{_residual_part(rest)}"
        return f"{half}.middle.{2 * index + 1}.{rest}"
    if m := _END.fullmatch(key):
        return f"{m[1]}.{_ENDS[m[2]]}.{m[3]}"
    if m := _TOP.fullmatch(key):
        return f"{_TOP_LEVEL[m[1]]}.{m[2]}"
    return key


def resnets_per_up_block(keys) -> int:
    """Residual blocks in each decoder stage of a diffusers-named state dict (3 in the released VAE)."""
    blocks = {int(m[1]) for k in keys if (m := re.fullmatch(r"decoder\.up_blocks\.0\.resnets\.(\d+)\..+", k))}
    return max(blocks) + 1 if blocks else 3


def diffusers_to_comfyui(keys) -> dict[str, str]:
    """{diffusers name: ComfyUI name} for every name in `keys` (a state dict's keys)."""
    keys = list(keys)
    per_stage = resnets_per_up_block(keys)
    return {k: diffusers_key_to_comfyui(k, per_stage) for k in keys}
