"""The Qwen-Image MMDiT: double-stream transformer blocks with MSRoPE.

Parameter names are those of the published checkpoints (the ComfyUI and diffusers layouts are identical),
so loading is a straight assignment. Text and image tokens keep separate weights (projections, MLPs,
modulation) and meet in one joint attention, text first.

MSRoPE: image tokens get (frame, row, column) positions with rows and columns centred on zero, so the
layout is resolution-agnostic; text tokens sit on the diagonal (p, p, p) starting just past the largest
image half-extent, so they never collide with image positions.

Qwen-Image-Edit (Edit, 2509, 2511): reference latents are packed like the noisy latent and appended after
its tokens as more images (frame 1, 2, ...; see edit.py for the placement rules); only the noisy image's
tokens come out. For 2511 (`zero_cond_t`) the reference tokens are modulated with the timestep-zero
embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from ..attention import attention, normalize_key_mask, resolve_backend
from ..dit.hooks import BlockHooks, run_double_blocks
from ..embeddings import TimestepMLP, sinusoidal_embedding
from ..rope import RotaryTable, apply_rope, rope_angles
from . import family
from .edit import ZERO_COND_MARKER, reference_placements, resolve_method


@dataclass(frozen=True)
class QwenImageConfig:
    in_channels: int = 64
    out_channels: int = 16
    patch_size: int = 2
    num_layers: int = 60
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 3584
    axes_dims_rope: tuple[int, int, int] = (16, 56, 56)
    rope_theta: float = 10000.0
    # Edit-2511: reference tokens are modulated at timestep zero by default (diffusers' `zero_cond_t`,
    # ComfyUI's default reference method "index_timestep_zero"). Read from the file's marker tensor.
    zero_cond_t: bool = False

    @property
    def inner_dim(self) -> int:
        return self.attention_head_dim * self.num_attention_heads

    @property
    def context_dim(self) -> int:
        """The width of the text features the network takes (every family's config names it so)."""
        return self.joint_attention_dim


def config_from_shapes(shapes: Mapping[str, Sequence[int]]) -> QwenImageConfig:
    """Read the configuration from tensor names and shapes (no prefix). Raises KeyError if a key is absent."""
    inner, in_channels = shapes["img_in.weight"]
    head_dim = shapes["transformer_blocks.0.attn.norm_q.weight"][0]
    out_features = shapes["proj_out.weight"][0]
    patch = family.PATCH_SIZE
    num_layers = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("transformer_blocks."))
    # The published model splits its 128-dim heads as (16, 56, 56) over (frame, height, width);
    # narrower heads (test configs) keep those proportions.
    frame_dim = head_dim // 8
    spatial_dim = (head_dim - frame_dim) // 2
    return QwenImageConfig(
        in_channels=in_channels,
        out_channels=out_features // (patch * patch),
        patch_size=patch,
        num_layers=num_layers,
        attention_head_dim=head_dim,
        num_attention_heads=inner // head_dim,
        joint_attention_dim=shapes["txt_in.weight"][1],
        axes_dims_rope=(frame_dim, spatial_dim, spatial_dim),
        zero_cond_t=ZERO_COND_MARKER in shapes,
    )


@dataclass
class ImageInput:
    """One image's tokens in the joint sequence: its latent grid (in patches), MSRoPE frame index, and an
    offset (in patches) of its centred rows and columns (ComfyUI's "offset" reference placement only)."""

    frame: int
    height: int
    width: int
    frames: int = 1
    h_offset: int = 0
    w_offset: int = 0

    @property
    def tokens(self) -> int:
        return self.frames * self.height * self.width


def _centred(length: int, device) -> torch.Tensor:
    # Rows/columns -ceil(n/2) .. floor(n/2)-1, the official MSRoPE layout.
    return torch.arange(length, device=device) - (length - length // 2)


def msrope_positions(images: list[ImageInput], text_tokens: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(text positions [T, 3], image positions [sum of image tokens, 3]) for the joint sequence."""
    image_positions = []
    for image in images:
        f = torch.arange(image.frames, device=device) + image.frame
        h = _centred(image.height, device) + image.h_offset
        w = _centred(image.width, device) + image.w_offset
        grid = torch.stack(torch.meshgrid(f, h, w, indexing="ij"), dim=-1)
        image_positions.append(grid.reshape(-1, 3))
    text_start = max(max(image.height // 2, image.width // 2) for image in images)
    text = torch.arange(text_start, text_start + text_tokens, device=device)
    return text[:, None].expand(-1, 3), torch.cat(image_positions, dim=0)


@dataclass
class JointRope:
    text: RotaryTable
    image: RotaryTable


class GeluProjection(torch.nn.Module):
    def __init__(self, dim_in: int, dim_out: int, operations, dtype=None, device=None):
        super().__init__()
        self.proj = operations.Linear(dim_in, dim_out, bias=True, dtype=dtype, device=device)

    def forward(self, x):
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(torch.nn.Module):
    """net.0 (GELU-tanh projection to 4x) -> net.2 (back to dim); net.1 is the reference's dropout slot."""

    def __init__(self, dim: int, operations, dtype=None, device=None):
        super().__init__()
        self.net = torch.nn.ModuleList([
            GeluProjection(dim, 4 * dim, operations, dtype, device),
            torch.nn.Identity(),
            operations.Linear(4 * dim, dim, bias=True, dtype=dtype, device=device),
        ])

    def forward(self, x):
        for layer in self.net:
            x = layer(x)
        return x


class JointAttention(torch.nn.Module):
    """Separate q/k/v and output projections per stream, per-head RMS q/k norms, one joint attention."""

    def __init__(self, dim: int, heads: int, head_dim: int, operations, dtype=None, device=None):
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        self.backend = "sdpa"

        def linear():
            return operations.Linear(dim, dim, bias=True, dtype=dtype, device=device)

        def rms():
            return operations.RMSNorm(head_dim, eps=1e-6, dtype=dtype, device=device)

        self.to_q, self.to_k, self.to_v = linear(), linear(), linear()
        self.add_q_proj, self.add_k_proj, self.add_v_proj = linear(), linear(), linear()
        self.to_out = torch.nn.ModuleList([linear()])
        self.to_add_out = linear()
        self.norm_q, self.norm_k = rms(), rms()
        self.norm_added_q, self.norm_added_k = rms(), rms()

    def forward(self, img, txt, rope: JointRope, text_mask):
        def heads(x):
            return x.unflatten(-1, (self.heads, self.head_dim))

        img_q = apply_rope(self.norm_q(heads(self.to_q(img))), rope.image)
        img_k = apply_rope(self.norm_k(heads(self.to_k(img))), rope.image)
        img_v = heads(self.to_v(img))
        txt_q = apply_rope(self.norm_added_q(heads(self.add_q_proj(txt))), rope.text)
        txt_k = apply_rope(self.norm_added_k(heads(self.add_k_proj(txt))), rope.text)
        txt_v = heads(self.add_v_proj(txt))

        key_mask = None
        if text_mask is not None:
            image_keys = text_mask.new_ones((text_mask.shape[0], img.shape[1]))
            key_mask = torch.cat([text_mask, image_keys], dim=1)
        joint = attention(
            torch.cat([txt_q, img_q], dim=1),
            torch.cat([txt_k, img_k], dim=1),
            torch.cat([txt_v, img_v], dim=1),
            key_mask=key_mask,
            backend=self.backend,
        )
        text_tokens = txt.shape[1]
        return self.to_out[0](joint[:, text_tokens:]), self.to_add_out(joint[:, :text_tokens])


def _modulate(x, shift, scale, zero_from=None):
    """x * (1 + scale) + shift; with zero_from, shift and scale are [2B, D] (timesteps t, then 0) and tokens
    from zero_from on take the second half (reference tokens at timestep zero, Edit-2511)."""
    if zero_from is None:
        return x * (1 + scale[:, None]) + shift[:, None]
    b = x.shape[0]
    return torch.cat((_modulate(x[:, :zero_from], shift[:b], scale[:b]),
                      _modulate(x[:, zero_from:], shift[b:], scale[b:])), dim=1)


def _gated(gate, x, zero_from=None):
    """gate * x, split at zero_from as in _modulate."""
    if zero_from is None:
        return gate[:, None] * x
    b = x.shape[0]
    return torch.cat((gate[:b, None] * x[:, :zero_from], gate[b:, None] * x[:, zero_from:]), dim=1)


class QwenImageBlock(torch.nn.Module):
    def __init__(self, config: QwenImageConfig, operations, dtype=None, device=None):
        super().__init__()
        dim = config.inner_dim
        self.img_mod = torch.nn.Sequential(
            torch.nn.SiLU(), operations.Linear(dim, 6 * dim, bias=True, dtype=dtype, device=device)
        )
        self.txt_mod = torch.nn.Sequential(
            torch.nn.SiLU(), operations.Linear(dim, 6 * dim, bias=True, dtype=dtype, device=device)
        )
        self.attn = JointAttention(
            dim, config.num_attention_heads, config.attention_head_dim, operations, dtype, device
        )
        self.img_mlp = FeedForward(dim, operations, dtype, device)
        self.txt_mlp = FeedForward(dim, operations, dtype, device)
        self.dim = dim

    def _norm(self, x):
        return F.layer_norm(x, (self.dim,), eps=1e-6)

    def forward(self, img, txt, temb, rope: JointRope, text_mask=None, zero_from: int | None = None):
        """zero_from: None, or the first image token modulated at timestep zero; temb is then [2B, D], the
        embeddings of t and of 0 (text tokens take t)."""
        img_shift1, img_scale1, img_gate1, img_shift2, img_scale2, img_gate2 = self.img_mod(temb).chunk(6, dim=-1)
        if zero_from is not None:
            temb = temb[: img.shape[0]]
        txt_shift1, txt_scale1, txt_gate1, txt_shift2, txt_scale2, txt_gate2 = self.txt_mod(temb).chunk(6, dim=-1)

        img_attn, txt_attn = self.attn(
            _modulate(self._norm(img), img_shift1, img_scale1, zero_from),
            _modulate(self._norm(txt), txt_shift1, txt_scale1),
            rope,
            text_mask,
        )
        img = img + _gated(img_gate1, img_attn, zero_from)
        txt = txt + txt_gate1[:, None] * txt_attn

        img_mlp = self.img_mlp(_modulate(self._norm(img), img_shift2, img_scale2, zero_from))
        img = img + _gated(img_gate2, img_mlp, zero_from)
        txt = txt + txt_gate2[:, None] * self.txt_mlp(_modulate(self._norm(txt), txt_shift2, txt_scale2))

        if img.dtype == torch.float16:  # fp16 overflows in the deep blocks without this clamp
            img = img.clip(-65504, 65504)
            txt = txt.clip(-65504, 65504)
        return img, txt


class TimeEmbedding(torch.nn.Module):
    """Named `time_text_embed` in the checkpoint: sinusoidal(sigma * 1000) -> MLP."""

    def __init__(self, dim: int, operations, dtype=None, device=None):
        super().__init__()
        self.timestep_embedder = TimestepMLP(256, dim, operations, dtype, device)

    def forward(self, sigma: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        features = sinusoidal_embedding(sigma, 256, flip_sin_to_cos=True, downscale_freq_shift=0, scale=1000)
        return self.timestep_embedder(features.to(dtype))


class OutputNorm(torch.nn.Module):
    """Named `norm_out`: LayerNorm without affine, then scale/shift (in that order) from the timestep."""

    def __init__(self, dim: int, operations, dtype=None, device=None):
        super().__init__()
        self.linear = operations.Linear(dim, 2 * dim, bias=True, dtype=dtype, device=device)
        self.dim = dim

    def forward(self, x, temb):
        scale, shift = self.linear(F.silu(temb)).chunk(2, dim=-1)
        return F.layer_norm(x, (self.dim,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]


def pack_latent(latent: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/p)*(W/p), C*p*p] tokens (channel-major within each patch)."""
    b, c, h, w = latent.shape
    x = latent.view(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpack_tokens(tokens: torch.Tensor, height: int, width: int, patch: int) -> torch.Tensor:
    """Inverse of pack_latent for a grid of height x width latent cells."""
    b, _, features = tokens.shape
    c = features // (patch * patch)
    x = tokens.view(b, height // patch, width // patch, c, patch, patch)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, c, height, width)


class QwenImageTransformer(torch.nn.Module):
    """The network. forward() takes and returns latents, so both hosts call it the same way:

    x:         [B, C, H, W] or [B, C, 1, H, W] latent (normalised), any H, W (odd sizes are padded)
    timestep:  [B] sigma in [0, 1]
    context:   [B, L, joint_attention_dim] text hidden states
    attention_mask: optional [B, L], nonzero for real tokens
    ref_latents: optional list of reference latents (Qwen-Image-Edit), each [B or 1, C, h, w] or
               [B or 1, C, 1, h, w], normalised like x, sizes free (each its own); ComfyUI's keyword
    ref_latents_method: optional, ComfyUI's keyword: "index" (the official placement), "index_timestep_zero"
               (Edit-2511), "negative_index", "offset"/"uxo" (see edit.py); None = the model's default,
               "index_timestep_zero" when config.zero_cond_t, else "index"
    returns the flow velocity (noise - data) in x's shape (the noisy image's tokens only).
    """

    def __init__(self, config: QwenImageConfig, operations, dtype=None, device=None, attention_backend="auto"):
        super().__init__()
        self.config = config
        self.dtype = dtype
        dim = config.inner_dim
        self.time_text_embed = TimeEmbedding(dim, operations, dtype, device)
        self.txt_norm = operations.RMSNorm(config.joint_attention_dim, eps=1e-6, dtype=dtype, device=device)
        self.img_in = operations.Linear(config.in_channels, dim, bias=True, dtype=dtype, device=device)
        self.txt_in = operations.Linear(config.joint_attention_dim, dim, bias=True, dtype=dtype, device=device)
        self.transformer_blocks = torch.nn.ModuleList(
            [QwenImageBlock(config, operations, dtype, device) for _ in range(config.num_layers)]
        )
        self.norm_out = OutputNorm(dim, operations, dtype, device)
        patch_features = config.patch_size * config.patch_size * config.out_channels
        self.proj_out = operations.Linear(dim, patch_features, bias=True, dtype=dtype, device=device)
        if config.zero_cond_t:
            # The 2511 marker, as ComfyUI's network registers it: an empty persistent buffer, so that the
            # state dict equals the file's (a marked file loads with no unexpected tensor, an unmarked one
            # with none missing) and a saved state dict keeps the marker.
            self.register_buffer(ZERO_COND_MARKER, torch.empty(0, device=device))
        # What the forward does when the caller names no reference method; a caller may change it (for
        # example from a diffusers transformer/config.json with "zero_cond_t": true, or a user's choice)
        # without touching the state dict.
        self.zero_cond_t = config.zero_cond_t
        self.set_attention_backend(attention_backend)
    def set_attention_backend(self, backend: str) -> None:
        resolved = resolve_backend(backend)
        for block in self.transformer_blocks:
            block.attn.backend = resolved
        self.attention_backend = resolved

    def _rope(self, images: list[ImageInput], text_tokens: int, device) -> JointRope:
        text_pos, image_pos = msrope_positions(images, text_tokens, device=device)
        axes, theta = self.config.axes_dims_rope, self.config.rope_theta
        return JointRope(RotaryTable(rope_angles(text_pos, axes, theta)), RotaryTable(rope_angles(image_pos, axes, theta)))

    def _to_grid(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Drop the frame axis and pad H, W up to whole patches; returns the original H, W."""
        if x.ndim == 5:
            if x.shape[2] != 1:
                raise ValueError(f"Qwen-Image generates single images; got a latent with {x.shape[2]} frames")
            x = x[:, :, 0]
        if x.ndim != 4:
            raise ValueError(f"expected a [B, C, H, W] latent, got shape {tuple(x.shape)}")
        expected = self.config.in_channels // (self.config.patch_size ** 2)
        if x.shape[1] != expected:
            raise ValueError(
                f"Qwen-Image latents have {expected} channels; got {x.shape[1]} "
                f"(a latent from another family's VAE or empty-latent node?)"
            )
        height, width = x.shape[-2:]
        p = self.config.patch_size
        pad_h, pad_w = (-height) % p, (-width) % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="circular")
        return x, (height, width)

    def _reference_tokens(self, ref_latents, method: str, batch: int,
                          dtype) -> tuple[list[torch.Tensor], list[ImageInput]]:
        """Each reference latent packed into tokens [B, n_k, in_channels], and its place in MSRoPE."""
        grids, sizes = [], []
        for k, ref in enumerate(ref_latents, start=1):
            if not isinstance(ref, torch.Tensor):
                raise ValueError(f"reference latent {k} is a {type(ref).__name__}, not a tensor")
            try:
                grid, size = self._to_grid(ref)
            except ValueError as error:
                raise ValueError(f"reference latent {k}: {error}") from None
            if grid.shape[0] != batch:
                if grid.shape[0] != 1:
                    raise ValueError(f"reference latent {k} has batch {grid.shape[0]}; the latent has {batch}")
                grid = grid.expand(batch, -1, -1, -1)
            grids.append(grid)
            sizes.append(size)
        p = self.config.patch_size
        places = reference_placements(sizes, method, p)
        tokens = [pack_latent(grid.to(dtype), p) for grid in grids]
        images = [ImageInput(frame=place.frame, height=place.height, width=place.width,
                             h_offset=place.h_offset, w_offset=place.w_offset) for place in places]
        return tokens, images

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        ref_latents: Sequence[torch.Tensor] | None = None,
        ref_latents_method: str | None = None,
        transformer_options: dict | None = None,
        control: dict | None = None,
        **kwargs,
    ) -> torch.Tensor:
        transformer_options = transformer_options or {}
        input_shape = x.shape
        grid, (height, width) = self._to_grid(x)
        p = self.config.patch_size
        batch = grid.shape[0]
        images = [ImageInput(frame=0, height=grid.shape[-2] // p, width=grid.shape[-1] // p)]

        if timestep.ndim == 0:
            timestep = timestep.expand(batch)
        if context.shape[0] != batch:
            if batch % context.shape[0]:
                raise ValueError(f"text batch {context.shape[0]} does not divide latent batch {batch}")
            repeats = batch // context.shape[0]
            context = context.repeat_interleave(repeats, dim=0)
            if attention_mask is not None:
                attention_mask = attention_mask.repeat_interleave(repeats, dim=0)

        dtype = grid.dtype
        packed = pack_latent(grid, p)
        image_tokens = packed.shape[1]
        zero_from = None
        if ref_latents:
            placement, timestep_zero = resolve_method(ref_latents_method, self.zero_cond_t)
            ref_tokens, ref_images = self._reference_tokens(ref_latents, placement, batch, dtype)
            packed = torch.cat([packed, *ref_tokens], dim=1)
            images += ref_images
            if timestep_zero:
                # The network's forward sees timesteps [t, 0]: image tokens take t, reference tokens 0.
                timestep = torch.cat([timestep, timestep * 0])
                zero_from = image_tokens
        elif ref_latents_method is not None:
            resolve_method(ref_latents_method, self.zero_cond_t)  # a misspelt name fails with or without refs

        img = self.img_in(packed)
        txt = self.txt_in(self.txt_norm(context.to(dtype)))
        temb = self.time_text_embed(timestep, dtype)
        text_mask = normalize_key_mask(attention_mask, batch, txt.shape[1])
        rope = self._rope(images, txt.shape[1], img.device)

        img = self._run_blocks(img, txt, temb, rope, text_mask, transformer_options, control, grid, zero_from)

        if img.shape[1] != image_tokens:
            img = img[:, :image_tokens]
        if zero_from is not None:
            temb = temb[:batch]
        out = self.proj_out(self.norm_out(img, temb))
        out = unpack_tokens(out, grid.shape[-2], grid.shape[-1], p)[:, :, :height, :width]
        return out.unsqueeze(2) if len(input_shape) == 5 else out

    def _run_blocks(self, img, txt, temb, rope, text_mask, transformer_options, control, grid, zero_from=None):
        """The block loop, honouring ComfyUI-style hooks (see dit/hooks.py); replacements get ComfyUI's
        Qwen-Image args {"img", "txt", "vec", "pe", "transformer_options"}. As in ComfyUI, "img" holds the
        reference tokens too (after the image's), and under timestep-zero modulation "vec" is the [2B, D]
        embedding of [t, 0]."""
        def call_block(block, img, txt, args):
            return block(img, txt, args["vec"], args["pe"], text_mask, zero_from)

        hooks = BlockHooks(transformer_options, control)
        img, _ = run_double_blocks(self.transformer_blocks, img, txt, {"vec": temb, "pe": rope}, call_block,
                                   hooks, x=grid)
        return img
