"""HunyuanImage 2.1 refiner VAE names: diffusers (`AutoencoderKLHunyuanImageRefiner`) -> ComfyUI (= official
Tencent names), the network's own.

The layouts hold the same tensors with the same shapes; only the names differ. diffusers nests each stage's
residual blocks and sampler (unlike the base VAE's flat lists), so every name maps on its own:

    diffusers                                          ComfyUI / Tencent
    encoder.down_blocks.S.resnets.B                    encoder.down.S.block.B
    encoder.down_blocks.S.downsamplers.0               encoder.down.S.downsample
    decoder.up_blocks.S.resnets.B                      decoder.up.S.block.B
    decoder.up_blocks.S.upsamplers.0                   decoder.up.S.upsample
    *.mid_block.resnets.0 / .resnets.1                 *.mid.block_1 / *.mid.block_2
    *.mid_block.attentions.0.{to_q,to_k,to_v}          *.mid.attn_1.{q,k,v}  (norm, proj_out unchanged)
    (in a residual block) conv_shortcut                nin_shortcut
    conv_in.conv, norm_out, conv_out.conv, norm1/2...  unchanged

Residual blocks that change width (none in the released VAE) hold a pointwise shortcut conv: diffusers'
`conv_shortcut.weight` and the official `nin_shortcut.weight` (a plain Conv3d). ComfyUI's module builds it
as a causal conv, `nin_shortcut.conv.weight`; `comfyui_to_network` renames that one name. Names that match
no rule are returned unchanged, so a loader reports them as unexpected tensors.
"""

from __future__ import annotations

import re

_STAGE = re.compile(r"(encoder\.down|decoder\.up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)")
_MID = re.compile(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)")
_ATTENTION_PARTS = {"to_q": "q", "to_k": "k", "to_v": "v"}
_SAMPLERS = {"downsamplers": "downsample", "upsamplers": "upsample"}


def _resnet_part(rest: str) -> str:
    return "nin_shortcut." + rest[len("conv_shortcut."):] if rest.startswith("conv_shortcut.") else rest


def diffusers_key_to_comfyui(key: str) -> str:
    """One diffusers name -> its ComfyUI / Tencent name."""
    if m := _STAGE.fullmatch(key):
        half, stage, kind, index, rest = m[1], m[2], m[3], int(m[4]), m[5]
        if kind == "resnets":
            return f"{half}.{stage}.block.{index}.{_resnet_part(rest)}"
        if index == 0:
            return f"{half}.{stage}.{_SAMPLERS[kind]}.{rest}"
        return key
    if m := _MID.fullmatch(key):
        half, kind, index, rest = m[1], m[2], int(m[3]), m[4]
        if kind == "resnets":
            return f"{half}.mid.block_{index + 1}.{_resnet_part(rest)}"
        head, _, tail = rest.partition(".")
        return f"{half}.mid.attn_{index + 1}.{_ATTENTION_PARTS.get(head, head)}.{tail}"
    return key


def diffusers_to_comfyui(keys) -> dict[str, str]:
    """{diffusers name: ComfyUI name} for every name in `keys` (a state dict's keys)."""
    return {k: diffusers_key_to_comfyui(k) for k in keys}


_COMFY_SHORTCUT = re.compile(r"(.+\.nin_shortcut)\.conv\.(weight|bias)")


def comfyui_to_network(keys) -> dict[str, str]:
    """{file name: network name} for a ComfyUI / official file: ComfyUI's `nin_shortcut.conv.*` becomes
    the official `nin_shortcut.*`; every other name is already the network's."""
    return {k: (f"{m[1]}.{m[2]}" if (m := _COMFY_SHORTCUT.fullmatch(k)) else k) for k in keys}
