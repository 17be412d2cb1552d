"""The Qwen-Image VAE for images: a Wan-2.1-architecture causal 3-D conv VAE (16 latent channels, 8x spatial).

Parameter names and shapes are exactly those of the ComfyUI file (`qwen_image_vae.safetensors`, the
Wan 2.1 original names: `encoder.conv1`, `encoder.downsamples.N.residual.{0,2,3,6}`, `.shortcut`,
`.resample.1`, `.time_conv`, `encoder.middle.{0,1,2}`, `encoder.head.{0,2}`, `conv1`, `conv2`,
`decoder.*`), so that file loads by plain assignment. Every conv weight keeps its stored 5-D shape.

Images only. The network is a video VAE, but an image is its first frame, and the first frame is special:

* Every causal 3-D conv pads the time axis with two zero frames *before* the input (and none after). For a
  single frame the only non-zero input under a 3-tap temporal kernel is the real frame under its last tap,
  so the 3-D conv equals a 2-D conv with the kernel's last temporal slice, `weight[:, :, -1]`.
* The temporal down/up-sampling convs (`time_conv`) are skipped on the first frame by the reference code
  (the encoder only caches the frame; the decoder marks it "Rep" and does not double it).

So the image path runs as 2-D convs on [B, C, H, W]: a third of the compute and activation memory of
the zero-padded 3-D convs, and the much faster 2-D conv kernels, while the parameters keep their 5-D
layout. The `time_conv` parameters are held (the file has them) but never used.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import StandaloneOps, cast_like
from ..vae_tiling import crop_to_multiple, tiled_decode, tiled_encode


@dataclass(frozen=True)
class QwenImageVAEConfig:
    """Values of the released Qwen-Image VAE (the Wan 2.1 VAE architecture)."""

    dim: int = 96  # channels of the first (full resolution) stage
    z_dim: int = 16  # latent channels
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)  # channels of each stage, in units of `dim`
    num_res_blocks: int = 2  # residual blocks per encoder stage (the decoder has one more)
    temperal_downsample: tuple[bool, ...] = (False, True, True)  # (sic, upstream spelling) per downsample
    image_channels: int = 3

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def temperal_upsample(self) -> tuple[bool, ...]:
        return tuple(reversed(self.temperal_downsample))


# --- layers ------------------------------------------------------------------------------------------


class ChannelRMSNorm(nn.Module):
    """RMS norm over the channel axis (dim 1): x / ||x|| * sqrt(C) * gamma, as F.normalize computes it.

    The norm is computed in float32 for half-precision inputs, like the reference; the product is formed
    in the input dtype so no full-size float32 copy of the activation is kept.
    """

    def __init__(self, channels: int, gamma_shape: tuple[int, ...], dtype=None, device=None):
        super().__init__()
        self.scale = channels ** 0.5
        self.gamma = nn.Parameter(torch.ones(gamma_shape, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True, dtype=torch.float32)
        factor = (self.scale / norm.clamp_min_(1e-12)).to(x.dtype)  # F.normalize's eps
        gamma = cast_like(self.gamma, x).reshape(1, -1, *([1] * (x.ndim - 2)))
        return (x * factor).mul_(gamma)


class _FirstFrameCausalConv:
    """Mixin for a Conv3d class: the causal 3-D conv applied to a lone first frame, as a 2-D conv.

    Causal padding puts two zero frames before the frame, so only the kernel's last temporal slice ever
    meets data (see the module docstring). Slicing before casting moves/casts only a third of the weight.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = cast_like(self.weight[:, :, -1], x)
        bias = cast_like(self.bias, x)
        return F.conv2d(x, weight, bias, stride=self.stride[1:], padding=self.padding[1:])


@functools.lru_cache(maxsize=None)
def _first_frame_conv_class(conv3d_class: type) -> type:
    """The host's Conv3d (ours, or ComfyUI's ops) with the first-frame forward; one class per host class."""
    return type(f"FirstFrameCausal{conv3d_class.__name__}", (_FirstFrameCausalConv, conv3d_class), {})


class _Layers:
    """Builds layers from an `operations` namespace with the module's dtype/device."""

    def __init__(self, operations, dtype, device):
        self.ops = operations
        self.factory = {"dtype": dtype, "device": device}
        self._causal = _first_frame_conv_class(operations.Conv3d)

    def causal_conv(self, c_in: int, c_out: int, kernel: int) -> nn.Module:
        return self._causal(c_in, c_out, kernel, padding=kernel // 2, **self.factory)

    def conv2d(self, c_in: int, c_out: int, kernel: int, **kwargs) -> nn.Module:
        return self.ops.Conv2d(c_in, c_out, kernel, **kwargs, **self.factory)

    def time_conv(self, c_in: int, c_out: int, **kwargs) -> nn.Module:
        # Stored for the file's sake; the image path never calls it (frames after the first only).
        return self.ops.Conv3d(c_in, c_out, (3, 1, 1), **kwargs, **self.factory)

    def norm(self, channels: int, spatial_dims: int) -> ChannelRMSNorm:
        return ChannelRMSNorm(channels, (channels,) + (1,) * spatial_dims, **self.factory)


class ResidualBlock(nn.Module):
    """norm, SiLU, conv, norm, SiLU, (dropout), conv; plus a 1x1 shortcut when the width changes.

    The Sequential keeps the reference's indices (0, 2, 3, 6 hold weights) so the names match the file.
    """

    def __init__(self, c_in: int, c_out: int, layers: _Layers):
        super().__init__()
        self.residual = nn.Sequential(
            layers.norm(c_in, 3), nn.SiLU(inplace=True), layers.causal_conv(c_in, c_out, 3),
            layers.norm(c_out, 3), nn.SiLU(inplace=True), nn.Identity(),  # dropout slot (inference: none)
            layers.causal_conv(c_out, c_out, 3),
        )
        self.shortcut = layers.causal_conv(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x).add_(self.shortcut(x))


class AttentionBlock(nn.Module):
    """Single-head self-attention over the positions of a frame (used in the middle of both halves)."""

    def __init__(self, channels: int, layers: _Layers):
        super().__init__()
        self.norm = layers.norm(channels, 2)
        self.to_qkv = layers.conv2d(channels, channels * 3, 1)
        self.proj = layers.conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=1)
        q, k, v = (t.flatten(2).transpose(1, 2).unsqueeze(1) for t in (q, k, v))  # [B, 1, HW, C]
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return self.proj(out).add_(x)


class Upsample2x(nn.Module):
    """Nearest 2x upsampling ("nearest-exact" at an exact factor of 2 copies each pixel into a 2x2 block)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest-exact")


class Downsample(nn.Module):
    """Spatial /2: pad right and bottom by one, 3x3 conv with stride 2."""

    def __init__(self, channels: int, temporal: bool, layers: _Layers):
        super().__init__()
        self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), layers.conv2d(channels, channels, 3, stride=2))
        if temporal:
            self.time_conv = layers.time_conv(channels, channels, stride=(2, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resample(x)


class Upsample(nn.Module):
    """Spatial x2 then a 3x3 conv that halves the channels."""

    def __init__(self, channels: int, temporal: bool, layers: _Layers):
        super().__init__()
        self.resample = nn.Sequential(Upsample2x(), layers.conv2d(channels, channels // 2, 3, padding=1))
        if temporal:
            self.time_conv = layers.time_conv(channels, channels * 2, padding=(1, 0, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resample(x)


def _middle(channels: int, layers: _Layers) -> nn.Sequential:
    return nn.Sequential(
        ResidualBlock(channels, channels, layers), AttentionBlock(channels, layers),
        ResidualBlock(channels, channels, layers),
    )


def _head(c_in: int, c_out: int, layers: _Layers) -> nn.Sequential:
    return nn.Sequential(layers.norm(c_in, 3), nn.SiLU(inplace=True), layers.causal_conv(c_in, c_out, 3))


class Encoder(nn.Module):
    def __init__(self, config: QwenImageVAEConfig, layers: _Layers):
        super().__init__()
        widths = [config.dim * m for m in (1,) + tuple(config.dim_mult)]
        self.conv1 = layers.causal_conv(config.image_channels, widths[0], 3)
        blocks = []
        last_stage = len(config.dim_mult) - 1
        for stage, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            for _ in range(config.num_res_blocks):
                blocks.append(ResidualBlock(c_in, c_out, layers))
                c_in = c_out
            if stage != last_stage:
                blocks.append(Downsample(c_out, config.temperal_downsample[stage], layers))
        self.downsamples = nn.Sequential(*blocks)
        self.middle = _middle(widths[-1], layers)
        # Mean and log-variance: 2 * z_dim channels.
        self.head = _head(widths[-1], config.z_dim * 2, layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.middle(self.downsamples(self.conv1(images))))


class Decoder(nn.Module):
    def __init__(self, config: QwenImageVAEConfig, layers: _Layers):
        super().__init__()
        mult = tuple(config.dim_mult)
        widths = [config.dim * m for m in (mult[-1],) + mult[::-1]]
        self.conv1 = layers.causal_conv(config.z_dim, widths[0], 3)
        self.middle = _middle(widths[0], layers)
        blocks = []
        last_stage = len(mult) - 1
        for stage, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            if stage > 0:
                c_in //= 2  # the previous stage's upsampling conv halved the channels
            for _ in range(config.num_res_blocks + 1):
                blocks.append(ResidualBlock(c_in, c_out, layers))
                c_in = c_out
            if stage != last_stage:
                blocks.append(Upsample(c_out, config.temperal_upsample[stage], layers))
        self.upsamples = nn.Sequential(*blocks)
        self.head = _head(widths[-1], config.image_channels, layers)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.head(self.upsamples(self.middle(self.conv1(latent))))


# --- the VAE -------------------------------------------------------------------------------------------


class QwenImageVAE(nn.Module):
    """Encode images to raw latents and decode them back (single frames; see the module docstring).

    Inputs are computed in their own dtype and on their own device: weights are cast at use, so a bf16
    file can run in float32, or stay on the CPU while activations run on a GPU.
    """

    def __init__(self, config: QwenImageVAEConfig = QwenImageVAEConfig(), operations=StandaloneOps,
                 dtype=None, device=None):
        super().__init__()
        if len(config.temperal_downsample) != len(config.dim_mult) - 1:
            raise ValueError("temperal_downsample needs one entry per downsampling (len(dim_mult) - 1)")
        self.config = config
        self.downscale = config.downscale
        self.latent_channels = config.z_dim
        layers = _Layers(operations or StandaloneOps, dtype, device)
        self.encoder = Encoder(config, layers)
        self.conv1 = layers.causal_conv(config.z_dim * 2, config.z_dim * 2, 1)  # "quant_conv"
        self.conv2 = layers.causal_conv(config.z_dim, config.z_dim, 1)  # "post_quant_conv"
        self.decoder = Decoder(config, layers)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] or [B, 3, 1, H, W] in [-1, 1] -> raw latent [B, 16, 1, H/8, W/8].

        The latent is the posterior's mode (its mean), as diffusers' `latent_dist.mode()`. Like ComfyUI's
        VAEEncode, an image whose sides are not multiples of 8 is centre-cropped to the nearest smaller
        multiple (at most 7 pixels are dropped per side pair) rather than padded or rejected.
        """
        images = single_frame(images, "images", self.config.image_channels)
        images = crop_to_multiple(images, self.downscale)
        moments = self.conv1(self.encoder(images))
        return moments[:, : self.latent_channels].unsqueeze(2)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Raw latent [B, 16, 1, h, w] or [B, 16, h, w] -> images [B, 3, 8h, 8w], clamped to [-1, 1]."""
        latent = single_frame(latent, "latent", self.latent_channels)
        images = self.decoder(self.conv2(latent))
        return images.clamp_(-1.0, 1.0)

    def decode_memory(self, latent_shape, dtype: torch.dtype) -> int:
        """Bytes a whole-image decode needs at its peak: about five live activations of the widest stage
        (dim channels) at full resolution, plus the output."""
        height, width = latent_shape[-2] * self.downscale, latent_shape[-1] * self.downscale
        per_pixel = 5 * self.config.dim + self.config.image_channels
        return latent_shape[0] * height * width * per_pixel * torch.empty(0, dtype=dtype).element_size()

    def encode_memory(self, image_shape, dtype: torch.dtype) -> int:
        """Bytes a whole-image encode needs at its peak (the full-resolution stage dominates, as in decode)."""
        height, width = image_shape[-2], image_shape[-1]
        per_pixel = 4 * self.config.dim + self.config.image_channels
        return image_shape[0] * height * width * per_pixel * torch.empty(0, dtype=dtype).element_size()

    def decode_tiled(self, latent: torch.Tensor, tile: int | None = None, overlap: int | None = None,
                     **kwargs) -> torch.Tensor:
        """`decode` in overlapping tiles of `tile` latent cells (see model_defs/vae_tiling.py)."""
        latent = single_frame(latent, "latent", self.latent_channels)
        return tiled_decode(self.decode, latent, self.downscale, tile=tile, overlap=overlap, **kwargs)

    def encode_tiled(self, images: torch.Tensor, tile: int | None = None, overlap: int | None = None,
                     **kwargs) -> torch.Tensor:
        """`encode` in overlapping tiles of `tile` latent cells; same cropping, same [B, 16, 1, h, w] output."""
        images = crop_to_multiple(single_frame(images, "images", self.config.image_channels), self.downscale)
        return tiled_encode(self.encode, images, self.downscale, tile=tile, overlap=overlap, **kwargs)


def single_frame(x: torch.Tensor, what: str, channels: int) -> torch.Tensor:
    """[B, C, H, W], or [B, C, 1, H, W] squeezed to it; anything else is a clear error."""
    if x.ndim == 5:
        if x.shape[2] != 1:
            raise ValueError(
                f"the Qwen-Image VAE here handles single images, but the {what} has {x.shape[2]} frames "
                f"(shape {list(x.shape)}); pass one frame at a time"
            )
        x = x[:, :, 0]
    if x.ndim != 4:
        raise ValueError(f"{what} must be [B, C, H, W] or [B, C, 1, H, W], got shape {list(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{what} must have {channels} channels, got shape {list(x.shape)}")
    return x


# --- configuration from a file's tensor shapes (ComfyUI names, no prefix) -----------------------------


def vae_config_from_shapes(shapes: dict) -> QwenImageVAEConfig:
    """The config of the network whose ComfyUI-named state dict has these shapes.

    Raises KeyError for a missing marker tensor and ValueError for an inconsistent layout.
    """
    first_conv = tuple(shapes["encoder.conv1.weight"])
    dim, image_channels = first_conv[0], first_conv[1]
    z_dim = tuple(shapes["conv2.weight"])[0]

    stages: list[list[int]] = [[]]  # output widths of the residual blocks of each encoder stage
    temporal: list[bool] = []
    index = 0
    while f"encoder.downsamples.{index}.residual.2.weight" in shapes or \
            f"encoder.downsamples.{index}.resample.1.weight" in shapes:
        prefix = f"encoder.downsamples.{index}."
        if prefix + "resample.1.weight" in shapes:
            temporal.append(prefix + "time_conv.weight" in shapes)
            stages.append([])
        else:
            stages[-1].append(tuple(shapes[prefix + "residual.2.weight"])[0])
        index += 1
    if any(k.startswith("encoder.downsamples.") and ".to_qkv." in k for k in shapes):
        raise ValueError("attention blocks inside the encoder stages are not supported (attn_scales)")

    num_res_blocks = len(stages[0])
    if num_res_blocks == 0 or any(len(s) != num_res_blocks for s in stages):
        raise ValueError(f"encoder stages have {[len(s) for s in stages]} residual blocks; expected equal counts")
    widths = [s[-1] for s in stages]
    if any(w % dim for w in widths):
        raise ValueError(f"stage widths {widths} are not multiples of the base width {dim}")
    return QwenImageVAEConfig(
        dim=dim, z_dim=z_dim, dim_mult=tuple(w // dim for w in widths), num_res_blocks=num_res_blocks,
        temperal_downsample=tuple(temporal), image_channels=image_channels,
    )
