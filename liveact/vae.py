"""Pixels <-> latents: the conditioning `y` of a portrait, and a decoder that streams chunk by chunk.

Any video autoencoder with Wan's geometry (16 latent channels, 4x in time with the first frame alone,
8x in space) serves: `WanVAE` wraps diffusers' `AutoencoderKLWan` (the 18B model's), and the tiny scale
brings its own. Both give:

- `condition(image, window)`: y = [4 mask channels | latents of (portrait + zero frames)] for the
  14-latent-frame window, as the reference builds it;
- `streaming_decoder()`: an object whose `decode(latents)` turns each chunk's latents into video frames
  as they arrive, keeping the causal convolution cache between chunks so the result equals decoding the
  whole sequence at once.

`decode_beside` decodes chunk k while chunk k+1 denoises (a thread and a CUDA stream of its own).
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Callable, Iterable, Iterator, Protocol, TypeVar

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify


class StreamingDecoder(Protocol):
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, 16, F, h, w] -> video [B, 3, T, H, W] in [-1, 1]; T = 1 + 4(F-1) for
        the first call, 4F after."""


class VideoAutoencoder(Protocol):
    temporal_ratio: int
    spatial_ratio: int

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video [B, 3, 1 + 4n, H, W] in [-1, 1] -> normalised latents [B, 16, 1 + n, H/8, W/8]."""

    def streaming_decoder(self) -> StreamingDecoder: ...


Decoded = TypeVar("Decoded")


class DecodeThread:
    """A session's decode thread and, on a GPU, its CUDA stream: made once and reused for every chunk (a stream
    per call would each keep a cached decode peak in the allocator)."""

    def __init__(self):
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="liveact-decode")  # one thread: chunks decode in order
        self.streams: dict[torch.device, torch.cuda.Stream] = {}

    def _stream(self, device: torch.device) -> torch.cuda.Stream:
        if device not in self.streams:
            self.streams[device] = torch.cuda.Stream(device)
        return self.streams[device]

    def submit(self, decode: Callable[[torch.Tensor], Decoded], latents: torch.Tensor):
        """decode(latents) on the thread, after what the caller's stream has queued so far: (result, seconds)."""
        denoised = None
        if latents.is_cuda:  # the latents are written on the denoising stream
            denoised = torch.cuda.Event()
            denoised.record(torch.cuda.current_stream(latents.device))
        return self.pool.submit(self._job, decode, latents, denoised)

    def _job(self, decode, latents: torch.Tensor, denoised: torch.cuda.Event | None):
        stream = self._stream(latents.device) if latents.is_cuda else None
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            if stream is not None:
                stream.wait_event(denoised)
                latents.record_stream(stream)  # their memory is not reused before this stream is done with it
            began = time.perf_counter()
            decoded = decode(latents)  # ends on the host (frames): this stream has finished
            return decoded, time.perf_counter() - began


def decode_beside(chunks: Iterable, decode: Callable[[torch.Tensor], Decoded], thread: DecodeThread | None = None
                  ) -> Iterator[tuple[object, Decoded, float]]:
    """(chunk, decode(chunk.latents), decode seconds) for each chunk, in order. With a `thread`, chunk k decodes on it
    (on a GPU, on its CUDA stream) while the caller's loop denoises chunk k+1, and is handed out once chunk k+1 has
    been queued; the decoder sees the same latents in the same order, so the frames are the same as decoding after
    each denoise. (On a CPU the two share the cores and chunk k waits for chunk k+1: an option for GPUs.)"""
    if thread is None:
        for chunk in chunks:
            began = time.perf_counter()
            decoded = decode(chunk.latents)
            yield chunk, decoded, time.perf_counter() - began
        return
    pending = deque()
    for chunk in chunks:
        pending.append((chunk, thread.submit(decode, chunk.latents)))
        if len(pending) > 1:  # the next chunk is denoising: hand out the one before it
            done, future = pending.popleft()
            yield done, *future.result()
    while pending:
        done, future = pending.popleft()
        yield done, *future.result()


def condition(vae: VideoAutoencoder, image: torch.Tensor, window: int = 14) -> torch.Tensor:
    """y for a portrait [B, 3, H, W] in [-1, 1]: [B, 4 + 16, window, H/8, W/8].

    The portrait followed by zero frames fills the window's 1 + 4(window-1) video frames; the mask is 1
    on the first latent frame (the portrait) and 0 elsewhere, one channel per video frame it covers.
    """
    # an autoencoder whose latent frames do not see each other encodes one zero group, not window-1 equal ones
    groups = 2 if getattr(vae, "independent_groups", False) else window
    frames = 1 + vae.temporal_ratio * (groups - 1)
    video = torch.cat([image[:, :, None], image.new_zeros(image.shape[0], 3, frames - 1, *image.shape[2:])], dim=2)
    latents = vae.encode(video)
    latents = torch.cat([latents[:, :, :1], latents[:, :, -1:].expand(-1, -1, window - groups + 1, -1, -1)], dim=2) \
        if groups < window else latents
    mask = torch.zeros(latents.shape[0], vae.temporal_ratio, *latents.shape[2:], dtype=latents.dtype, device=latents.device)
    mask[:, :, 0] = 1
    return torch.cat([mask, latents], dim=1)


class WanVAE:
    """diffusers' `AutoencoderKLWan` with Wan's latent normalisation and a streaming decoder."""

    temporal_ratio, spatial_ratio = 4, 8

    def __init__(self, vae: AutoencoderKLWan):
        self.vae = vae.eval()
        shape = (1, vae.config.z_dim, 1, 1, 1)
        self.mean = torch.tensor(vae.config.latents_mean).view(shape)
        self.std = torch.tensor(vae.config.latents_std).view(shape)

    @classmethod
    def from_pretrained(cls, path, device="cpu", dtype=torch.float32) -> "WanVAE":
        return cls(AutoencoderKLWan.from_pretrained(path, torch_dtype=dtype).to(device))

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean.to(z)) / self.std.to(z)

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        return latents * self.std.to(latents) + self.mean.to(latents)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        param = next(self.vae.parameters())
        return self.normalize(self.vae.encode(video.to(param)).latent_dist.mode())

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Whole-sequence decode (diffusers' own path)."""
        param = next(self.vae.parameters())
        return self.vae.decode(self.denormalize(latents.to(param))).sample

    def streaming_decoder(self) -> "WanStreamingDecoder":
        return WanStreamingDecoder(self)


class WanStreamingDecoder:
    """Decodes latents chunk by chunk with one persistent causal cache.

    diffusers' public `decode` clears the cache at entry and exit; here we drive `post_quant_conv` (a
    1x1x1 convolution, so chunk-local) and the decoder one latent frame at a time, as `_decode` does,
    but keep the cache list across calls. The first frame is flagged `first_chunk` (it is not upsampled
    in time). Relies on diffusers internals: the version is pinned and a test compares with `decode`.
    """

    def __init__(self, wan: WanVAE):
        self.wan = wan
        self.cache = [None] * wan.vae._cached_conv_counts["decoder"]  # fixed length: memory stays constant
        self.started = False

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.wan.vae
        param = next(vae.parameters())
        x = vae.post_quant_conv(self.wan.denormalize(latents.to(param)))
        frames = []
        for i in range(x.shape[2]):
            frames.append(vae.decoder(x[:, :, i:i + 1], feat_cache=self.cache, feat_idx=[0], first_chunk=not self.started))
            self.started = True
        video = torch.cat(frames, dim=2)
        if vae.config.patch_size is not None:
            video = unpatchify(video, patch_size=vae.config.patch_size)
        return video.clamp(-1.0, 1.0)
