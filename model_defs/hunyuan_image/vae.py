"""The HunyuanImage 2.1 VAE: a 2-D convolutional VAE with 32x spatial compression and 64 latent channels.

Parameter names and shapes are exactly those of the ComfyUI file, which are also the official Tencent
names (`vae_2_1/pytorch_model.ckpt` holds them under `vae.`): `encoder.conv_in`, `encoder.down.N.block.M`,
`encoder.down.N.downsample.conv`, `encoder.mid.{block_1,attn_1,block_2}`, `encoder.norm_out`,
`encoder.conv_out`, and the mirror image in `decoder.*` (`decoder.up.N.block.M`, `decoder.up.N.upsample.conv`).
So those files load by plain assignment. diffusers' `AutoencoderKLHunyuanImage` holds the same tensors
under other names (loaders/keymaps/hunyuan_image_vae.py).

Structure (facts from diffusers' AutoencoderKLHunyuanImage and ComfyUI's comfy/ldm/hunyuan_video/vae.py,
which agree): GroupNorm(32)/SiLU residual blocks, single-head self-attention in the middle of each half,
no quant convs. What makes it a 32x VAE at 64 channels is its shortcuts around every resolution change:

* down: a 3x3 conv to a quarter of the next width, then space-to-depth (2x2 pixels -> 4x channels); plus
  the input itself moved space-to-depth and averaged over groups of channels to the next width;
* up: a 3x3 conv to four times the next width, then depth-to-space; plus the input with each channel
  repeated to that count, moved depth-to-space the same way;
* encoder head: the output conv plus the last activation averaged over channel groups to 2 x 64 channels
  (mean and log-variance); decoder input: the input conv plus the latent with each channel repeated.

Exactness: fp32 results equal diffusers' and ComfyUI's to float rounding (max abs 2.4e-6 and 3.2e-6
at tiny configs, see tests/test_hunyuan_vae.py). The only rearrangements are exact ones: the channel-repeat shortcut is added
before depth-to-space instead of after (both sides move through the same permutation, so every output
element is the same single addition), and activations are updated in place to save memory.

The latent is the VAE's raw posterior mean. The family's latent format multiplies it by the scaling factor
0.75289 (diffusers' config `scaling_factor`, ComfyUI's `latent_formats.HunyuanImage21.scale_factor`) for
the diffusion model; this module never applies it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import StandaloneOps
from ..vae_tiling import crop_to_multiple

NORM_GROUPS = 32
NORM_EPS = 1e-6


@dataclass(frozen=True)
class HunyuanImageVAEConfig:
    """Values of the released 32x VAE (`vae_2_1`), as ComfyUI's comfy/sd.py and diffusers' conversion
    script both give them."""

    block_out_channels: tuple[int, ...] = (128, 256, 512, 512, 1024, 1024)  # encoder stage widths
    latent_channels: int = 64
    num_res_blocks: int = 2  # residual blocks per encoder stage (the decoder has one more)
    ffactor_spatial: int = 32  # 2 ** (number of down/up-samplings)
    downsample_match_channel: bool = True  # a downsampling moves to the next stage's width
    upsample_match_channel: bool = True  # an upsampling moves to the next decoder stage's width
    in_channels: int = 3
    out_channels: int = 3

    @property
    def downscale(self) -> int:
        return self.ffactor_spatial

    @property
    def resamplings(self) -> int:
        return self.ffactor_spatial.bit_length() - 1

    def check(self) -> None:
        """ValueError for a configuration the network cannot be built from."""
        widths = self.block_out_channels
        f = self.ffactor_spatial
        if f < 1 or f & (f - 1):
            raise ValueError(f"ffactor_spatial must be a power of two, got {f}")
        if self.resamplings > len(widths) - 1:
            raise ValueError(f"{self.resamplings} down/up-samplings need at least {self.resamplings + 1} stages; "
                             f"block_out_channels has {len(widths)}")
        if self.num_res_blocks < 0:
            raise ValueError(f"num_res_blocks must be >= 0, got {self.num_res_blocks}")
        odd = [w for w in widths if w % NORM_GROUPS]
        if odd:
            raise ValueError(f"stage widths {odd} are not multiples of the {NORM_GROUPS} normalisation groups")
        z = self.latent_channels
        if widths[-1] % (2 * z):
            raise ValueError(f"the last stage width {widths[-1]} must be a multiple of 2 x {z} latent channels")
        for c_in, c_out in _resampling_widths(widths, self.resamplings, self.downsample_match_channel):
            if c_out % 4 or (4 * c_in) % c_out:
                raise ValueError(f"a downsampling from {c_in} to {c_out} channels cannot group channels evenly")
        decoder = tuple(reversed(widths))
        for c_in, c_out in _resampling_widths(decoder, self.resamplings, self.upsample_match_channel):
            if (4 * c_out) % c_in:
                raise ValueError(f"an upsampling from {c_in} to {c_out} channels cannot repeat channels evenly")


def _resampling_widths(widths, count: int, match_channel: bool) -> list[tuple[int, int]]:
    """(input, output) width of each resampling: after stage i, for the first `count` stages."""
    return [(widths[i], widths[i + 1] if match_channel else widths[i]) for i in range(count)]


# --- layers ------------------------------------------------------------------------------------------


class _Layers:
    """Builds layers from an `operations` namespace with the module's dtype/device."""

    def __init__(self, operations, dtype, device):
        self.ops = operations
        self.factory = {"dtype": dtype, "device": device}

    def conv(self, c_in: int, c_out: int, kernel: int) -> nn.Module:
        return self.ops.Conv2d(c_in, c_out, kernel, padding=kernel // 2, **self.factory)

    def norm(self, channels: int) -> nn.Module:
        return self.ops.GroupNorm(NORM_GROUPS, channels, eps=NORM_EPS, affine=True, **self.factory)


def _norm_silu(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.silu(norm(x), inplace=True)  # the norm's output is a fresh tensor: SiLU may overwrite it


class ResnetBlock(nn.Module):
    """norm, SiLU, 3x3 conv, norm, SiLU, 3x3 conv; plus the input (through a 1x1 conv if the width changes)."""

    def __init__(self, c_in: int, c_out: int, layers: _Layers):
        super().__init__()
        self.norm1 = layers.norm(c_in)
        self.conv1 = layers.conv(c_in, c_out, 3)
        self.norm2 = layers.norm(c_out)
        self.conv2 = layers.conv(c_out, c_out, 3)
        if c_in != c_out:
            self.nin_shortcut = layers.conv(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_norm_silu(self.norm1, x))
        h = self.conv2(_norm_silu(self.norm2, h))
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return h.add_(shortcut)


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions (1x1 conv projections), plus the input."""

    def __init__(self, channels: int, layers: _Layers):
        super().__init__()
        self.norm = layers.norm(channels)
        self.q = layers.conv(channels, channels, 1)
        self.k = layers.conv(channels, channels, 1)
        self.v = layers.conv(channels, channels, 1)
        self.proj_out = layers.conv(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        h = self.norm(x)
        q, k, v = (proj(h).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # [B, 1, HW, C], scale 1/sqrt(C)
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, height, width)
        return self.proj_out(out).add_(x)


def space_to_depth(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, 4C, H/2, W/2]; output channel (r1 * 2 + r2) * C + c holds pixel (2i + r1, 2j + r2)."""
    b, c, height, width = x.shape
    x = x.view(b, c, height // 2, 2, width // 2, 2).permute(0, 3, 5, 1, 2, 4)
    return x.reshape(b, 4 * c, height // 2, width // 2)


def depth_to_space(x: torch.Tensor) -> torch.Tensor:
    """[B, 4C, H, W] -> [B, C, 2H, 2W]; input channel (r1 * 2 + r2) * C + c goes to pixel (2i + r1, 2j + r2)."""
    b, c4, height, width = x.shape
    x = x.view(b, 2, 2, c4 // 4, height, width).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(b, c4 // 4, height * 2, width * 2)


class Downsample(nn.Module):
    """Half the resolution: conv to c_out / 4, space-to-depth; plus the input space-to-depth, averaged over
    groups of 4 * c_in / c_out channels."""

    def __init__(self, c_in: int, c_out: int, layers: _Layers):
        super().__init__()
        self.conv = layers.conv(c_in, c_out // 4, 3)
        self.group = 4 * c_in // c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 2 or x.shape[-1] % 2:
            raise ValueError(f"a downsampling needs even sides, got {list(x.shape[-2:])}")
        h = space_to_depth(self.conv(x))
        b, c, height, width = h.shape
        return h.add_(space_to_depth(x).view(b, c, self.group, height, width).mean(2))


class Upsample(nn.Module):
    """Double the resolution: conv to 4 * c_out, plus the input with each channel repeated 4 * c_out / c_in
    times, then depth-to-space (the shortcut is added before the shuffle, which moves both alike)."""

    def __init__(self, c_in: int, c_out: int, layers: _Layers):
        super().__init__()
        self.conv = layers.conv(c_in, 4 * c_out, 3)
        self.repeats = 4 * c_out // c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        b, c_in, height, width = x.shape
        h.view(b, c_in, self.repeats, height, width).add_(x.unsqueeze(2))  # = x.repeat_interleave(repeats, 1)
        return depth_to_space(h)


class MidBlock(nn.Module):
    def __init__(self, channels: int, layers: _Layers):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, layers)
        self.attn_1 = AttnBlock(channels, layers)
        self.block_2 = ResnetBlock(channels, channels, layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Stage(nn.Module):
    """Residual blocks at one resolution (`block`), then optionally a resampling (`downsample`/`upsample`)."""

    def __init__(self, c_in: int, c_out: int, blocks: int, layers: _Layers, resample: str | None = None,
                 resample_to: int = 0):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(c_in if i == 0 else c_out, c_out, layers) for i in range(blocks))
        if resample == "downsample":
            self.downsample = Downsample(c_out, resample_to, layers)
        elif resample == "upsample":
            self.upsample = Upsample(c_out, resample_to, layers)
        self.resample = resample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return getattr(self, self.resample)(x) if self.resample else x


def _stages(widths, blocks: int, resamplings: int, match_channel: bool, kind: str, layers: _Layers):
    stages, channels = [], widths[0]
    for i, width in enumerate(widths):
        following = widths[i + 1] if match_channel and i + 1 < len(widths) else width
        resample = kind if i < resamplings else None
        stages.append(Stage(channels, width, blocks, layers, resample, following))
        channels = following if resample else width
    return nn.ModuleList(stages), channels


class Encoder(nn.Module):
    def __init__(self, config: HunyuanImageVAEConfig, layers: _Layers):
        super().__init__()
        widths = config.block_out_channels
        self.conv_in = layers.conv(config.in_channels, widths[0], 3)
        self.down, channels = _stages(widths, config.num_res_blocks, config.resamplings,
                                      config.downsample_match_channel, "downsample", layers)
        self.mid = MidBlock(channels, layers)
        self.norm_out = layers.norm(channels)
        self.conv_out = layers.conv(channels, 2 * config.latent_channels, 3)
        self.moments = 2 * config.latent_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(images)
        for stage in self.down:
            x = stage(x)
        x = self.mid(x)
        b, c, height, width = x.shape
        skip = x.view(b, self.moments, c // self.moments, height, width).mean(2)
        return self.conv_out(_norm_silu(self.norm_out, x)).add_(skip)


class Decoder(nn.Module):
    def __init__(self, config: HunyuanImageVAEConfig, layers: _Layers):
        super().__init__()
        widths = tuple(reversed(config.block_out_channels))
        self.latent_channels = config.latent_channels
        self.conv_in = layers.conv(config.latent_channels, widths[0], 3)
        self.mid = MidBlock(widths[0], layers)
        self.up, channels = _stages(widths, config.num_res_blocks + 1, config.resamplings,
                                    config.upsample_match_channel, "upsample", layers)
        self.norm_out = layers.norm(channels)
        self.conv_out = layers.conv(channels, config.out_channels, 3)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(latent)
        b, c, height, width = x.shape
        x.view(b, self.latent_channels, c // self.latent_channels, height, width).add_(latent.unsqueeze(2))
        x = self.mid(x)
        for stage in self.up:
            x = stage(x)
        return self.conv_out(_norm_silu(self.norm_out, x))


# --- the VAE -------------------------------------------------------------------------------------------


class HunyuanImageVAE(nn.Module):
    """Encode images to raw latents and decode them back.

    Inputs are computed in their own dtype and on their own device: weights are cast at use, so a bf16
    file can run in float32, or stay on the CPU while activations run on a GPU.
    """

    latent_dims = 2  # latents are [B, 64, h, w]; a [B, 64, 1, h, w] one frame is accepted too

    def __init__(self, config: HunyuanImageVAEConfig = HunyuanImageVAEConfig(), operations=StandaloneOps,
                 dtype=None, device=None):
        super().__init__()
        config.check()
        self.config = config
        self.downscale = config.downscale
        self.latent_channels = config.latent_channels
        layers = _Layers(operations or StandaloneOps, dtype, device)
        self.encoder = Encoder(config, layers)
        self.decoder = Decoder(config, layers)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] (or [B, 3, 1, H, W]) in [-1, 1] -> raw latent [B, 64, H/32, W/32].

        The latent is the posterior's mean (its mode): the first 64 of the encoder's 128 output channels.
        diffusers' `encode(x).latent_dist.mode()` and ComfyUI's VAE encode (DiagonalGaussianRegularizer
        with sample=False) both return exactly that. Like ComfyUI's VAEEncode, sides that are not multiples
        of 32 are centre-cropped to the nearest smaller multiple.
        """
        images = crop_to_multiple(self._image_batch(images, "images", self.config.in_channels), self.downscale)
        return self.encoder(images)[:, : self.latent_channels]

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Raw latent [B, 64, h, w] (or [B, 64, 1, h, w]) -> images [B, 3, 32h, 32w], clamped to [-1, 1].

        diffusers' `decode` returns the decoder output unclamped (its image processor clamps when it
        converts to pixels, as ComfyUI's VAE does); the clamp here gives the same pixels.
        """
        latent = self._image_batch(latent, "latent", self.latent_channels)
        return self.decoder(latent).clamp_(-1.0, 1.0)

    def decode_memory(self, latent_shape, dtype: torch.dtype) -> int:
        """Bytes a whole-image decode needs at its peak: the last stage runs at full resolution with the
        first width (128 channels), and about six such activations are live at once (block input, norm
        output, conv input and output, and the copies a CPU conv kernel makes of both), plus the output.
        Measured with random weights, fp32 CPU (bench/bench_hunyuan_vae.py): 771 MB at 512x512 and 3076 MB
        at 1024x1024 against 771 and 3084 MB estimated; GPU kernels copy less, so there it errs on the safe
        side."""
        height, width = latent_shape[-2] * self.downscale, latent_shape[-1] * self.downscale
        per_pixel = 6 * self.config.block_out_channels[0] + self.config.out_channels
        return latent_shape[0] * height * width * per_pixel * torch.empty(0, dtype=dtype).element_size()

    def encode_memory(self, image_shape, dtype: torch.dtype) -> int:
        """Bytes a whole-image encode needs at its peak: the full-resolution first stage, as in decode
        (measured 769 MB at 512x512, fp32 CPU, against 771 MB estimated)."""
        height, width = image_shape[-2], image_shape[-1]
        per_pixel = 6 * self.config.block_out_channels[0] + self.config.in_channels
        return image_shape[0] * height * width * per_pixel * torch.empty(0, dtype=dtype).element_size()

    def decode_tiled(self, latent: torch.Tensor, tile: int | None = None, overlap: int | None = None,
                     **kwargs) -> torch.Tensor:
        """`decode` in overlapping tiles of `tile` latent cells (see model_defs/vae_tiling.py); the
        defaults are 16 cells (512 pixels) overlapping by 4 (128 pixels)."""
        from ..vae_tiling import tiled_decode

        latent = self._image_batch(latent, "latent", self.latent_channels)
        return tiled_decode(self.decode, latent, self.downscale, tile=tile, overlap=overlap, **kwargs)

    def encode_tiled(self, images: torch.Tensor, tile: int | None = None, overlap: int | None = None,
                     **kwargs) -> torch.Tensor:
        """`encode` in overlapping tiles of `tile` latent cells; same cropping, same output."""
        from ..vae_tiling import tiled_encode

        images = crop_to_multiple(self._image_batch(images, "images", self.config.in_channels), self.downscale)
        return tiled_encode(self.encode, images, self.downscale, tile=tile, overlap=overlap, **kwargs)

    @staticmethod
    def _image_batch(x: torch.Tensor, what: str, channels: int) -> torch.Tensor:
        """[B, C, H, W]; a single-frame [B, C, 1, H, W] is squeezed to it; anything else is a clear error."""
        image = x.squeeze(2) if x.ndim == 5 and x.shape[2] == 1 else x
        if image.ndim != 4 or image.shape[1] != channels:
            raise ValueError(f"the HunyuanImage 2.1 VAE takes {what} of shape [B, {channels}, H, W] (or one frame, "
                             f"[B, {channels}, 1, H, W]); got shape {list(x.shape)}")
        return image


# --- configuration from a file's tensor shapes (ComfyUI / Tencent names, no prefix) --------------------


def vae_config_from_shapes(shapes: dict) -> HunyuanImageVAEConfig:
    """The config of the network whose ComfyUI-named state dict has these shapes.

    Raises KeyError for a missing marker tensor and ValueError for an inconsistent layout.
    """
    in_channels = tuple(shapes["encoder.conv_in.weight"])[1]
    latent_channels = tuple(shapes["decoder.conv_in.weight"])[1]
    out_channels = tuple(shapes["decoder.conv_out.weight"])[0]

    widths, blocks, resampled = [], [], []
    while f"encoder.down.{len(widths)}.block.0.conv1.weight" in shapes:
        prefix = f"encoder.down.{len(widths)}."
        count = 0
        while f"{prefix}block.{count}.conv1.weight" in shapes:
            count += 1
        widths.append(tuple(shapes[f"{prefix}block.{count - 1}.conv2.weight"])[0])
        blocks.append(count)
        resampled.append(f"{prefix}downsample.conv.weight" in shapes)
    if not widths:
        raise KeyError("encoder.down.0.block.0.conv1.weight")
    if len(set(blocks)) != 1:
        raise ValueError(f"encoder stages have {blocks} residual blocks; expected equal counts")
    resamplings = sum(resampled)
    if resampled != [True] * resamplings + [False] * (len(widths) - resamplings):
        raise ValueError(f"downsamplings after stages {[i for i, r in enumerate(resampled) if r]}; expected "
                         f"them after the first stages only")
    if f"decoder.up.0.block.{blocks[0]}.conv1.weight" not in shapes:
        raise ValueError(f"the decoder stages do not have {blocks[0] + 1} residual blocks (one more than the "
                         f"encoder's {blocks[0]})")

    def resampling_matches(name: str, per_width: float, stage_widths) -> bool:
        """Whether every resampling moves to the next stage's width (its conv has per_width x that many outputs)."""
        return all(tuple(shapes[name.format(i)])[0] == stage_widths[i + 1] * per_width for i in range(resamplings))

    config = HunyuanImageVAEConfig(
        block_out_channels=tuple(widths), latent_channels=latent_channels, num_res_blocks=blocks[0],
        ffactor_spatial=2 ** resamplings,
        downsample_match_channel=resampling_matches("encoder.down.{}.downsample.conv.weight", 1 / 4, widths),
        upsample_match_channel=resampling_matches("decoder.up.{}.upsample.conv.weight", 4, widths[::-1]),
        in_channels=in_channels, out_channels=out_channels,
    )
    config.check()
    return config
