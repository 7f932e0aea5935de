"""The pipeline a user runs: portrait + speech (+ prompt) in, video frames out -- whole files or live.

    pipe = liveact.load("liveact-18b", device="cuda", dtype=torch.bfloat16)
    pipe.generate("portrait.png", "speech.wav", "out.mp4", prompt="a person is talking")

    session = pipe.start("portrait.png", prompt="a person is talking", seed=42)
    session.feed(samples, sample_rate)           # as the speech arrives
    for chunk in session.chunks():                # as soon as each chunk's audio is there
        show(chunk.frames)                        # uint8 [T, H, W, 3]

The pipeline only orchestrates: encoders make the conditioning, `StreamingSession` denoises, the
autoencoder's streaming decoder turns each chunk into frames.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from .audio import (SAMPLE_RATE, AudioFeaturizer, MelFeatures, StreamingFeatures, Wav2Vec2Features, decode_audio, featurize,
                    save_wav)
from .autoencoder import load_autoencoder
from .encoders import ImageEncoder, TextEncoder, center_crop_resize, image_to_tensor
from . import release, vram
from .hub import (PRESETS, Components, LiveActError, check_gpu, config_18b, load_transformer, parse_size, resolve,
                  transformer_config)
from .inputs import Limits, check_edits, check_prompt, read_portrait
from .parallel import SequenceParallel
from .stream import Chunk, ChunkGeometry, PromptEdit, StreamConfig, StreamingSession
from .kernels import check_fp8_gemm, has_fp8_gemm
from .transformer import LiveActTransformer
from .vae import DecodeThread, VideoAutoencoder, WanVAE, condition, decode_beside

@dataclass
class Options:
    """How to run: each is also a flag of `python -m liveact generate`."""

    device: str = "cpu"
    dtype: torch.dtype | None = None  # None: bfloat16 on CUDA, float32 elsewhere
    text_encoder_on_cpu: bool = False  # the reference's --t5_cpu
    compile: bool = False  # torch.compile each transformer block
    attention: str = "sdpa"  # transformer.ATTENTION_BACKENDS: "sdpa", "sdpa-cudnn", ..., "flash", "sage"
    fp8_gemm: bool = False  # the blocks' linear layers in fp8 (Ada/Hopper GPUs), the reference's --fp8_gemm
    overlap_decode: bool = False  # decode chunk k while chunk k+1 denoises (a GPU's second stream)
    block_offload: bool = False  # stream transformer blocks from pinned CPU memory
    resident_blocks: int = 0  # with block_offload: the first blocks, kept on the GPU
    low_vram: float | None = None  # GiB of GPU memory to fit: load() picks the measures above (vram.fit)
    stream: StreamConfig = field(default_factory=StreamConfig)


@dataclass
class VideoChunk:
    index: int
    frames: np.ndarray  # uint8 [T, H, W, 3]
    first_frame: int  # index of frames[0] in the whole video
    seconds: float  # the chunk's stages: audio features (live sessions) + denoise + decode
    memory_bytes: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds of "audio", "denoise", "decode"


def _load_vae(folder: Path, device, dtype) -> VideoAutoencoder:
    """The Wan VAE, or the tiny autoencoder when the folder's config names it."""
    if json.loads((Path(folder) / "config.json").read_text()).get("_class_name") == "TinyVideoAutoencoder":
        return load_autoencoder(folder, dtype).to(device)  # the dtype at loading: diffusers warns at .to(dtype)
    return WanVAE.from_pretrained(folder, device=device, dtype=dtype)


def _load_parts(parts: Components, device, text_device, dtype, text_len: int) -> tuple[VideoAutoencoder, ImageEncoder, TextEncoder]:
    """The autoencoder and the image and text encoders of a folder of part folders."""
    return (_load_vae(parts["vae"], device, dtype),
            ImageEncoder.from_pretrained(parts["image_encoder"], parts.paths.get("image_processor"), device=device, dtype=dtype),
            TextEncoder.from_pretrained(parts["text_encoder"], parts["tokenizer"], max_length=text_len, device=text_device, dtype=dtype))


class LiveActPipeline:
    def __init__(self, transformer: LiveActTransformer, vae: VideoAutoencoder, image_encoder, text_encoder,
                 featurizer: AudioFeaturizer, *, fps: float = 20, size: tuple[int, int] = (512, 512),
                 options: Options | None = None, parallel: SequenceParallel | None = None, name: str = "liveact",
                 released: bool = False):
        self.transformer, self.vae = transformer, vae
        self.image_encoder, self.text_encoder, self.featurizer = image_encoder, text_encoder, featurizer
        self.fps, self.size, self.options, self.parallel, self.name = fps, size, options or Options(), parallel, name
        self.released = released  # the released LiveAct model: it runs at any of the reference's sizes
        self.warmed_sizes: set[str] = set()  # sizes `warm_up` has run (compiled, where compiling)
        cfg = transformer.config
        if (featurizer.layers, featurizer.channels) != (cfg.audio_layers, cfg.audio_channels):
            raise LiveActError(f"the audio featurizer gives {featurizer.layers}x{featurizer.channels} features and "
                               f"the transformer expects {cfg.audio_layers}x{cfg.audio_channels}: the model folder is inconsistent.")

    @property
    def sizes(self) -> tuple[str, ...]:
        """WIDTH*HEIGHT a session may ask for, the loaded size first: the released model runs at any of the
        reference's sizes, a trained tiny model at its own only."""
        own = f"{self.size[1]}*{self.size[0]}"
        return (own, *(size for size in release.SIZES if size != own)) if self.released else (own,)

    def warm_up(self, sizes: Sequence[str] | None = None, start=None, progress=print) -> float:
        """Make the first three chunks of a silent session at each size (default: the loaded one): the first
        chunk's shape, the second's, and ConvKV's first compression. Compiling and lazy initialisation happen
        here, not in a visitor's first chunks. `start`: how sessions start (a worker pool's, to warm every rank).
        Returns the seconds it took; sizes warmed before are skipped."""
        began, start = time.perf_counter(), start or self.start
        for size in [s for s in (sizes or self.sizes[:1]) if s not in self.warmed_sizes]:
            height, width = parse_size(size)
            live = start(Image.new("RGB", (width, height), (128, 128, 128)), seed=0, size=size)
            video_frames = self.geometry.chunk_video_frames(2).stop  # chunks 0, 1 and 2
            live.feed(np.zeros(int(video_frames / self.fps * SAMPLE_RATE) + 1, np.float32), SAMPLE_RATE)
            live.finish()
            for _ in live.chunks():
                pass
            getattr(live, "close", lambda: None)()  # a worker pool's session ends on every rank
            self.warmed_sizes.add(size)
        seconds = time.perf_counter() - began
        progress(f"{self.name}: warmed up {', '.join(sizes or self.sizes[:1])} (3 chunks each) in {seconds:.1f} s")
        return seconds

    @property
    def geometry(self) -> ChunkGeometry:
        """Which video frames and audio each chunk of this pipeline's sessions covers."""
        return ChunkGeometry(self.options.stream.layout, self.transformer.config.vae_scale)

    # -- conditioning ----------------------------------------------------------------------------

    def _portrait(self, image: str | Path | Image.Image | np.ndarray, size: tuple[int, int] | None = None) -> Image.Image:
        return center_crop_resize(read_portrait(image), *(size or self.size))

    def start(self, image, prompt: str = "", seed: int = 42, edits: Sequence[tuple[int, int | None, str]] = (),
              audio_stream: StreamingFeatures | None = None, stream: StreamConfig | None = None,
              size: str | Sequence[int] | None = None) -> "LiveSession":
        """A live session for a portrait: feed it speech, take its chunks (`stream` and `size` override the
        pipeline's memory, guidance and resolution for this session only)."""
        portrait = self._portrait(image, None if size is None else parse_size(size))
        prompt, edits = check_prompt(prompt), check_edits(edits)
        device = self.options.device
        y = condition(self.vae, image_to_tensor(portrait).to(device), self.options.stream.layout.window)
        image_tokens = self.image_encoder(portrait)
        session = StreamingSession(
            self.transformer, y, image_tokens, self.text_encoder(prompt), config=stream or self.options.stream,
            generator=torch.Generator().manual_seed(seed), parallel=self.parallel,
            edits=[PromptEdit(start, end, self.text_encoder(text)) for start, end, text in edits])
        features = audio_stream or StreamingFeatures(self.featurizer, self.fps,
                                                     window_frames=session.window_video_frames,
                                                     context=self.transformer.config.audio_window)
        return LiveSession(self, session, features, portrait)

    def generate(self, image, audio: str | Path, out: str | Path, prompt: str = "", seed: int = 42,
                 edits: Sequence[tuple[int, int | None, str]] = (), progress: bool = True,
                 max_audio_seconds: float | None = None, stream_audio: bool = False) -> Path:
        """Whole file in, mp4 with the speech out (frames written as they are decoded). Speech longer than
        `max_audio_seconds` (default: LIVEACT_MAX_AUDIO_SECONDS, else 300 s) is refused. `stream_audio`: featurize
        each chunk's window from its own samples as a live session does (the reference's --steam_audio), not the
        whole recording at once. Edits that start after the video ends are left out with a warning."""
        from moviepy.video.io.ffmpeg_writer import FFMPEG_VideoWriter
        from tqdm.auto import tqdm

        limit = Limits.from_env().max_audio_seconds if max_audio_seconds is None else max_audio_seconds
        samples, rate = decode_audio(audio, max_seconds=limit)
        total_frames = int(len(samples) / rate * self.fps)  # the video lasts as long as the speech
        chunks = self.geometry.chunks_for(total_frames)
        edits = check_edits(edits, chunks)  # an edit past the end is left out with a warning, before it is encoded
        live = self.start(image, prompt, seed, edits)
        helper = self.parallel is not None and self.parallel.rank != 0  # helpers denoise; rank 0 decodes and writes
        if stream_audio:
            live.feed(samples, rate)
            live.finish()
            made = (live.next_chunk(decode=not helper) for _ in range(chunks))
        else:
            features = featurize(self.featurizer, samples, rate, self.fps)  # [frames, layers, channels]
            made = (live.session.stream(features, num_chunks=chunks) if helper
                    else live.chunks_from_features(features, chunks))
        if helper:
            for _ in made:
                pass
            return Path(out)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        height, width = self.size
        with tempfile.TemporaryDirectory(prefix="liveact-") as folder:
            speech = save_wav(Path(folder) / "speech.wav", samples, rate)  # not `audio`: it may hold a video track too
            writer = FFMPEG_VideoWriter(str(out), (width, height), self.fps, codec="libx264", audiofile=str(speech),
                                        audio_codec="aac", preset="veryfast", pixel_format="yuv420p")
            try:
                bar = tqdm(total=chunks, unit="chunk", desc=f"{self.name} {total_frames / self.fps:.1f}s",
                           disable=not progress)
                for chunk in made:
                    for frame in chunk.frames[:max(0, total_frames - chunk.first_frame)]:
                        writer.write_frame(frame)
                    bar.update(1)
                    bar.set_postfix(ms=f"{chunk.seconds * 1000:.0f}", mem=f"{chunk.memory_bytes / 2**20:.1f}MiB")
                bar.close()
            finally:
                writer.close()
        return out


class LiveSession:
    """One live stream: feed speech, iterate chunks of frames. Memory stays constant however long it runs."""

    def __init__(self, pipe: LiveActPipeline, session: StreamingSession, features: StreamingFeatures,
                 portrait: Image.Image):
        self.pipe, self.session, self.features, self.portrait = pipe, session, features, portrait
        self.decoder = pipe.vae.streaming_decoder()
        self._audio_seconds: dict[int, float] = {}  # chunk index -> seconds its audio window took, until decoded
        self._decode_thread = DecodeThread() if pipe.options.overlap_decode else None

    def feed(self, samples: np.ndarray, sample_rate: int = 16000) -> None:
        self.features.push(samples, sample_rate)

    def finish(self) -> None:
        self.features.finish()

    @property
    def done(self) -> bool:
        """All received audio is covered (only once the speech has ended)."""
        received = self.features.received_frames
        return self.features.finished and (received == 0 or self.session.chunk_index >= self.session.chunks_for(received))

    @property
    def ready(self) -> bool:
        """The next chunk can be made: its speech has arrived (or the speech has ended) and it is not done."""
        return not self.done and self.features.ready(self.session.audio_window_start(self.session.chunk_index))

    def chunks(self, before_each: Callable[[], None] | None = None) -> Iterator[VideoChunk]:
        """Chunks for which enough speech has arrived; returns when it must wait for more (or is done).
        `before_each` runs before each chunk denoises (a worker pool tells its helpers to join in)."""
        yield from self._decoded(self._denoised(before_each))

    def next_chunk(self, decode: bool = True) -> VideoChunk | None:
        """Denoise (and decode) the next chunk; a helper rank of a parallel session denoises only."""
        chunk = self._denoise_next()
        if not decode:
            self._audio_seconds.pop(chunk.index)
            return None
        return next(self._decoded([chunk], beside=False))

    def chunks_from_features(self, features: torch.Tensor, count: int) -> Iterator[VideoChunk]:
        """Chunks from precomputed per-frame features of a whole recording."""
        yield from self._decoded(self.session.stream(features, num_chunks=count))

    def _denoised(self, before_each: Callable[[], None] | None = None) -> Iterator[Chunk]:
        while self.ready:
            if before_each is not None:
                before_each()
            yield self._denoise_next()

    def _denoise_next(self) -> Chunk:
        began = time.perf_counter()
        window = self.features.window(self.session.audio_window_start(self.session.chunk_index))
        self._audio_seconds[self.session.chunk_index] = time.perf_counter() - began
        return self.session.next_chunk(window)

    def _decoded(self, chunks, beside: bool = True) -> Iterator[VideoChunk]:
        """Decode each chunk: on the session's decode thread, beside the next one's denoise, with `overlap_decode`."""
        thread = self._decode_thread if beside else None
        for chunk, frames, decode_s in decode_beside(chunks, self._frames, thread):
            timings = {"audio": self._audio_seconds.pop(chunk.index, 0.0), "denoise": chunk.seconds, "decode": decode_s}
            yield VideoChunk(chunk.index, frames, chunk.video_frames.start, sum(timings.values()), chunk.memory_bytes,
                             timings)

    def _frames(self, latents: torch.Tensor) -> np.ndarray:
        """A chunk's latents -> uint8 frames [T, H, W, 3] on the host."""
        video = self.decoder.decode(latents)  # [B, 3, T, H, W] in [-1, 1]
        return ((video[0].permute(1, 2, 3, 0).float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


# -- loading --------------------------------------------------------------------------------------

def load(model: str | Path = "tiny", *, device: str | None = None, dtype: torch.dtype | None = None,
         size: str | Sequence[int] | None = None, fps: float | None = None, options: Options | None = None,
         wav2vec: str | Path | None = None, collective_timeout: float | None = None,
         warm_up: bool = True) -> LiveActPipeline:
    """Load a preset or a model folder (the released LiveAct folder, or part folders) into a pipeline; `wav2vec`
    is the wav2vec2 folder (the reference's --wav2vec_dir); `collective_timeout`: seconds a rank of a parallel run
    waits for the others in a collective before it raises; `warm_up`: with `compile`, compile the chunk shapes now
    (a worker pool does it itself, once every rank has loaded). Errors are one actionable sentence (LiveActError)."""
    preset = PRESETS.get(str(model))
    released = is_released(model)
    options = options or Options()
    if device is not None:
        options = replace(options, device=device)
    elif released:
        options = replace(options, device="cuda")
    if dtype is not None:
        options = replace(options, dtype=dtype)
    if options.dtype is None:
        options = replace(options, dtype=torch.bfloat16 if torch.device(options.device).type == "cuda" else torch.float32)
    if options.fp8_gemm:
        try:
            check_fp8_gemm(options.device)  # before downloading or reading the weights
        except ValueError as error:
            raise LiveActError(str(error)) from None
    parallel = SequenceParallel.from_env(options.device, collective_timeout)
    if parallel is not None and torch.device(options.device).type == "cuda":
        options = replace(options, device=f"cuda:{parallel.rank}")

    settings = dict(release.SETTINGS) if released else {}
    height, width = parse_size(size) if size is not None else tuple(settings.get("size", (512, 512)))
    if released:  # fail before downloading or reading 40 GB on a machine that cannot run it
        config = config_18b() if preset is not None else transformer_config(Path(model))
        world, name = parallel.world if parallel else 1, preset.name if preset else str(model)
        if options.low_vram:
            options = _fit(config, (height, width), options, world, name, progress=parallel is None or parallel.rank == 0)
        check_gpu(options.device, vram.count(config, (height, width), options, world).total / vram.HEADROOM, name,
                  lambda total: _low_vram_hint(config, (height, width), options, world, total))
    components = resolve(model, wav2vec)
    settings.update(components.settings)
    options = replace(options, stream=_as_trained(options.stream, settings))
    if size is None and "size" in components.settings:
        height, width = components.settings["size"]
    pipe = _assemble(components, options, fps or settings.get("fps", 20), (height, width), parallel)
    if options.compile and warm_up:  # compile every chunk shape now, not in the first session's chunks (each rank alike)
        pipe.warm_up(progress=print if parallel is None or parallel.rank == 0 else lambda _: None)
    return pipe


def _fit(config: dict, size: tuple[int, int], options: Options, world: int, name: str, progress: bool) -> Options:
    """--low-vram GIB: the cheapest measures that fit (vram.fit), said in one line; one sentence when none do."""
    try:
        fitted, measures = vram.fit(config, size, options, int(options.low_vram * 2**30), has_fp8_gemm(options.device),
                                    world)
    except ValueError as error:
        raise LiveActError(f"{name} does not fit {options.low_vram:g} GiB: {error}.") from None
    if progress:
        print(f"--low-vram {options.low_vram:g}: {', '.join(measures) or 'nothing needed'}")
    return fitted


def _low_vram_hint(config: dict, size: tuple[int, int], options: Options, world: int, total: int) -> str:
    """What to add when a GPU of `total` bytes is too small for `options`."""
    try:
        vram.fit(config, size, options, total, has_fp8_gemm(options.device), world)
        return (f"add --low-vram {total / 2**30:.0f} (it streams what does not fit), or use two GPUs "
                f"(torchrun --nproc-per-node 2).")
    except ValueError:
        return "use two GPUs (torchrun --nproc-per-node 2 -m liveact generate ...) or a larger one."


def is_released(model: str | Path) -> bool:
    """The released LiveAct model, its preset or its folder: it runs on GPUs (a folder given with --device cpu
    runs on the CPU, as the tests' tiny one does)."""
    preset = PRESETS.get(str(model))
    return preset.needs_gpu if preset is not None else Path(model).is_dir() and release.is_release(Path(model))


def _as_trained(stream: StreamConfig, settings: dict) -> StreamConfig:
    """What the denoiser was trained with decides the context and the value filter; a ConvKV-trained model
    runs any memory variant asked for, one trained with another variant runs that one."""
    trained = settings.get("compression", "conv")
    return replace(stream, context=settings.get("context", "neighbor"),
                   value_filter=settings.get("value_filter", stream.value_filter),
                   compression=stream.compression if trained == "conv" else trained)


def _assemble(parts: Components, options: Options, fps: float, size: tuple[int, int],
              parallel: SequenceParallel | None) -> LiveActPipeline:
    device, dtype = options.device, options.dtype
    transformer = load_transformer(parts["transformer"], device="cpu" if options.block_offload else device, dtype=dtype)
    transformer.prepare(device, options.attention, options.fp8_gemm, options.block_offload, options.resident_blocks,
                        options.compile)
    text_device = "cpu" if options.text_encoder_on_cpu else device
    read_parts = release.load_parts if parts.released else _load_parts
    vae, image_encoder, text_encoder = read_parts(parts, device, text_device, dtype, transformer.config.text_len)
    if parts.settings.get("featurizer", "wav2vec2") == "mel":
        featurizer = MelFeatures(n_mels=transformer.config.audio_channels)
    else:
        featurizer = Wav2Vec2Features.from_pretrained(parts["audio_encoder"], device=device, dtype=dtype)
    return LiveActPipeline(transformer, vae, image_encoder, text_encoder, featurizer,
                           fps=fps, size=size, options=options, parallel=parallel, name=parts.name, released=parts.released)
