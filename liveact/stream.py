"""Streaming inference: endless video, chunk by chunk, with constant memory (the paper's algorithm).

    memory[i] for each denoising step i                       (Neighbor Forcing)
    for chunk k = 0, 1, 2, ...:
        if k >= 2: compress and shift every memory            (ConvKV: the window stays 14 frames)
        x <- noise                                            [B, 16, 6 or 8, H, W]
        for step i = 0, 1, 2:
            v <- denoiser(x, t_i, memory[i], slot)            writes this chunk's keys into memory[i]
            x <- x0 = x - t_i * v, re-noised to t_{i+1}
        yield x                                               the chunk's clean latent

At step i a chunk attends to what its predecessor wrote at the same step i, i.e. at the same noise
level -- never to clean latents -- so inference sees what training saw. (Models trained with clean
context -- teacher or diffusion forcing, the baselines of `train.py` -- stream with context="clean": one
memory for all steps, rewritten by an extra pass over each finished chunk at t = 0.) The first chunk is 6 latent
frames whose frame 0 is the reference image (slots 0..5, the first two become the sink); every later
chunk is 8 frames (32 video frames) at slots 6..13. Audio enters from step 1 on; audio guidance runs a
second, null-audio pass with its own memories.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal, Sequence

import torch

from .memory import Compression, ConvKVMemory, MemoryLayout, UnrolledMemory
from .parallel import SequenceParallel
from .sampler import FlowSampler
from .transformer import LiveActTransformer


@dataclass(frozen=True)
class StreamConfig:
    layout: MemoryLayout = field(default_factory=MemoryLayout)
    sampler: FlowSampler = field(default_factory=FlowSampler)
    compression: Compression = "conv"  # "sliding" and "full" are the ablations' baselines
    context: Literal["neighbor", "clean"] = "neighbor"  # what earlier chunks leave in memory (see above)
    value_filter: Literal["key", "value"] = "key"  # "key" = the released behaviour (see memory.py)
    fp8_memory: bool = False
    offload_memory: bool = False
    audio_from_step: int = 1  # audio cross-attention is skipped on earlier (noisier) steps
    audio_guidance: float = 1.0  # > 1: classifier-free guidance on the audio


@dataclass(frozen=True)
class PromptEdit:
    """Use `text` (text-encoder tokens [B, L, text_dim]) for chunks start_chunk <= k < end_chunk (None: to the end);
    where edits overlap, the first one given wins, as in the reference."""

    start_chunk: int
    end_chunk: int | None
    text: torch.Tensor


@dataclass
class Chunk:
    index: int
    latents: torch.Tensor  # clean latents [B, 16, frames, H, W]
    video_frames: range  # which frames of the output video these latents decode to
    seconds: float  # wall time of this chunk's denoising
    memory_bytes: int  # all key/value memories of the session


@dataclass(frozen=True)
class ChunkGeometry:
    """Which video frames and audio each chunk covers (shared by streaming and training)."""

    layout: MemoryLayout
    vae_scale: int = 4  # video frames per latent frame (after the first)

    @property
    def window_video_frames(self) -> int:
        """Video frames covered by the 14-latent-frame window: 1 + 4*13 = 53."""
        return 1 + self.vae_scale * (self.layout.window - 1)

    def chunk_video_frames(self, chunk: int) -> range:
        """Video frames of chunk `chunk`: 0..20 for the first, then 32 per chunk."""
        first = 1 + self.vae_scale * (self.layout.first_chunk - 1)
        if chunk == 0:
            return range(0, first)
        start = first + self.vae_scale * self.layout.chunk * (chunk - 1)
        return range(start, start + self.vae_scale * self.layout.chunk)

    def audio_window_start(self, chunk: int) -> int:
        """First video frame of the audio window of a chunk: the window ends where the chunk ends."""
        return max(0, self.chunk_video_frames(chunk).stop - self.window_video_frames)

    def audio_rows(self, chunk: int) -> slice:
        """Rows of the chunk's latent frames in its audio window (and in y)."""
        first = 0 if chunk == 0 else self.layout.chunk_slot
        return slice(first, first + (self.layout.first_chunk if chunk == 0 else self.layout.chunk))

    def latent_frames(self, chunk: int) -> slice:
        """The chunk's latent frames in the whole stream: 0..5, then 8 per chunk."""
        start = 0 if chunk == 0 else self.layout.first_chunk + self.layout.chunk * (chunk - 1)
        return slice(start, start + (self.layout.first_chunk if chunk == 0 else self.layout.chunk))

    def chunks_for(self, video_frames: int) -> int:
        """How many chunks it takes to cover `video_frames` frames."""
        chunk = 0
        while self.chunk_video_frames(chunk).stop < video_frames:
            chunk += 1
        return chunk + 1


def audio_window(features: torch.Tensor, start: int, frames: int, context: int) -> torch.Tensor:
    """Per-video-frame features [B, T, layers, channels] -> the window [B, frames, context, layers, channels]
    of video frames start..start+frames-1, each with its neighbours -context//2..+context//2,
    indices clamped to the available frames."""
    if features.ndim != 4:
        raise ValueError(f"audio features must be [B, T, layers, channels], got {list(features.shape)}")
    half = context // 2
    index = torch.arange(start, start + frames)[:, None] + torch.arange(-half, half + 1)[None]
    return features[:, index.clamp(0, features.shape[1] - 1).to(features.device)]


class StreamingSession:
    """One endless stream: a portrait's conditioning, per-step memories, and the chunk loop.

    Args:
        model: the denoiser.
        y: mask + reference latents of the whole window [B, in_dim - out_dim, window, H, W].
        image: image-encoder tokens [B, image_tokens, image_dim].
        text: text-encoder tokens [B, L, text_dim].
        config: window layout, sampler, memory options, audio guidance.
        generator: seeds the noise, for reproducible streams.
        noise: draws a noise tensor of a given shape (defaults to torch.randn with `generator`).
        edits: prompt switches by chunk range (the first matching one wins).
        on_step: called as on_step(chunk, step, latents_in, velocity) after every denoising step.
        parallel: sequence parallelism across ranks (each rank runs the same session).
    """

    def __init__(self, model: LiveActTransformer, y: torch.Tensor, image: torch.Tensor, text: torch.Tensor, *,
                 config: StreamConfig = StreamConfig(), generator: torch.Generator | None = None,
                 noise: Callable[[tuple[int, ...]], torch.Tensor] | None = None,
                 edits: Sequence[PromptEdit] = (),
                 on_step: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
                 parallel: SequenceParallel | None = None):
        cfg, lay = model.config, config.layout
        if config.context not in ("neighbor", "clean"):
            raise ValueError(f"context must be 'neighbor' or 'clean', got {config.context!r}")
        if config.compression == "full" and (config.fp8_memory or config.offload_memory):
            raise ValueError("the full cache (a baseline) has no fp8 or offloaded storage")
        expected = (cfg.in_dim - cfg.out_dim, lay.window)
        if y.ndim != 5 or tuple(y.shape[1:3]) != expected:
            raise ValueError(f"y must be [B, {expected[0]}, {expected[1]}, H, W] (the whole window), got {list(y.shape)}")
        self.model, self.config, self.on_step, self.parallel = model, config, on_step, parallel
        self.geometry = ChunkGeometry(lay, cfg.vae_scale)
        self.y = y.to(model.device, model.dtype)
        self.batch, height, width = y.shape[0], y.shape[3], y.shape[4]
        self.latent_shape = (self.batch, cfg.out_dim, height, width)
        self.generator = generator
        self.noise = noise  # None: `_randn` (not stored: a bound method would make a cycle that holds the memories)

        @torch.no_grad()
        def context(text: torch.Tensor) -> list:  # each block's cross-attention keys/values, the same for every call
            return model.cross_keys_values(model.embed_context(text.to(model.device), image.to(model.device)))

        self.context = context(text)
        self.edits = [(e.start_chunk, e.end_chunk, context(e.text)) for e in edits]
        tokens_per_frame = (height // cfg.patch_size[1]) * (width // cfg.patch_size[2])
        heads = cfg.num_heads if parallel is None else cfg.num_heads // parallel.world  # each rank keeps its heads

        def make_memory():
            if config.compression == "full":
                return UnrolledMemory(cfg.num_layers, tokens_per_frame, layout=lay, compression="full")
            return ConvKVMemory(cfg.num_layers, tokens_per_frame, heads, cfg.dim // cfg.num_heads, batch_size=self.batch,
                                layout=lay, compression=config.compression, value_filter=config.value_filter,
                                fp8=config.fp8_memory, offload=config.offload_memory, dtype=model.dtype,
                                device=model.device)

        steps = config.sampler.num_steps
        guided = range(config.audio_from_step, steps) if config.audio_guidance != 1.0 else range(0)
        if config.context == "neighbor":  # Neighbor Forcing: one memory per step
            self.memories = [make_memory() for _ in range(steps)]
            self.null_memories = {step: make_memory() for step in guided}
        else:  # clean context: one memory, rewritten from each finished chunk
            shared, shared_null = make_memory(), make_memory() if guided else None
            self.memories = [shared] * steps
            self.null_memories = {step: shared_null for step in guided}
        # each memory once (in clean context the steps share one): computed here, not per chunk
        self._distinct_memories = list({id(m): m for m in [*self.memories, *self.null_memories.values()]}.values())
        self._null_tokens = None  # tokens of all-zero audio: the same for every chunk
        self.chunk_index = 0

    # -- geometry of the stream ----------------------------------------------------------------

    @property
    def window_video_frames(self) -> int:
        return self.geometry.window_video_frames

    def chunk_video_frames(self, chunk: int) -> range:
        return self.geometry.chunk_video_frames(chunk)

    def audio_window_start(self, chunk: int) -> int:
        return self.geometry.audio_window_start(chunk)

    def chunks_for(self, video_frames: int) -> int:
        return self.geometry.chunks_for(video_frames)

    @property
    def memory_bytes(self) -> int:
        return sum(m.nbytes for m in self._distinct_memories)

    # -- the loop --------------------------------------------------------------------------------

    def stream(self, features: torch.Tensor, num_chunks: int | None = None) -> Iterator[Chunk]:
        """Chunks driven by per-video-frame audio features [T, layers, channels] or [B, T, layers, channels]
        (as many chunks as cover the audio unless `num_chunks` is given)."""
        features = features if features.ndim == 4 else features.unsqueeze(0)
        num_chunks = num_chunks or self.chunks_for(features.shape[1])
        for _ in range(num_chunks):
            start = self.audio_window_start(self.chunk_index)
            yield self.next_chunk(audio_window(features, start, self.window_video_frames,
                                               self.model.config.audio_window))

    @torch.no_grad()
    def next_chunk(self, audio: torch.Tensor) -> Chunk:
        """Denoise the next chunk given its audio window [B, 53, audio_window, layers, channels]."""
        began = time.perf_counter()
        model, config, k = self.model, self.config, self.chunk_index
        rows = self.geometry.audio_rows(k)
        frames = rows.stop - rows.start
        filters = model.memory_filters(self.parallel) if k >= 2 and config.compression == "conv" else ()
        slots = {memory.begin_chunk(k, filters) for memory in self._distinct_memories}
        if len(slots) != 1:
            raise RuntimeError(f"memories disagree on the slot of chunk {k}: {sorted(slots)}")
        slot = slots.pop()
        audio = audio.to(model.device)
        audio_tokens = model.project_audio(audio)[:, rows]
        null_tokens = self._null_audio_tokens(audio)[:, rows] if self.null_memories else None
        y, context = self.y[:, :, rows], self._context(k)

        sampler = config.sampler
        x = self._draw((frames,))
        for step, t in enumerate(sampler.timesteps[:-1]):
            with_audio = step >= config.audio_from_step
            velocity = model(x, t, y, context, audio_tokens if with_audio else None, self.memories[step], slot,
                             self.parallel)
            if step in self.null_memories:
                null = model(x, t, y, context, null_tokens, self.null_memories[step], slot, self.parallel)
                velocity = null + config.audio_guidance * (velocity - null)
            if self.on_step is not None:
                self.on_step(k, step, x, velocity)
            last = step == sampler.num_steps - 1
            x = sampler.step(x, velocity, step, None if last else self._draw((frames,)))
        if config.context == "clean":
            self._remember_clean(x, k, y, context, audio_tokens, null_tokens, slot)
        self.chunk_index += 1
        return Chunk(k, x, self.chunk_video_frames(k), time.perf_counter() - began, self.memory_bytes)

    def _remember_clean(self, x, chunk, y, context, audio_tokens, null_tokens, slot) -> None:
        """Clean context: rewrite the chunk's slots of the shared memory (and the null-audio one) from a pass at
        t = 0 over the chunk as it came out -- the portrait itself in frame 0 of the first, as in training."""
        if chunk == 0:
            x = x.clone()
            x[:, :, 0] = self.y[:, -x.shape[1]:, 0]  # y = mask + latents: its last out_dim channels
        shared_null = next(iter(self.null_memories.values()), None)  # in clean context: one for all guided steps
        for memory, tokens in ((self.memories[0], audio_tokens), (shared_null, null_tokens)):
            if memory is not None:
                self.model(x, 0.0, y, context, tokens, memory, slot, self.parallel)

    def _null_audio_tokens(self, audio: torch.Tensor) -> torch.Tensor:
        if self._null_tokens is None:
            self._null_tokens = self.model.project_audio(torch.zeros_like(audio))
        return self._null_tokens

    def _context(self, chunk: int) -> torch.Tensor:
        for start, end, context in self.edits:
            if start <= chunk and (end is None or chunk < end):
                return context
        return self.context

    def _draw(self, frames: tuple[int]) -> torch.Tensor:
        b, c, h, w = self.latent_shape
        x = (self.noise or self._randn)((b, c, *frames, h, w)).to(self.model.device, self.model.dtype)
        return x if self.parallel is None else self.parallel.broadcast(x)

    def _randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        device = self.generator.device if self.generator is not None else self.model.device
        return torch.randn(shape, generator=self.generator, device=device)
