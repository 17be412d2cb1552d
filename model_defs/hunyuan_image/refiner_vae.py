"""The HunyuanImage 2.1 refiner VAE: a causal 3-D conv VAE (16x spatial, 32 latent channels) run on images.

Parameter names and shapes are exactly those of the ComfyUI file (`hunyuan_image_refiner_vae_fp16`), which
are also the official Tencent names (`vae/vae_refiner/pytorch_model.pt` holds them under `vae.`):
`encoder.conv_in.conv`, `encoder.down.N.block.M.{norm1,conv1.conv,norm2,conv2.conv}`,
`encoder.down.N.downsample.conv.conv`, `encoder.mid.{block_1,attn_1,block_2}`, `encoder.norm_out`,
`encoder.conv_out.conv`, and the mirror image in `decoder.*` (`decoder.up.N.upsample.conv.conv`). Every conv
keeps its stored 5-D weight ([O, I, 3, 3, 3], or [O, I, 1, 1, 1] for the attention projections), every norm
its [C, 1, 1, 1] gamma. diffusers' `AutoencoderKLHunyuanImageRefiner` holds the same tensors under other
names (loaders/keymaps/hunyuan_image_refiner_vae.py).

Structure (facts from diffusers, ComfyUI's comfy/ldm/hunyuan_video/vae_refiner.py and the official
hyimage/models/vae/refiner_vae.py, which agree on images): the base VAE's design (pixel-shuffle samplers
with channel-averaging / channel-repeating shortcuts, single-head attention in the middle of each half,
an averaged shortcut around the encoder head and a repeated one around the decoder input), but with
channel RMS norms (x / ||x|| * sqrt(C) * gamma over the channel axis) instead of GroupNorm, and every
3x3 conv a causal 3-D conv whose padding replicates the border: the time axis is padded with two copies
of the first frame in front, height and width with one copy of the edge pixel on each side.

Images only: an image is the video's first (and only) frame, on which the network is a 2-D network.

* A causal conv sees three copies of the lone frame under its three temporal taps, so it equals a 2-D
  conv with the taps' sum, `weight.sum(2)`, on the replicate-padded frame. The sum is formed in float32
  at each call (a third of the weight's size; the stored tensor is untouched), so the network runs as 2-D
  convs on [B, C, H, W]: a third of the 3-D conv's multiplications and no padded frames in memory.
* The "temporal" samplers (the encoder's last two downsamplings and the decoder's first two
  upsamplings in the released VAE) do not touch time on the first frame either. A temporal downsampling's
  conv has half the usual outputs and its pixel-shuffled result is used twice (stacked along the
  channels); a temporal upsampling's conv has twice the usual outputs and the first half of each
  shuffled group is kept (here the conv computes only those rows). Their shortcuts equal the spatial ones.

Exactness: fp32 results equal diffusers' and ComfyUI's to float rounding (max abs 6.3e-6 encode and
1.5e-6 decode against diffusers, 5.1e-6 against ComfyUI, at tiny configs with latents up to ~4: see
tests/test_hunyuan_refiner_vae.py and tests/comfyui/). The rearrangements are exact apart from the order
of the three tap additions (summed weights instead of summed products). Frames beyond the first (videos)
are refused: the implementations disagree there (diffusers never moves time; ComfyUI and the official code
compress it 4x).

The latent is [B, 32, 1, h, w], the posterior mean (or a posterior sample, see `encode`), raw: the refiner
stage multiplies it by the scaling factor 1.03682 and pairs it into the DiT's 64 channels
(family.REFINER_LATENT_FORMAT); this module never does either.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import StandaloneOps, cast_like
from ..qwen_image.vae import ChannelRMSNorm
from ..vae_tiling import crop_to_multiple
from .refiner import sample_posterior
from .vae import depth_to_space, space_to_depth



@dataclass(frozen=True)
class HunyuanImageRefinerVAEConfig:
    """Values of the released refiner VAE (official config, diffusers' defaults and ComfyUI's comfy/sd.py)."""

    block_out_channels: tuple[int, ...] = (128, 256, 512, 1024, 1024)  # encoder stage widths
    latent_channels: int = 32
    num_res_blocks: int = 2  # residual blocks per encoder stage (the decoder has one more)
    ffactor_spatial: int = 16  # 2 ** (number of down/up-samplings)
    ffactor_temporal: int = 4  # 2 ** (number of those that are "temporal" on videos)
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

    @property
    def temporal_resamplings(self) -> int:
        return self.ffactor_temporal.bit_length() - 1

    def encoder_temporal(self, stage: int) -> bool:
        """Whether the downsampling after encoder stage `stage` is a temporal one: the last ones."""
        return self.resamplings - self.temporal_resamplings <= stage < self.resamplings

    def decoder_temporal(self, stage: int) -> bool:
        """Whether the upsampling after decoder stage `stage` is a temporal one: the first ones."""
        return stage < self.temporal_resamplings

    def check(self) -> None:
        """ValueError for a configuration the network cannot be built from."""
        widths = self.block_out_channels
        for name, f in (("ffactor_spatial", self.ffactor_spatial), ("ffactor_temporal", self.ffactor_temporal)):
            if f < 1 or f & (f - 1):
                raise ValueError(f"{name} must be a power of two, got {f}")
        if self.ffactor_temporal > self.ffactor_spatial:
            raise ValueError(f"ffactor_temporal {self.ffactor_temporal} exceeds ffactor_spatial {self.ffactor_spatial}")
        if self.resamplings > len(widths) - 1:
            raise ValueError(f"{self.resamplings} down/up-samplings need at least {self.resamplings + 1} stages; "
                             f"block_out_channels has {len(widths)}")
        if self.num_res_blocks < 0:
            raise ValueError(f"num_res_blocks must be >= 0, got {self.num_res_blocks}")
        z = self.latent_channels
        if widths[-1] % (2 * z):
            raise ValueError(f"the last stage width {widths[-1]} must be a multiple of 2 x {z} latent channels")
        for i, (c_in, c_out) in enumerate(_resampling_widths(widths, self.resamplings, self.downsample_match_channel)):
            factor = 8 if self.encoder_temporal(i) else 4
            if c_out % factor or (4 * c_in) % c_out:
                raise ValueError(f"a downsampling from {c_in} to {c_out} channels cannot group channels evenly")
        decoder = tuple(reversed(widths))
        for c_in, c_out in _resampling_widths(decoder, self.resamplings, self.upsample_match_channel):
            if c_in % 4 or (4 * c_out) % c_in:
                raise ValueError(f"an upsampling from {c_in} to {c_out} channels cannot repeat channels evenly")


def _resampling_widths(widths, count: int, match_channel: bool) -> list[tuple[int, int]]:
    """(input, output) width of each resampling: after stage i, for the first `count` stages."""
    return [(widths[i], widths[i + 1] if match_channel else widths[i]) for i in range(count)]


# --- layers ------------------------------------------------------------------------------------------


class _FirstFrameReplicateConv:
    """Mixin for a Conv3d class: the causal, replicate-padded 3-D conv applied to a lone first frame, as a
    2-D conv with the temporal taps summed (see the module docstring). A 1-tap conv (the pointwise
    projections and shortcuts) just drops its unit time axis.

    `keep_half_of_groups=g`: compute only the first half of each of g equal groups of output channels (a
    temporal upsampling discards the rest)."""

    def forward(self, x: torch.Tensor, keep_half_of_groups: int = 0) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if keep_half_of_groups:  # views: nothing is copied before the taps are summed
            g = keep_half_of_groups
            weight = weight.unflatten(0, (g, 2, -1))[:, 0]
            bias = bias.unflatten(0, (g, 2, -1))[:, 0].flatten(0, 1) if bias is not None else None
        time_axis = weight.ndim - 3
        if weight.shape[time_axis] == 1:
            weight = weight.select(time_axis, 0)
        else:
            weight = weight.sum(time_axis, dtype=torch.float32)
        if keep_half_of_groups:
            weight = weight.flatten(0, 1)
        pad = weight.shape[-1] // 2
        if pad:
            x = F.pad(x, (pad, pad, pad, pad), mode="replicate")
        return F.conv2d(x, cast_like(weight, x), cast_like(bias, x))


@functools.lru_cache(maxsize=None)
def _first_frame_conv_class(conv3d_class: type) -> type:
    """The host's Conv3d (ours, or ComfyUI's ops) with the first-frame forward; one class per host class."""
    return type(f"FirstFrameReplicate{conv3d_class.__name__}", (_FirstFrameReplicateConv, conv3d_class), {})


class _Layers:
    """Builds layers from an `operations` namespace with the module's dtype/device."""

    def __init__(self, operations, dtype, device):
        self.factory = {"dtype": dtype, "device": device}
        self._conv = _first_frame_conv_class(operations.Conv3d)

    def pointwise(self, c_in: int, c_out: int) -> nn.Module:
        return self._conv(c_in, c_out, 1, **self.factory)

    def causal(self, c_in: int, c_out: int) -> "CausalConv":
        return CausalConv(self._conv(c_in, c_out, 3, **self.factory))

    def norm(self, channels: int) -> ChannelRMSNorm:
        return ChannelRMSNorm(channels, (channels, 1, 1, 1), **self.factory)


class CausalConv(nn.Module):
    """The causal 3x3x3 conv; the wrapper exists for the file's `<name>.conv.weight` names."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.conv(x, **kwargs)


def _norm_silu(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.silu(norm(x), inplace=True)  # the norm's output is a fresh tensor: SiLU may overwrite it


class ResnetBlock(nn.Module):
    """norm, SiLU, causal conv, norm, SiLU, causal conv; plus the input (through a pointwise conv if the
    width changes: `nin_shortcut.weight`, the official name; the released VAE has none)."""

    def __init__(self, c_in: int, c_out: int, layers: _Layers):
        super().__init__()
        self.norm1 = layers.norm(c_in)
        self.conv1 = layers.causal(c_in, c_out)
        self.norm2 = layers.norm(c_out)
        self.conv2 = layers.causal(c_out, c_out)
        if c_in != c_out:
            self.nin_shortcut = layers.pointwise(c_in, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_norm_silu(self.norm1, x))
        h = self.conv2(_norm_silu(self.norm2, h))
        return h.add_(self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x)


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions of the frame (pointwise projections), plus the input.
    (The official code masks attention causally across frames; one frame sees itself only.)"""

    def __init__(self, channels: int, layers: _Layers):
        super().__init__()
        self.norm = layers.norm(channels)
        self.q = layers.pointwise(channels, channels)
        self.k = layers.pointwise(channels, channels)
        self.v = layers.pointwise(channels, channels)
        self.proj_out = layers.pointwise(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        h = self.norm(x)
        q, k, v = (proj(h).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # [B, 1, HW, C], scale 1/sqrt(C)
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, height, width)
        return self.proj_out(out).add_(x)


class Downsample(nn.Module):
    """Half the resolution: conv to c_out / 4 (c_out / 8 for a temporal one, whose result then fills both
    halves of the channels), space-to-depth; plus the input space-to-depth, averaged over groups of
    4 * c_in / c_out channels."""

    def __init__(self, c_in: int, c_out: int, temporal: bool, layers: _Layers):
        super().__init__()
        self.conv = layers.causal(c_in, c_out // (8 if temporal else 4))
        self.group = 4 * c_in // c_out
        self.temporal = temporal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 2 or x.shape[-1] % 2:
            raise ValueError(f"a downsampling needs even sides, got {list(x.shape[-2:])}")
        h = space_to_depth(self.conv(x))
        b, _, height, width = h.shape
        out = space_to_depth(x).view(b, -1, self.group, height, width).mean(2)
        copies = 2 if self.temporal else 1
        out.view(b, copies, -1, height, width).add_(h.unsqueeze(1))  # = out + cat([h] * copies, 1)
        return out


class Upsample(nn.Module):
    """Double the resolution: conv to 4 * c_out (a temporal one has 8 * c_out rows and keeps the first half
    of each pixel-shuffle group), plus the input with each channel repeated 4 * c_out / c_in times, then
    depth-to-space (the shortcut is added before the shuffle, which moves both alike)."""

    def __init__(self, c_in: int, c_out: int, temporal: bool, layers: _Layers):
        super().__init__()
        self.conv = layers.causal(c_in, c_out * (8 if temporal else 4))
        self.repeats = 4 * c_out // c_in
        self.temporal = temporal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x, keep_half_of_groups=4) if self.temporal else self.conv(x)
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
                 resample_to: int = 0, temporal: bool = False):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(c_in if i == 0 else c_out, c_out, layers) for i in range(blocks))
        if resample == "downsample":
            self.downsample = Downsample(c_out, resample_to, temporal, layers)
        elif resample == "upsample":
            self.upsample = Upsample(c_out, resample_to, temporal, layers)
        self.resample = resample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return getattr(self, self.resample)(x) if self.resample else x


def _stages(widths, blocks: int, config: HunyuanImageRefinerVAEConfig, kind: str, layers: _Layers):
    decoder = kind == "upsample"
    match_channel = config.upsample_match_channel if decoder else config.downsample_match_channel
    stages, channels = [], widths[0]
    for i, width in enumerate(widths):
        following = widths[i + 1] if match_channel and i + 1 < len(widths) else width
        resample = kind if i < config.resamplings else None
        temporal = config.decoder_temporal(i) if decoder else config.encoder_temporal(i)
        stages.append(Stage(channels, width, blocks, layers, resample, following, temporal))
        channels = following if resample else width
    return nn.ModuleList(stages), channels


class Encoder(nn.Module):
    def __init__(self, config: HunyuanImageRefinerVAEConfig, layers: _Layers):
        super().__init__()
        widths = config.block_out_channels
        self.conv_in = layers.causal(config.in_channels, widths[0])
        self.down, channels = _stages(widths, config.num_res_blocks, config, "downsample", layers)
        self.mid = MidBlock(channels, layers)
        self.norm_out = layers.norm(channels)
        self.conv_out = layers.causal(channels, 2 * config.latent_channels)
        self.moments = 2 * config.latent_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> the posterior's moments [B, 2 * latent channels, H / f, W / f] (mean, log-variance)."""
        x = self.conv_in(images)
        for stage in self.down:
            x = stage(x)
        x = self.mid(x)
        b, c, height, width = x.shape
        skip = x.view(b, self.moments, c // self.moments, height, width).mean(2)
        return self.conv_out(_norm_silu(self.norm_out, x)).add_(skip)


class Decoder(nn.Module):
    def __init__(self, config: HunyuanImageRefinerVAEConfig, layers: _Layers):
        super().__init__()
        widths = tuple(reversed(config.block_out_channels))
        self.latent_channels = config.latent_channels
        self.conv_in = layers.causal(config.latent_channels, widths[0])
        self.mid = MidBlock(widths[0], layers)
        self.up, channels = _stages(widths, config.num_res_blocks + 1, config, "upsample", layers)
        self.norm_out = layers.norm(channels)
        self.conv_out = layers.causal(channels, config.out_channels)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """[B, latent channels, h, w] -> images [B, 3, h * f, w * f], unclamped."""
        x = self.conv_in(latent)
        b, c, height, width = x.shape
        x.view(b, self.latent_channels, c // self.latent_channels, height, width).add_(latent.unsqueeze(2))
        x = self.mid(x)
        for stage in self.up:
            x = stage(x)
        return self.conv_out(_norm_silu(self.norm_out, x))


# --- the VAE -------------------------------------------------------------------------------------------


class HunyuanImageRefinerVAE(nn.Module):
    """Encode images to raw refiner latents [B, 32, 1, h, w] and decode them back.

    Inputs are computed in their own dtype and on their own device: weights are cast at use, so a bf16
    file can run in float32, or stay on the CPU while activations run on a GPU.
    """

    latent_dims = 3  # latents are [B, 32, 1, h, w] (one frame); [B, 32, h, w] is accepted too

    def __init__(self, config: HunyuanImageRefinerVAEConfig = HunyuanImageRefinerVAEConfig(),
                 operations=StandaloneOps, dtype=None, device=None):
        super().__init__()
        config.check()
        self.config = config
        self.downscale = config.downscale
        self.latent_channels = config.latent_channels
        layers = _Layers(operations or StandaloneOps, dtype, device)
        self.encoder = Encoder(config, layers)
        self.decoder = Decoder(config, layers)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images [B, 3, H, W] (or [B, 3, 1, H, W]) in [-1, 1] -> raw latent [B, 32, 1, H/16, W/16].

        Without a generator the latent is the posterior's mean (its mode): ComfyUI's VAE encode, and
        diffusers' `latent_dist.mode()`. With one it is a posterior sample, mean + std * noise, the noise
        drawn as diffusers' `latent_dist.sample(generator)` draws it (one randn of the latent's shape, on the
        generator's device): what the official and diffusers refiner pipelines use to encode their input.
        Like ComfyUI's VAEEncode, sides that are not multiples of 16 are centre-cropped to the nearest
        smaller multiple.
        """
        images = crop_to_multiple(_single_frame(images, "images", self.config.in_channels), self.downscale)
        moments = self.encoder(images)
        mean = moments[:, : self.latent_channels]
        if generator is not None:
            # The same values as a randn of the 5-D [B, 32, 1, h, w] shape diffusers draws.
            mean = sample_posterior(mean, moments[:, self.latent_channels:], generator)
        return mean.unsqueeze(2)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Raw latent [B, 32, 1, h, w] (or [B, 32, h, w]) -> images [B, 3, 16h, 16w], clamped to [-1, 1].

        diffusers' `decode` returns [B, 3, 1, H, W] unclamped (its image processor clamps when it converts
        to pixels, as ComfyUI's VAE does); the clamp here gives the same pixels.
        """
        latent = _single_frame(latent, "latent", self.latent_channels)
        return self.decoder(latent).clamp_(-1.0, 1.0)

    def decode_memory(self, latent_shape, dtype: torch.dtype) -> int:
        """Bytes a whole-image decode needs at its peak: the last stage runs at full resolution with the
        first width (128 channels), and about seven such activations are live at once (block input, norm
        output, its replicate-padded copy, conv output, and the copies a CPU conv kernel makes), plus the
        output; plus the largest summed conv weight (151 MB in fp32 for the released VAE, formed at a lower
        resolution than the peak, so adding it errs on the safe side). Measured with random weights, fp32
        CPU, 2 threads: 298, 902 and 3597 MB at 256, 512 and 1024 pixels square against 369, 1043 and 3740 MB
        estimated; GPU kernels copy less, so there it errs further on the safe side."""
        height, width = latent_shape[-2] * self.downscale, latent_shape[-1] * self.downscale
        per_pixel = DECODE_ACTIVATIONS * self.config.block_out_channels[0] + self.config.out_channels
        activations = latent_shape[0] * height * width * per_pixel * torch.empty(0, dtype=dtype).element_size()
        return activations + _summed_weight_bytes(self.decoder, dtype)

    def encode_memory(self, image_shape, dtype: torch.dtype) -> int:
        """Bytes a whole-image encode needs at its peak: the full-resolution first stage, as in decode
        (measured 226 MB at 256x256 and 899 MB at 512x512, fp32 CPU, against 225 and 899 MB of
        activations), plus the largest summed conv weight (38 MB in fp32)."""
        height, width = image_shape[-2], image_shape[-1]
        per_pixel = ENCODE_ACTIVATIONS * self.config.block_out_channels[0] + self.config.in_channels
        activations = image_shape[0] * height * width * per_pixel * torch.empty(0, dtype=dtype).element_size()
        return activations + _summed_weight_bytes(self.encoder, dtype)

    def decode_tiled(self, latent: torch.Tensor, tile: int | None = None, overlap: int | None = None,
                     **kwargs) -> torch.Tensor:
        """`decode` in overlapping tiles of `tile` latent cells (see model_defs/vae_tiling.py); the
        defaults are 32 cells (512 pixels) overlapping by 8 (128 pixels). Returns [B, 3, H, W]."""
        from ..vae_tiling import tiled_decode

        latent = _single_frame(latent, "latent", self.latent_channels)
        return tiled_decode(self.decode, latent, self.downscale, tile=tile, overlap=overlap, **kwargs)

    def encode_tiled(self, images: torch.Tensor, tile: int | None = None, overlap: int | None = None,
                     **kwargs) -> torch.Tensor:
        """`encode` (the posterior mean) in overlapping tiles of `tile` latent cells; same cropping, same
        [B, 32, 1, h, w] output."""
        from ..vae_tiling import tiled_encode

        images = crop_to_multiple(_single_frame(images, "images", self.config.in_channels), self.downscale)
        return tiled_encode(self.encode, images, self.downscale, tile=tile, overlap=overlap, **kwargs)


# Live full-resolution activations per pixel, in units of the first stage's width (decode_memory).
DECODE_ACTIVATIONS = 7
ENCODE_ACTIVATIONS = 7


def _summed_weight_bytes(half: nn.Module, dtype: torch.dtype) -> int:
    """Bytes of the largest 2-D weight a forward of `half` forms: a 3-tap conv's taps summed in float32
    (the rows a temporal upsampling keeps), and its copy in `dtype` when that is not float32."""
    halved = {id(m.conv.conv) for m in half.modules() if isinstance(m, Upsample) and m.temporal}
    largest = max((m.weight.numel() // m.weight.shape[2] // (2 if id(m) in halved else 1)
                   for m in half.modules() if isinstance(m, _FirstFrameReplicateConv) and m.weight.shape[2] > 1),
                  default=0)
    cast = torch.empty(0, dtype=dtype).element_size() if dtype != torch.float32 else 0
    return largest * (4 + cast)


def _single_frame(x: torch.Tensor, what: str, channels: int) -> torch.Tensor:
    """[B, C, H, W]; a single-frame [B, C, 1, H, W] is squeezed to it; anything else is a clear error."""
    image = x.squeeze(2) if x.ndim == 5 and x.shape[2] == 1 else x
    if image.ndim != 4 or image.shape[1] != channels:
        raise ValueError(f"the HunyuanImage 2.1 refiner VAE takes {what} of shape [B, {channels}, 1, H, W] (one "
                         f"frame) or [B, {channels}, H, W]; got shape {list(x.shape)}")
    return image


# --- configuration from a file's tensor shapes (ComfyUI / Tencent names, no prefix) --------------------


def refiner_vae_config_from_shapes(shapes: dict) -> HunyuanImageRefinerVAEConfig:
    """The config of the network whose ComfyUI-named state dict has these shapes.

    Which samplings are "temporal" is read from their conv widths (half / twice the spatial one's), the
    width a sampling moves to from the next stage's first residual block. Raises KeyError for a missing
    marker tensor and ValueError for an inconsistent layout.
    """
    in_channels = tuple(shapes["encoder.conv_in.conv.weight"])[1]
    latent_channels = tuple(shapes["decoder.conv_in.conv.weight"])[1]
    out_channels = tuple(shapes["decoder.conv_out.conv.weight"])[0]

    def stages(half: str) -> tuple[list[int], list[int]]:
        widths, blocks = [], []
        while f"{half}.{len(widths)}.block.0.conv1.conv.weight" in shapes:
            prefix = f"{half}.{len(widths)}."
            count = 0
            while f"{prefix}block.{count}.conv1.conv.weight" in shapes:
                count += 1
            widths.append(tuple(shapes[f"{prefix}block.{count - 1}.conv2.conv.weight"])[0])
            blocks.append(count)
        if not widths:
            raise KeyError(f"{half}.0.block.0.conv1.conv.weight")
        return widths, blocks

    widths, blocks = stages("encoder.down")
    decoder_widths, decoder_blocks = stages("decoder.up")
    if len(set(blocks)) != 1:
        raise ValueError(f"encoder stages have {blocks} residual blocks; expected equal counts")
    if set(decoder_blocks) != {blocks[0] + 1}:
        raise ValueError(f"decoder stages have {decoder_blocks} residual blocks; expected {blocks[0] + 1} each "
                         f"(one more than the encoder's {blocks[0]})")
    if decoder_widths != widths[::-1]:
        raise ValueError(f"decoder stage widths {decoder_widths} are not the encoder's {widths} reversed")

    def samplings(half: str, sampler: str, stage_widths) -> tuple[list[bool], list[float], list[int]]:
        """Per stage: has a sampler; its conv rows per output channel; the width it moves to."""
        present, per_output, targets = [], [], []
        for i in range(len(stage_widths)):
            name = f"{half}.{i}.{sampler}.conv.conv.weight"
            present.append(name in shapes)
            if name in shapes:
                following = f"{half}.{i + 1}.block.0.conv1.conv.weight"
                target = tuple(shapes[following])[1] if following in shapes else stage_widths[i]
                targets.append(target)
                per_output.append(tuple(shapes[name])[0] / target)
        return present, per_output, targets

    down, down_rows, down_targets = samplings("encoder.down", "downsample", widths)
    up, up_rows, up_targets = samplings("decoder.up", "upsample", decoder_widths)
    resamplings = sum(down)
    for name, present in (("down", down), ("up", up)):
        if present != [True] * resamplings + [False] * (len(widths) - resamplings):
            raise ValueError(f"{name}samplings after stages {[i for i, r in enumerate(present) if r]}; expected "
                             f"them after the first {resamplings} stages only")
    temporal_down = [rows == 1 / 8 for rows in down_rows]
    temporal_up = [rows == 8 for rows in up_rows]
    if any(rows not in (1 / 8, 1 / 4) for rows in down_rows) or any(rows not in (4, 8) for rows in up_rows):
        raise ValueError(f"sampler convs with {down_rows} / {up_rows} rows per output channel; expected 1/4 or "
                         f"1/8 (downsampling) and 4 or 8 (upsampling)")
    temporal = sum(temporal_up)
    if temporal_up != [True] * temporal + [False] * (resamplings - temporal) or \
            temporal_down != [False] * (resamplings - temporal) + [True] * temporal:
        raise ValueError(f"temporal samplers at encoder stages {[i for i, t in enumerate(temporal_down) if t]} and "
                         f"decoder stages {[i for i, t in enumerate(temporal_up) if t]}; expected the last "
                         f"{temporal} downsamplings and the first {temporal} upsamplings")

    config = HunyuanImageRefinerVAEConfig(
        block_out_channels=tuple(widths), latent_channels=latent_channels, num_res_blocks=blocks[0],
        ffactor_spatial=2 ** resamplings, ffactor_temporal=2 ** temporal,
        downsample_match_channel=down_targets == [widths[i + 1] for i in range(resamplings)],
        upsample_match_channel=up_targets == [decoder_widths[i + 1] for i in range(resamplings)],
        in_channels=in_channels, out_channels=out_channels,
    )
    config.check()
    return config
