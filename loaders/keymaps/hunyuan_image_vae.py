"""HunyuanImage 2.1 VAE names: diffusers (`AutoencoderKLHunyuanImage`) -> ComfyUI (= official Tencent names).

The two layouts hold the same tensors with the same shapes; only the names differ:

    diffusers                                          ComfyUI / Tencent
    encoder.down_blocks.N  (resnets and samplers       encoder.down.S.block.B / encoder.down.S.downsample
    decoder.up_blocks.N     in one flat list)          decoder.up.S.block.B   / decoder.up.S.upsample
    *.mid_block.resnets.0 / .resnets.1                 *.mid.block_1 / *.mid.block_2
    *.mid_block.attentions.0.{to_q,to_k,to_v,proj}     *.mid.attn_1.{q,k,v,proj_out}
    (in a residual block) conv_shortcut                nin_shortcut
    conv_in, norm_out, conv_out, norm1/2, conv1/2      unchanged

A flat index N becomes a stage S and a block B: each stage holds R residual blocks (the encoder's
num_res_blocks, the decoder's num_res_blocks + 1) followed by its sampler, for the first D stages (D =
log2 of the spatial factor); stages after those have no sampler. R and D are read from the names.
Names that match no rule are returned unchanged, so a loader reports them as unexpected tensors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FLAT = re.compile(r"(encoder\.down_blocks|decoder\.up_blocks)\.(\d+)\.(.+)")
_MID = re.compile(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)")
_ATTENTION_PARTS = {"to_q": "q", "to_k": "k", "to_v": "v", "proj": "proj_out", "norm": "norm"}
_HALVES = {"encoder.down_blocks": ("encoder.down", "downsample"), "decoder.up_blocks": ("decoder.up", "upsample")}
_SAMPLER_PARTS = ("conv.weight", "conv.bias")


@dataclass(frozen=True)
class StageLayout:
    """How one half's flat list divides into stages: resnets per stage, and how many stages end in a sampler."""

    resnets: int
    samplers: int

    def locate(self, index: int) -> tuple[int, int | None]:
        """Flat index -> (stage, block), block None for the stage's sampler."""
        stage_length = self.resnets + 1
        if index < self.samplers * stage_length:
            stage, position = divmod(index, stage_length)
            return stage, (None if position == self.resnets else position)
        stage, block = divmod(index - self.samplers * stage_length, max(self.resnets, 1))
        return self.samplers + stage, block


# The released VAE: 2 residual blocks per encoder stage, 3 per decoder stage, 5 samplers on each side.
RELEASED = {"encoder.down_blocks": StageLayout(2, 5), "decoder.up_blocks": StageLayout(3, 5)}


def _resnet_part(rest: str) -> str:
    return "nin_shortcut." + rest[len("conv_shortcut."):] if rest.startswith("conv_shortcut.") else rest


def diffusers_key_to_comfyui(key: str, layouts: dict[str, StageLayout] = RELEASED) -> str:
    """One diffusers name -> its ComfyUI / Tencent name."""
    if m := _FLAT.fullmatch(key):
        half, index, rest = m[1], int(m[2]), m[3]
        prefix, sampler = _HALVES[half]
        stage, block = layouts[half].locate(index)
        if block is None:
            return f"{prefix}.{stage}.{sampler}.{rest}"
        return f"{prefix}.{stage}.block.{block}.{_resnet_part(rest)}"
    if m := _MID.fullmatch(key):
        half, kind, index, rest = m[1], m[2], int(m[3]), m[4]
        if kind == "resnets":
            return f"{half}.mid.block_{index + 1}.{_resnet_part(rest)}"
        head, _, tail = rest.partition(".")
        return f"{half}.mid.attn_{index + 1}.{_ATTENTION_PARTS.get(head, head)}.{tail}"
    return key


def stage_layouts(keys) -> dict[str, StageLayout]:
    """The stage division of each half of a diffusers-named state dict (RELEASED for the released VAE).

    A sampler is a flat entry holding only `conv.weight` / `conv.bias`; the resnets before the first
    sampler make one stage. Without samplers the whole list is taken as one stage."""
    layouts = {}
    for half in _HALVES:
        parts: dict[int, set[str]] = {}
        for key in keys:
            if (m := _FLAT.fullmatch(key)) and m[1] == half:
                parts.setdefault(int(m[2]), set()).add(m[3])
        samplers = sorted(i for i, names in parts.items() if names <= set(_SAMPLER_PARTS))
        resnets = samplers[0] if samplers else len(parts)
        layouts[half] = StageLayout(resnets, len(samplers))
    return layouts


def diffusers_to_comfyui(keys) -> dict[str, str]:
    """{diffusers name: ComfyUI name} for every name in `keys` (a state dict's keys)."""
    keys = list(keys)
    layouts = stage_layouts(keys)
    return {k: diffusers_key_to_comfyui(k, layouts) for k in keys}
