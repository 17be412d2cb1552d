"""The block loops of a DiT, honouring ComfyUI's hooks (plain dicts, so the standalone host can use them).

ComfyUI hands a diffusion model `transformer_options` and, for ControlNets, `control`:
- transformer_options["patches_replace"]["dit"][("double_block", i)] / [("single_block", i)]: a callable
  `replace(args, {"original_block": fn})` that runs instead of block i and returns {"img", "txt"} (double)
  or {"img"} (single); `fn(args)` runs the original block on whatever args the replacement passes on.
  `args` holds "img" ("txt") plus the family's shared block inputs under ComfyUI's names ("vec", "pe",
  and "attention_mask" where the native model passes one) and "transformer_options".
- transformer_options["patches"]["double_block"]: post-processors called after each double block with
  {"img", "txt", "x", "block_index", "transformer_options"}, returning {"img", "txt"}.
- control["input"][i] is added to the image tokens after double block i, control["output"][i] to the image
  tokens after single block i (ControlNets).
As ComfyUI's own loops do, "total_blocks", "block_type" and "block_index" are kept current in
transformer_options for code that reads them while a block runs.

Families supply `call_block(block, img, txt, args)` (double) / `call_block(block, x, args)` (single): how one
of their blocks is called from the args dict. Nothing here synchronises with the device.
"""

from __future__ import annotations

from typing import Callable

import torch


class BlockHooks:
    """The hooks found in one forward call's transformer_options and control."""

    def __init__(self, transformer_options: dict | None, control: dict | None = None):
        self.options = transformer_options if transformer_options is not None else {}
        self.replace = self.options.get("patches_replace", {}).get("dit", {})
        self.double_patches = self.options.get("patches", {}).get("double_block", [])
        control = control or {}
        self.control_input = control.get("input") or []
        self.control_output = control.get("output") or []

    def _enter(self, block_type: str, total: int) -> None:
        self.options["block_type"] = block_type
        self.options["total_blocks"] = total


def add_at(x: torch.Tensor, add: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """x with `add` [B, n, D] added to tokens offset .. offset + n (a new tensor: x is not modified)."""
    end = offset + add.shape[1]
    if offset == 0 and end == x.shape[1]:
        return x + add
    return torch.cat((x[:, :offset], x[:, offset:end] + add, x[:, end:]), dim=1)


def _control(adds, i):
    return adds[i] if i < len(adds) else None


def run_double_blocks(blocks, img: torch.Tensor, txt: torch.Tensor, args: dict, call_block: Callable,
                      hooks: BlockHooks, x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run double-stream blocks in order. args: the shared block inputs ("vec", "pe", ...), passed to
    replacements together with "img", "txt" and "transformer_options"; x: the model input, for patches."""
    hooks._enter("double", len(blocks))
    for i, block in enumerate(blocks):
        hooks.options["block_index"] = i
        replace = hooks.replace.get(("double_block", i))
        if replace is not None:
            def original_block(block_args, block=block):
                out_img, out_txt = call_block(block, block_args["img"], block_args["txt"], block_args)
                return {"img": out_img, "txt": out_txt}

            out = replace({"img": img, "txt": txt, **args, "transformer_options": hooks.options},
                          {"original_block": original_block})
            img, txt = out["img"], out["txt"]
        else:
            img, txt = call_block(block, img, txt, args)

        for patch in hooks.double_patches:
            out = patch({"img": img, "txt": txt, "x": x, "block_index": i, "transformer_options": hooks.options})
            img, txt = out["img"], out["txt"]

        add = _control(hooks.control_input, i)
        if add is not None:
            img = add_at(img, add)
    return img, txt


def run_single_blocks(blocks, x: torch.Tensor, args: dict, call_block: Callable, hooks: BlockHooks,
                      image_offset: int = 0) -> torch.Tensor:
    """Run single-stream blocks over the joint sequence x. args as for run_double_blocks; image_offset:
    where the image tokens start in x (control["output"] adds go there)."""
    hooks._enter("single", len(blocks))
    for i, block in enumerate(blocks):
        hooks.options["block_index"] = i
        replace = hooks.replace.get(("single_block", i))
        if replace is not None:
            def original_block(block_args, block=block):
                return {"img": call_block(block, block_args["img"], block_args)}

            x = replace({"img": x, **args, "transformer_options": hooks.options},
                        {"original_block": original_block})["img"]
        else:
            x = call_block(block, x, args)

        add = _control(hooks.control_output, i)
        if add is not None:
            x = add_at(x, add, image_offset)
    return x
