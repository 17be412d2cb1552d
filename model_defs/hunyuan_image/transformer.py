"""The HunyuanImage 2.1 diffusion transformer (base, MeanFlow-distilled, and the refiner's network).

A HunyuanVideo-style MMDiT built from the shared blocks in model_defs/dit: 20 double-stream then 40
single-stream blocks at hidden 3584 (28 heads of 128), 2-D RoPE (64, 64) with theta 256 over the (row,
column) of each latent cell (patch 1 over the 64-channel latent of the 32x VAE). Parameter names are the
ComfyUI layout (manifest hunyuanimage21_dit.comfyui.json), so a file in that layout loads by assignment.

Conditioning:
- vec = time_in(t); MeanFlow (distilled): vec = (vec + time_r_in(t_r)) / 2 with t_r the end of the step;
  guidance-distilled: vec += guidance_in(1000 * guidance). (diffusers HunyuanImageCombinedTimeGuidance-
  Embedding and ComfyUI compute the same; the timestep features are sinusoidal(256, cos first).)
- The refiner's checkpoint has time_r_in too (the official config sets use_meanflow=True), but the official
  refiner pipeline never passes timesteps_r, so the official refiner computes vec = time_in(t) +
  guidance_in(1000 * guidance). diffusers' refiner gets there by dropping time_r_in from its checkpoint,
  ComfyUI by disable_time_r. Here a refiner network uses time_r_in only when timestep_r is passed
  explicitly: it never derives one from the sampler's sigmas (tests/test_hunyuan_refiner.py).
- The refiner takes [B, 128, 1, H, W]: the noisy 64-channel latent and the 64-channel conditioning latent
  concatenated on channels (refiner.py), 3-D patch (1, 1, 1), RoPE over (frame, row, column) with the frame
  always 0 (an identity rotation on the frame axis' dims).
- text: the Qwen2.5-VL states go through the token refiner (`txt_in`, dit/token_refiner.py); ByT5 glyph
  states (if any) through `byt5_in` (LayerNorm -> 1472 -> 2048 -> GELU -> 2048 -> GELU -> hidden); the
  two are concatenated, Qwen first.

The joint sequence is [image; text; glyph text]. Text tokens carry no position (zero RoPE angles, an
exact identity rotation), so attention sees them as a set, and padded tokens are excluded with one key
mask built once per forward. diffusers instead moves the real tokens of each sample to the front and
masks the rest; with position-free text the two are the same computation up to summation order
(checked against diffusers at max abs 1e-5 in tests/test_hunyuan_transformer.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from ..attention import resolve_backend
from ..dit.double_stream import DoubleStreamBlock
from ..dit.final_layer import FinalLayer
from ..dit.hooks import BlockHooks, run_double_blocks, run_single_blocks
from ..dit.patchify import PatchEmbed, grid_positions, pad_to_patches, patch_grid, unpatchify
from ..dit.single_stream import SingleStreamBlock
from ..dit.token_refiner import TokenRefiner
from ..embeddings import MLPEmbedder, sinusoidal_embedding
from ..rope import RotaryTable, rope_angles


@dataclass(frozen=True)
class HunyuanImageConfig:
    """Defaults: the published base model. Distilled = base + guidance_embed + meanflow. The refiner:
    hidden 3328, 26 heads, patch (1, 1, 1), in 128 (noisy + conditioning latent), out 64, axes (16, 56, 56),
    guidance + meanflow, no ByT5."""

    hidden_size: int = 3584
    num_heads: int = 28
    depth_double: int = 20
    depth_single: int = 40
    in_channels: int = 64
    out_channels: int = 64
    patch_size: tuple[int, ...] = (1, 1)
    axes_dims: tuple[int, ...] = (64, 64)
    rope_theta: float = 256.0
    context_dim: int = 3584
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    byt5: bool = True
    guidance_embed: bool = False
    meanflow: bool = False
    refiner_depth: int = 2
    byt5_in_dim: int = 1472
    byt5_hidden_dim: int = 2048

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def variant(self) -> str:
        """"refiner" (3-D patch, or a conditioning latent concatenated to the input: in != out channels),
        "distilled" (embedded guidance and/or MeanFlow) or "base"."""
        if len(self.patch_size) == 3 or self.in_channels != self.out_channels:
            return "refiner"
        if self.guidance_embed or self.meanflow:
            return "distilled"
        return "base"


def _block_count(shapes: Mapping[str, Sequence[int]], prefix: str) -> int:
    indices = {int(k[len(prefix):].split(".", 1)[0]) for k in shapes if k.startswith(prefix)}
    if indices and indices != set(range(len(indices))):
        raise ValueError(f"{prefix}N blocks are not numbered 0..{len(indices) - 1}: {sorted(indices)}")
    return len(indices)


def rope_axes_for(head_dim: int, spatial_axes: int) -> tuple[int, ...]:
    """The published split of a 128-dim head: (64, 64) over (row, column) for 2-D patches and
    (16, 56, 56) over (frame, row, column) for 3-D; narrower heads (test configs) keep the proportions."""
    if spatial_axes == 2:
        return (head_dim // 2, head_dim // 2)
    frame = head_dim // 8
    return (frame, (head_dim - frame) // 2, (head_dim - frame) // 2)


def config_from_shapes(shapes: Mapping[str, Sequence[int]]) -> HunyuanImageConfig:
    """Read the configuration from tensor names and shapes in the network's (ComfyUI) layout, no prefix.
    Raises KeyError when a required tensor is absent, ValueError when the shapes do not fit together."""
    hidden, in_channels, *patch = shapes["img_in.proj.weight"]
    if len(patch) not in (2, 3):
        raise ValueError(f"img_in.proj.weight has shape {list(shapes['img_in.proj.weight'])}: not a 2-D or 3-D patch")
    depth_double = _block_count(shapes, "double_blocks.")
    depth_single = _block_count(shapes, "single_blocks.")
    if depth_double:
        head_dim = shapes["double_blocks.0.img_attn.norm.query_norm.scale"][0]
        mlp_hidden = shapes["double_blocks.0.img_mlp.0.weight"][0]
        qkv_bias = "double_blocks.0.img_attn.qkv.bias" in shapes
    elif depth_single:
        head_dim = shapes["single_blocks.0.norm.query_norm.scale"][0]
        mlp_hidden = shapes["single_blocks.0.linear2.weight"][1] - hidden
        qkv_bias = True
    else:
        raise ValueError("no double_blocks.* or single_blocks.* tensors: not a HunyuanImage/HunyuanVideo DiT")
    if hidden % head_dim:
        raise ValueError(f"hidden size {hidden} is not a whole number of {head_dim}-dim heads")
    out_features = shapes["final_layer.linear.weight"][0]
    cells = math.prod(patch)
    if out_features % cells:
        raise ValueError(f"final_layer.linear has {out_features} outputs, not a multiple of the patch's {cells} cells")
    byt5 = "byt5_in.fc1.weight" in shapes
    byt5_hidden, byt5_in = shapes["byt5_in.fc1.weight"] if byt5 else (2048, 1472)
    return HunyuanImageConfig(
        hidden_size=hidden,
        num_heads=hidden // head_dim,
        depth_double=depth_double,
        depth_single=depth_single,
        in_channels=in_channels,
        out_channels=out_features // cells,
        patch_size=tuple(patch),
        axes_dims=rope_axes_for(head_dim, len(patch)),
        context_dim=shapes["txt_in.input_embedder.weight"][1],
        mlp_ratio=mlp_hidden / hidden,
        qkv_bias=qkv_bias,
        byt5=byt5,
        guidance_embed="guidance_in.in_layer.weight" in shapes,
        meanflow="time_r_in.in_layer.weight" in shapes,
        refiner_depth=_block_count(shapes, "txt_in.individual_token_refiner.blocks."),
        byt5_in_dim=byt5_in,
        byt5_hidden_dim=byt5_hidden,
    )


class ByT5Mapper(torch.nn.Module):
    """`byt5_in`: LayerNorm(in) -> fc1 -> GELU -> fc2 -> GELU -> fc3, glyph-encoder states to the model width."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, operations, dtype=None, device=None):
        super().__init__()
        self.layernorm = operations.LayerNorm(in_dim, eps=1e-5, dtype=dtype, device=device)
        self.fc1 = operations.Linear(in_dim, hidden_dim, bias=True, dtype=dtype, device=device)
        self.fc2 = operations.Linear(hidden_dim, hidden_dim, bias=True, dtype=dtype, device=device)
        self.fc3 = operations.Linear(hidden_dim, out_dim, bias=True, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.gelu(self.fc1(self.layernorm(x)))
        return self.fc3(torch.nn.functional.gelu(self.fc2(x)))


def timestep_features(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B] values in timestep units -> [B, 256] sinusoidal features (cos first), as every embedder here takes."""
    return sinusoidal_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0).to(dtype)


def meanflow_end_timestep(transformer_options: Mapping) -> torch.Tensor | None:
    """The MeanFlow end time of the current step, from ComfyUI's sampler bookkeeping: the sigma after the
    current one in transformer_options["sample_sigmas"], times 1000 (0 after the last); None when the
    options do not say (no sampler, or a sigma not on the schedule). One device sync per forward."""
    sigmas, schedule = transformer_options.get("sigmas"), transformer_options.get("sample_sigmas")
    if sigmas is None or schedule is None:
        return None
    schedule = schedule.reshape(-1)
    current = sigmas.reshape(-1)[0].to(schedule.device)
    hits = torch.nonzero(schedule == current)
    if hits.numel() == 0:
        return None
    following = int(hits[0, 0]) + 1
    end = schedule[following] if following < schedule.numel() else schedule.new_zeros(())
    return end.reshape(1) * 1000


def _per_sample(values, batch: int, what: str) -> torch.Tensor:
    values = torch.as_tensor(values).reshape(-1)
    if values.shape[0] == batch:
        return values
    if values.shape[0] == 1:
        return values.expand(batch)
    raise ValueError(f"{what} has {values.shape[0]} values for a batch of {batch}")


def _repeat_to_batch(tensor: torch.Tensor | None, batch: int, what: str) -> torch.Tensor | None:
    """A conditioning tensor whose batch divides the latent batch, repeated to it (ComfyUI's rule)."""
    if tensor is None or tensor.shape[0] == batch:
        return tensor
    if batch % tensor.shape[0]:
        raise ValueError(f"{what} batch {tensor.shape[0]} does not divide latent batch {batch}")
    return tensor.repeat_interleave(batch // tensor.shape[0], dim=0)


def _key_mask(mask: torch.Tensor | None, batch: int, tokens: int, what: str, device) -> torch.Tensor | None:
    """A bool [batch, tokens] mask (True = real token) from a [batch or 1, tokens] one; no device sync."""
    if mask is None:
        return None
    if mask.ndim != 2 or mask.shape[1] != tokens:
        raise ValueError(f"{what} of shape {tuple(mask.shape)} does not fit {tokens} tokens")
    return _repeat_to_batch(mask, batch, what).to(device=device, dtype=torch.bool)


class HunyuanImageTransformer(torch.nn.Module):
    """The network; forward() takes and returns latents (see forward)."""

    def __init__(self, config: HunyuanImageConfig, operations, dtype=None, device=None, attention_backend="auto"):
        super().__init__()
        self.config = config
        self.dtype = dtype
        dim, heads = config.hidden_size, config.num_heads
        if sum(config.axes_dims) != config.head_dim:
            raise ValueError(f"RoPE axes {config.axes_dims} do not add up to the head dim {config.head_dim}")
        if len(config.axes_dims) != len(config.patch_size):
            raise ValueError(f"RoPE axes {config.axes_dims} do not fit a {len(config.patch_size)}-D patch")
        kw = dict(dtype=dtype, device=device)
        self.img_in = PatchEmbed(config.patch_size, config.in_channels, dim, operations, **kw)
        self.time_in = MLPEmbedder(256, dim, operations, **kw)
        self.guidance_in = MLPEmbedder(256, dim, operations, **kw) if config.guidance_embed else None
        self.time_r_in = MLPEmbedder(256, dim, operations, **kw) if config.meanflow else None
        self.txt_in = TokenRefiner(config.context_dim, dim, heads, config.refiner_depth, operations, **kw)
        self.byt5_in = (ByT5Mapper(config.byt5_in_dim, config.byt5_hidden_dim, dim, operations, **kw)
                        if config.byt5 else None)
        self.double_blocks = torch.nn.ModuleList([
            DoubleStreamBlock(dim, heads, operations, config.mlp_ratio, qkv_bias=config.qkv_bias, **kw)
            for _ in range(config.depth_double)
        ])
        self.single_blocks = torch.nn.ModuleList([
            SingleStreamBlock(dim, heads, operations, config.mlp_ratio, **kw) for _ in range(config.depth_single)
        ])
        out_features = math.prod(config.patch_size) * config.out_channels
        self.final_layer = FinalLayer(dim, out_features, operations, **kw)
        self.set_attention_backend(attention_backend)

    def set_attention_backend(self, backend: str) -> None:
        resolved = resolve_backend(backend)
        for block in (*self.double_blocks, *self.single_blocks):
            block.backend = resolved
        self.txt_in.set_attention_backend(resolved)
        self.attention_backend = resolved

    def _to_grid(self, x: torch.Tensor) -> torch.Tensor:
        """The latent as [B, C, *spatial] with as many spatial axes as the patch has, checked."""
        spatial = len(self.config.patch_size)
        if spatial == 2 and x.ndim == 5:
            if x.shape[2] != 1:
                raise ValueError(f"HunyuanImage 2.1 generates single images; got a latent with {x.shape[2]} frames")
            x = x[:, :, 0]
        elif spatial == 3 and x.ndim == 4:
            x = x[:, :, None]
        if x.ndim != 2 + spatial:
            raise ValueError(f"expected a [B, C, {'T, ' if spatial == 3 else ''}H, W] latent, got shape {tuple(x.shape)}")
        if x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"the HunyuanImage 2.1 {self.config.variant} network takes {self.config.in_channels}-channel latents; "
                f"got {x.shape[1]} channels (a latent from another family's VAE or empty-latent node?)"
            )
        return x

    def _embed_vec(self, timestep, guidance, timestep_r, disable_time_r, transformer_options, batch, dtype):
        vec = self.time_in(timestep_features(timestep, dtype))
        if self.time_r_in is not None and not disable_time_r:
            if timestep_r is None and self.config.variant != "refiner":
                timestep_r = meanflow_end_timestep(transformer_options)
            if timestep_r is not None:
                end = _per_sample(timestep_r, batch, "timestep_r").to(timestep.device)
                vec = (vec + self.time_r_in(timestep_features(end, dtype))) / 2
        if self.guidance_in is not None and guidance is not None:
            scale = _per_sample(guidance, batch, "guidance").to(device=timestep.device, dtype=torch.float32)
            vec = vec + self.guidance_in(timestep_features(scale * 1000, dtype))
        return vec

    def _embed_text(self, context, attention_mask, txt_byt5, txt_byt5_mask, timestep, batch, dtype):
        """The text part of the joint sequence, [refined Qwen2.5-VL tokens; mapped ByT5 tokens], and its key
        mask (bool [B, tokens], None when every token is real)."""
        device = timestep.device
        context = _repeat_to_batch(context, batch, "text").to(device=device, dtype=dtype)
        text_mask = _key_mask(attention_mask, batch, context.shape[1], "attention mask", device)
        glyph_mask, glyph_tokens = None, 0
        if self.byt5_in is not None and txt_byt5 is not None:
            txt_byt5 = _repeat_to_batch(txt_byt5, batch, "glyph text").to(device=device, dtype=dtype)
            glyph_mask = _key_mask(txt_byt5_mask, batch, txt_byt5.shape[1], "glyph text mask", device)
            glyph_tokens = txt_byt5.shape[1]
        text_keys = self._text_key_mask(text_mask, glyph_mask, context.shape[1], glyph_tokens, batch)
        if text_keys is None:
            text_mask = None  # every token is real: no masks anywhere (and the fast attention kernels)

        txt = self.txt_in(context, timestep, text_mask)
        if glyph_tokens:
            txt = torch.cat((txt, self.byt5_in(txt_byt5)), dim=1)
        return txt, text_keys

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        txt_byt5: torch.Tensor | None = None,
        txt_byt5_mask: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
        timestep_r: torch.Tensor | None = None,
        disable_time_r: bool = False,
        transformer_options: dict | None = None,
        control: dict | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """The flow velocity for latent x.

        x: [B, C, H, W] or [B, C, 1, H, W] (a 3-D-patch network: [B, C, T, H, W]), any H, W;
        timestep: [B] (or one value) in timestep units, sigma * 1000;
        context: [B, L, context_dim] Qwen2.5-VL states; attention_mask: [B, L], nonzero = real token;
        txt_byt5: [B, Lg, byt5_in_dim] ByT5 glyph states, or None (no glyph text; ignored by a network
            without byt5_in); txt_byt5_mask: [B, Lg], nonzero = real token, None = all real;
        guidance: [B] embedded guidance in user units (3.25, ...), used by guidance-distilled networks;
        timestep_r: [B] MeanFlow end time in timestep units, used by MeanFlow networks; when None it is
            read from transformer_options' sigmas (ComfyUI), except by the refiner, which (as the official
            refiner pipeline) uses time_r_in only when given timestep_r; disable_time_r: never use time_r_in;
        transformer_options / control: ComfyUI's block hooks and ControlNet adds (dit/hooks.py).
        Returns [B, out_channels, ...] in x's layout.
        """
        transformer_options = transformer_options if transformer_options is not None else {}
        config = self.config
        input_ndim = x.ndim
        grid_input = self._to_grid(x)
        spatial_shape = grid_input.shape[2:]
        grid_latent = pad_to_patches(grid_input, config.patch_size)
        grid = patch_grid(grid_latent.shape[2:], config.patch_size)
        batch, dtype, device = grid_latent.shape[0], grid_latent.dtype, grid_latent.device

        timestep = _per_sample(timestep, batch, "timestep").to(device)
        img = self.img_in(grid_latent)
        vec = self._embed_vec(timestep, guidance, timestep_r, disable_time_r, transformer_options, batch, dtype)
        txt, text_keys = self._embed_text(context, attention_mask, txt_byt5, txt_byt5_mask, timestep, batch, dtype)

        n_img = img.shape[1]
        positions = torch.cat((grid_positions(grid, device),
                               torch.zeros(txt.shape[1], len(grid), dtype=torch.long, device=device)))
        pe = RotaryTable(rope_angles(positions, config.axes_dims, config.rope_theta))
        key_mask = None
        if text_keys is not None:
            key_mask = torch.cat((text_keys.new_ones(batch, n_img), text_keys), dim=1)

        hooks = BlockHooks(transformer_options, control)
        args = {"vec": vec, "pe": pe, "attention_mask": key_mask}

        def call_double(block, img, txt, a):
            return block(img, txt, a["vec"], a["pe"], a["attention_mask"])

        def call_single(block, joint, a):
            return block(joint, a["vec"], a["pe"], a["attention_mask"])

        img, txt = run_double_blocks(self.double_blocks, img, txt, args, call_double, hooks, x=x)
        joint = run_single_blocks(self.single_blocks, torch.cat((img, txt), dim=1), args, call_single, hooks)
        out = self.final_layer(joint[:, :n_img], vec)

        out = unpatchify(out, grid, config.patch_size, config.out_channels)
        if tuple(out.shape[2:]) != tuple(spatial_shape):
            out = out[(..., *(slice(0, n) for n in spatial_shape))]
        if input_ndim == 5 and out.ndim == 4:
            out = out[:, :, None]
        elif input_ndim == 4 and out.ndim == 5:
            out = out[:, :, 0]
        return out

    @staticmethod
    def _text_key_mask(text_mask, glyph_mask, text_tokens: int, glyph_tokens: int, batch: int):
        """The key mask of the text part of the joint sequence [text; glyph text] (bool [B, text_tokens +
        glyph_tokens]), or None when every token is real. The forward's one device sync for masks."""
        if text_mask is None and glyph_mask is None:
            return None
        like = text_mask if text_mask is not None else glyph_mask
        parts = [m if m is not None else like.new_ones(batch, n)
                 for m, n in ((text_mask, text_tokens), (glyph_mask, glyph_tokens)) if n]
        keys = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        return None if bool(keys.all()) else keys
