"""What the loaders need to know about a kind of text encoder, in one record per kind.

A family names the encoder kinds it takes (HunyuanImage 2.1: "qwen25_vl" and "byt5"); the text-encoder
loader detects the kind a file holds (loaders/detection.py), reads its configuration from the tensor
shapes, checks the file against a build on the meta device and names the tokenizer the host should look
for. File layouts (which names a file uses) are the loader's business, not the spec's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch


@dataclass(frozen=True)
class TextEncoderSpec:
    kind: str  # the detection family of the file: "qwen25_vl", "byt5"
    display_name: str  # for messages
    tokenizer_name: str  # the host's name for its tokenizer folder (ComfyUI ships "<name>_tokenizer/")
    # shapes in the network's own names -> config (KeyError / ValueError on nonsense)
    config_from_shapes: Callable[[Mapping[str, Sequence[int]]], object]
    # (config, operations=None, dtype=None) -> the network on the meta device, weights to be assigned
    build: Callable[..., torch.nn.Module]
    # False when the pack has a tokenizer of its own for the kind (ByT5's bytes need no vocabulary file)
    needs_tokenizer_files: bool = True
    # Name fragments of tensors the converter keeps at 8 bits at least (e.g. a vision tower in the same file)
    eight_bit_tensors: tuple[str, ...] = ()
