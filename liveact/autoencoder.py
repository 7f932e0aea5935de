"""A tiny video autoencoder with Wan's latent geometry, fast enough for real time on a CPU.

Same chunk arithmetic as the Wan VAE: 16 latent channels, 8x smaller in space, 4x in time with the
first frame alone (1 + 4n video frames <-> 1 + n latent frames). Each latent frame encodes a group of 4
video frames stacked along channels, with 2D convolutions only (3D convolutions are slow on CPUs); the
first group is the first frame repeated, so the portrait has a latent frame of its own. Decoding a latent
frame needs no other, so the streaming decoder is trivially exact and its memory is nothing at all.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


WEIGHTS = Path(__file__).parent / "weights" / "autoencoder"


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class Up(nn.Module):
    """2x nearest upsampling, then a 3x3 convolution."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.conv = nn.Conv2d(channels_in, channels_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(F.silu(x), scale_factor=2.0, mode="nearest"))


class TinyVideoAutoencoder(ModelMixin, ConfigMixin):
    temporal_ratio, spatial_ratio = 4, 8
    independent_groups = True  # each latent frame is encoded from its own 4 video frames only

    @register_to_config
    def __init__(self, z_dim: int = 16, channels: tuple[int, ...] = (32, 48, 64, 96),
                 decoder_channels: tuple[int, ...] = (96, 64, 48, 24),
                 latents_mean: tuple[float, ...] | None = None, latents_std: tuple[float, ...] | None = None):
        super().__init__()
        group = 3 * self.temporal_ratio  # 4 RGB frames stacked along channels
        c = channels
        self.encoder = nn.Sequential(
            nn.Conv2d(group, c[0], 3, padding=1),
            nn.Conv2d(c[0], c[1], 4, stride=2, padding=1), ResBlock(c[1]),  # 1/2
            nn.Conv2d(c[1], c[2], 4, stride=2, padding=1), ResBlock(c[2]),  # 1/4
            nn.Conv2d(c[2], c[3], 4, stride=2, padding=1), ResBlock(c[3]),  # 1/8
            nn.SiLU(), nn.Conv2d(c[3], z_dim, 3, padding=1))
        d = decoder_channels
        self.decoder = nn.Sequential(
            nn.Conv2d(z_dim, d[0], 3, padding=1), ResBlock(d[0]),
            Up(d[0], d[1]), ResBlock(d[1]),  # 1/4
            Up(d[1], d[2]),  # 1/2
            Up(d[2], d[3]),  # 1/1
            nn.SiLU(), nn.Conv2d(d[3], group, 3, padding=1))
        mean = torch.tensor(latents_mean if latents_mean is not None else [0.0] * z_dim)
        std = torch.tensor(latents_std if latents_std is not None else [1.0] * z_dim)
        self.register_buffer("latent_mean", mean.view(1, z_dim, 1, 1, 1), persistent=False)
        self.register_buffer("latent_std", std.view(1, z_dim, 1, 1, 1), persistent=False)

    # -- frames <-> groups ---------------------------------------------------------------------------

    def groups(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, 1 + 4n, H, W] -> [B * (1 + n), 12, H, W]: the first frame repeated, then groups of 4."""
        batch, _, frames, height, width = video.shape
        if (frames - 1) % self.temporal_ratio:
            raise ValueError(f"video must have 1 + {self.temporal_ratio}n frames, got {frames}")
        padded = torch.cat([video[:, :, :1].expand(-1, -1, self.temporal_ratio - 1, -1, -1), video], dim=2)
        grouped = padded.view(batch, 3, -1, self.temporal_ratio, height, width)  # [B, 3, 1+n, 4, H, W]
        return grouped.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * self.temporal_ratio, height, width)

    def ungroup(self, groups: torch.Tensor, batch: int, first: bool) -> torch.Tensor:
        """[B * n, 12, H, W] -> [B, 3, T, H, W]; when `first`, the first group yields its last frame only."""
        _, _, height, width = groups.shape
        video = groups.view(batch, -1, self.temporal_ratio, 3, height, width).permute(0, 3, 1, 2, 4, 5)
        video = video.reshape(batch, 3, -1, height, width)  # [B, 3, 4n, H, W]
        return video[:, :, self.temporal_ratio - 1:] if first else video

    # -- the VideoAutoencoder interface (see vae.py) ---------------------------------------------------

    def encode_raw(self, video: torch.Tensor) -> torch.Tensor:
        """Video in [-1, 1] -> unnormalised latents [B, z, 1 + n, H/8, W/8] (differentiable, for training)."""
        z = self.encoder(self.groups(video).contiguous(memory_format=torch.channels_last))
        return z.view(video.shape[0], -1, *z.shape[1:]).transpose(1, 2)

    def decode_raw(self, z: torch.Tensor, first: bool = True) -> torch.Tensor:
        """Unnormalised latents [B, z, F, h, w] -> video [B, 3, T, H, W] (not clamped)."""
        groups = self.decoder(z.transpose(1, 2).flatten(0, 1).contiguous(memory_format=torch.channels_last))
        return self.ungroup(groups, z.shape[0], first)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        video = video.to(self.device, self.dtype)
        return (self.encode_raw(video) - self.latent_mean) / self.latent_std

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, first: bool = True) -> torch.Tensor:
        z = latents.to(self.device, self.dtype) * self.latent_std + self.latent_mean
        return self.decode_raw(z, first).clamp(-1, 1)

    def streaming_decoder(self) -> "TinyStreamingDecoder":
        return TinyStreamingDecoder(self)

    def channels_last(self) -> "TinyVideoAutoencoder":
        """Convolution weights in channels-last layout, oneDNN's fast layout on a CPU (docs/SPEED.md)."""
        for net in (self.encoder, self.decoder):
            net.to(memory_format=torch.channels_last)
        return self


class TinyStreamingDecoder:
    """Latent frames decode independently: the only state is whether the portrait's frame has passed."""

    def __init__(self, autoencoder: TinyVideoAutoencoder):
        self.autoencoder, self.started = autoencoder, False

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        video = self.autoencoder.decode(latents, first=not self.started)
        self.started = True
        return video


def load_autoencoder(path: str | Path = WEIGHTS, dtype: torch.dtype = torch.float32) -> TinyVideoAutoencoder:
    if not Path(path).exists():
        raise FileNotFoundError(f"no autoencoder weights at {path}: train them with `python -m liveact train autoencoder`")
    # a few MB: loading it the plain way needs no `accelerate` (and prints no advice to install it)
    return TinyVideoAutoencoder.from_pretrained(path, torch_dtype=dtype, low_cpu_mem_usage=False).eval().channels_last()


def decode_rate(model: TinyVideoAutoencoder, seconds: float = 10.0, size: int = 128, runs: int = 3) -> float:
    """Streaming decode speed in video frames per second: `seconds` of 20 fps video in chunks of 8 latent
    frames, median of `runs` after a warm-up run."""
    import statistics
    import time

    latents = torch.randn(1, model.config.z_dim, 1 + round(seconds * 20 / 4), size // 8, size // 8)
    rates = []
    for _ in range(runs + 1):
        decoder = model.streaming_decoder()
        began = time.perf_counter()
        frames = sum(decoder.decode(chunk).shape[2] for chunk in latents.split(8, dim=2))
        rates.append(frames / (time.perf_counter() - began))
    return statistics.median(rates[1:])


def benchmark(seconds: float = 10.0, size: int = 128, runs: int = 3, path: str | Path = WEIGHTS) -> str:
    """Streaming decode speed and held-out PSNR of the shipped weights, as a markdown table row."""
    from .train import evaluate_autoencoder

    model = load_autoencoder(path)
    fps = decode_rate(model, seconds, size, runs)
    quality = evaluate_autoencoder(model, size=size)
    return (f"| tiny autoencoder | {size}x{size} | {torch.get_num_threads()} threads | "
            f"decode {fps:.0f} frames/s (median of {runs}) | held-out PSNR {quality:.2f} dB |")
