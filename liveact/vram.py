"""GPU memory a pipeline needs, counted from the models' own shapes: nothing allocated, no weights, no network.

    needs = vram.count(config_18b(), (416, 720), options)     # Needs: weights per part, session state, peak
    needs.total                                                # bytes one GPU holds

- weights: each part is built on the meta device from its config, with the pipeline's own conversions
  (`.to(dtype)`, `enable_fp8_gemm`), and its parameters and buffers are summed. The transformer comes from its
  config dict, the released encoders and VAE from the configs below (tests/test_vram.py checks them against the
  full-size key lists of the released files).
- session state and activations: the code that makes them runs on the meta device, standing for CUDA, while
  `LiveBytes` counts the storages it allocates and frees (`peak_activation_bytes` says what it does not see).
"""

from __future__ import annotations

import json
import weakref
from dataclasses import astuple, dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from .memory import ConvKVMemory
from .stream import StreamConfig
from .transformer import LiveActTransformer
from .vae import WanVAE

if TYPE_CHECKING:
    from .pipeline import Options

# The released parts' configs, as liveact/release.py reads them from the shapes in Wan2.1_VAE.pth,
# models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth and models_t5_umt5-xxl-enc-bf16.pth.
VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
           temperal_downsample=[False, True, True])
CLIP = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, image_size=224,
            patch_size=14, projection_dim=1024, hidden_act="gelu", layer_norm_eps=1e-5)
UMT5 = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
            relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
            layer_norm_epsilon=1e-6, dropout_rate=0.0)
WAV2VEC2 = dict()  # TencentGameMate/chinese-wav2vec2-base is a standard wav2vec2-base: Wav2Vec2Config's defaults
PARTS = ("text_encoder", "image_encoder", "audio_encoder", "vae")
STREAMED_ON_DEVICE = 2  # offload.py: a streamed block computes while the next one's copy arrives


# -- counting live storages ------------------------------------------------------------------------------

def _tensors(values: Iterable) -> Iterator[torch.Tensor]:
    """The tensors among an op's arguments or results (lists of them included, as torch.cat's)."""
    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from _tensors(value)


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages alive that ops made on `device` while this mode was on (`live`), and their `peak`.

    A storage counts from the op that returns it first -- not one of that op's inputs' storages, so views and
    in-place results cost nothing -- until Python frees it (`weakref.finalize` on the storage).
    """

    def __init__(self, device: torch.device | str):
        super().__init__()
        self.device = torch.device(device).type
        self.live = self.peak = 0
        self._counted: set[int] = set()  # ids of the live storages counted

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {id(t.untyped_storage()) for t in _tensors((*args, *kwargs.values()))}
        for tensor in _tensors(out if isinstance(out, (list, tuple)) else (out,)):
            storage = tensor.untyped_storage()
            if tensor.device.type == self.device and id(storage) not in inputs and id(storage) not in self._counted:
                self._add(storage)
        return out

    def _add(self, storage: torch.UntypedStorage) -> None:
        key, nbytes = id(storage), storage.nbytes()
        self._counted.add(key)
        weakref.finalize(storage, self._free, key, nbytes).atexit = False
        self.live += nbytes
        self.peak = max(self.peak, self.live)

    def _free(self, key: int, nbytes: int) -> None:
        self._counted.discard(key)
        self.live -= nbytes

    def transient(self, run: Callable[[], object]) -> int:
        """Peak bytes above those alive before, while `run()` runs (what it returns is freed at once)."""
        before = self.peak = self.live
        run()
        return self.peak - before


class FusedAttention(TorchFunctionMode):
    """Scaled dot-product attention as a GPU's fused kernels run it: the output is all they allocate (elsewhere
    PyTorch takes its math path, which materialises every [queries, keys] score). The values' head size is the
    queries' in every attention counted here."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            return torch.zeros_like(args[0])  # [B, heads, queries, head_dim] laid out as q, as flash kernels return it
        return func(*args, **(kwargs or {}))


class MetaCuda(torch.Tensor):
    """A meta tensor that the modules take for a CUDA one, so they run their GPU branches (`Fp8Linear`'s
    `_scaled_mm`); the results of ops on it are MetaCuda too."""

    @property
    def is_cuda(self) -> bool:
        return True


def _zeros(*shape: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Zeros on `device`; on the meta device, standing for a CUDA tensor."""
    x = torch.zeros(*shape, device=device, dtype=dtype)
    return x.as_subclass(MetaCuda) if x.is_meta else x


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers, each tensor once (tied weights are one tensor)."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


# -- weights ----------------------------------------------------------------------------------------------

def _cast(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    return nn.Module.to(module, dtype)  # not diffusers' .to, which warns of float32 modules these models lack


def _key(config: dict) -> str:
    return json.dumps(config, sort_keys=True)  # hashable, for the caches


@lru_cache(maxsize=8)
def _transformer(config: str, dtype: torch.dtype, fp8_gemm: bool) -> LiveActTransformer:
    """The transformer on the meta device, as the pipeline holds it (never changed once built: it is cached)."""
    with torch.device("meta"):
        model = _cast(LiveActTransformer.from_config(json.loads(config)), dtype)
    if fp8_gemm:
        model.enable_fp8_gemm()
    return model


def meta_transformer(config: dict, dtype: torch.dtype = torch.bfloat16, fp8_gemm: bool = False) -> LiveActTransformer:
    """The transformer of `config` on the meta device, as the pipeline holds it (cached: do not change it)."""
    return _transformer(_key(config), dtype, fp8_gemm)


@dataclass(frozen=True)
class TransformerWeights:
    """The transformer's weight bytes: its blocks, and the rest."""

    block: int  # bytes of one block (all alike)
    num_blocks: int
    rest: int  # embeddings, projections and head

    def on_device(self, blocks: int | None = None) -> int:
        """Bytes on the GPU with `blocks` of the blocks there (None: all)."""
        return self.rest + self.block * (self.num_blocks if blocks is None else min(blocks, self.num_blocks))


def transformer_weights(config: dict, dtype: torch.dtype = torch.bfloat16,
                        fp8_gemm: bool = False) -> TransformerWeights:
    """The transformer's weight bytes; with `fp8_gemm`, the blocks' linear weights are e4m3 (1 byte) with a float32
    scale per output row, as `kernels.Fp8Linear` stores them."""
    model = meta_transformer(config, dtype, fp8_gemm)
    blocks = module_bytes(model.blocks)
    return TransformerWeights(module_bytes(model.blocks[0]), len(model.blocks), module_bytes(model) - blocks)


def released_part(name: str) -> nn.Module:
    """One of the released model's other parts (PARTS), built on the meta device from its config as the pipeline
    builds it (liveact/release.py, audio.Wav2Vec2Features)."""
    from diffusers import AutoencoderKLWan
    from transformers import (CLIPVisionConfig, CLIPVisionModelWithProjection, UMT5Config, UMT5EncoderModel,
                              Wav2Vec2Config, Wav2Vec2Model)

    build = {"text_encoder": lambda: UMT5EncoderModel(UMT5Config(**UMT5)),
             "image_encoder": lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP)),
             "audio_encoder": lambda: Wav2Vec2Model(Wav2Vec2Config(**WAV2VEC2)),
             "vae": lambda: AutoencoderKLWan(**VAE)}[name]
    with torch.device("meta"):
        return build()


@lru_cache
def weight_bytes(name: str, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes of a released part's weights (PARTS) in `dtype`."""
    return module_bytes(_cast(released_part(name), dtype))


# -- session state ----------------------------------------------------------------------------------------

def memory_count(stream: StreamConfig) -> int:
    """Distinct key/value memories of a session, as StreamingSession makes them: one per denoising step and one per
    audio-guided step (Neighbor Forcing), or one and a null-audio one (clean context)."""
    guided = len(range(stream.audio_from_step, stream.sampler.num_steps)) if stream.audio_guidance != 1.0 else 0
    return stream.sampler.num_steps + guided if stream.context == "neighbor" else 1 + min(guided, 1)


def _latent_grid(size: tuple[int, int]) -> tuple[int, int]:
    return size[0] // WanVAE.spatial_ratio, size[1] // WanVAE.spatial_ratio


def make_memory(model: LiveActTransformer, size: tuple[int, int], stream: StreamConfig, world: int = 1) -> ConvKVMemory:
    """One key/value memory of a session at a video size (H, W), on the model's device, as StreamingSession makes it
    (each of `world` ranks keeps its share of the heads)."""
    cfg = model.config
    height, width = _latent_grid(size)
    tokens_per_frame = (height // cfg.patch_size[1]) * (width // cfg.patch_size[2])
    return ConvKVMemory(cfg.num_layers, tokens_per_frame, cfg.num_heads // world, cfg.dim // cfg.num_heads,
                        layout=stream.layout, compression=stream.compression, value_filter=stream.value_filter,
                        fp8=stream.fp8_memory, offload=stream.offload_memory, dtype=model.dtype, device=model.device)


@lru_cache
def _memory_bytes(config: str, size: tuple[int, int], stream: StreamConfig, dtype: torch.dtype, world: int) -> int:
    model = _transformer(config, dtype, fp8_gemm=False)
    with FakeTensorMode(allow_non_fake_inputs=True), LiveBytes(model.device) as tracker:  # fake host storage
        return tracker.transient(lambda: make_memory(model, size, stream, world))


def memory_bytes(config: dict, size: tuple[int, int], stream: StreamConfig = StreamConfig(),
                 dtype: torch.dtype = torch.bfloat16, world: int = 1) -> int:
    """GPU bytes of one key/value memory: its `.nbytes`, less its host storage when offloaded."""
    return _memory_bytes(_key(config), size, stream, dtype, world)


def _conditioning(model: LiveActTransformer, size: tuple[int, int], stream: StreamConfig):
    """What a session computes once: each block's cross-attention keys and values of a prompt and a portrait's
    image tokens (4 x [B, tokens, heads, head_dim]), and the portrait's y [B, in_dim - out_dim, window, h, w]."""
    cfg, on = model.config, dict(device=model.device, dtype=model.dtype)
    text, image = _zeros(1, cfg.text_len, cfg.text_dim, **on), _zeros(1, cfg.image_tokens, cfg.image_dim, **on)
    y = _zeros(1, cfg.in_dim - cfg.out_dim, stream.layout.window, *_latent_grid(size), **on)
    return model.cross_keys_values(model.embed_context(text, image)), y


def measure_context(model: LiveActTransformer, size: tuple[int, int], stream: StreamConfig = StreamConfig()) -> int:
    """Bytes a session keeps on the device for its prompt and portrait (`_conditioning`)."""
    with torch.no_grad(), LiveBytes(model.device) as tracker:
        context, y = _conditioning(model, size, stream)
        return tracker.live  # the text and image tokens are freed, these stay


# -- activations ------------------------------------------------------------------------------------------

def measure_call(model: LiveActTransformer, size: tuple[int, int], stream: StreamConfig = StreamConfig()) -> int:
    """Transient peak of a steady-state chunk of `model` (on any device; the meta one stands for CUDA): the window
    compressed before the third chunk, then one denoiser call on `layout.chunk` latent frames at their slot, with
    audio, batch 1. An offloaded window is measured on the device: its host copies land in its workspace."""
    cfg, layout, on = model.config, stream.layout, dict(device=model.device, dtype=model.dtype)
    with torch.no_grad(), FusedAttention(), LiveBytes(model.device) as tracker:
        context, y = _conditioning(model, size, stream)
        memory = make_memory(model, size, replace(stream, offload_memory=False))
        filters = model.memory_filters() if stream.compression == "conv" else ()

        def chunk() -> torch.Tensor:
            slot = memory.begin_chunk(2, filters)  # the first chunk ConvKV compresses for: steady state from here
            x = _zeros(1, cfg.out_dim, layout.chunk, *y.shape[-2:], **on)
            audio = _zeros(1, layout.chunk, cfg.context_tokens, cfg.output_dim, **on)
            t = stream.sampler.timesteps[stream.audio_from_step]
            return model(x, t, y[:, :, slot:slot + layout.chunk], context, audio, memory, slot)

        chunk()  # the first call fills the device's RoPE-table caches, which stay
        return tracker.transient(chunk)


@dataclass(frozen=True)
class Decode:
    cache: int  # the streaming decoder's causal cache, kept between chunks
    peak: int  # transient peak of decoding one chunk


def measure_decode(vae: WanVAE, size: tuple[int, int], stream: StreamConfig = StreamConfig()) -> Decode:
    """The streaming decoder of `vae` (on any device) after the first chunk: one chunk of `layout.chunk` latent
    frames to video frames."""
    param, layout = next(vae.vae.parameters()), stream.layout

    def latents(frames: int) -> torch.Tensor:  # [B, z_dim, frames, h, w]
        return _zeros(1, vae.vae.config.z_dim, frames, *_latent_grid(size), device=param.device, dtype=param.dtype)

    with torch.no_grad(), FusedAttention(), LiveBytes(param.device) as tracker:
        decoder = vae.streaming_decoder()
        before = tracker.live
        decoder.decode(latents(layout.first_chunk))
        cache = tracker.live - before
        return Decode(cache, tracker.transient(lambda: decoder.decode(latents(layout.chunk))))


@dataclass(frozen=True)
class Activations:
    context: int  # kept by a session: its prompt's and portrait's conditioning
    call: int  # transient peak of a steady-state chunk's window compression and denoiser call
    decoder_cache: int  # kept by a session's streaming decoder
    decode: int  # transient peak of a chunk's decode


@lru_cache
def _activations(config: str, size: tuple[int, int], dtype: torch.dtype, fp8_gemm: bool,
                 stream: StreamConfig) -> Activations:
    # blocks are alike and run in turn, each leaving only x behind: a call peaks in any one of them
    one_block = meta_transformer({**json.loads(config), "num_layers": 1}, dtype, fp8_gemm)
    decode = measure_decode(WanVAE(_cast(released_part("vae"), dtype)), size, stream)
    return Activations(measure_context(_transformer(config, dtype, fp8_gemm=False), size, stream),
                       measure_call(one_block, size, stream), decode.cache, decode.peak)


def peak_activation_bytes(config: dict, size: tuple[int, int], dtype: torch.dtype = torch.bfloat16,
                          fp8_gemm: bool = False, stream: StreamConfig = StreamConfig()) -> Activations:
    """Transient peaks at a video size (H, W), measured by `LiveBytes` on the meta device standing for CUDA: (a) a
    steady-state chunk of the transformer (`measure_call`: the window's compression and one call, the window's
    per-layer workspace included, e.g. its keys in float32 for RoPE) and (b) a chunk of the released VAE's
    streaming decode (`measure_decode`); with what a session keeps between chunks: its conditioning and the
    decoder's cache.

    What it does not see: the caching allocator's rounding and fragmentation (it rounds blocks up to 512 bytes and
    keeps freed ones cached: a process reserves more than its peak); what kernels allocate inside themselves
    (cuBLAS and cuDNN workspaces, flash attention's row statistics: attention is taken to allocate its output
    only); the CUDA context (~0.5 GiB a process); torch.compile's fusions (eager ops are measured: compiled blocks
    allocate less); the RoPE tables cached on the device (a few MB); an offloaded window's copies of its fp8
    scales; a rank's share under sequence parallelism (a rank is counted as one GPU running the whole chunk); a
    session's start (the VAE encode of its conditioning, the text and image encoders), the audio encoder and the
    frames' conversion to uint8.
    """
    return _activations(_key(config), size, dtype, fp8_gemm, stream)


# -- a pipeline's needs ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Needs:
    """Bytes one GPU holds for a pipeline and one live session."""

    transformer: int  # weights on the GPU (resident blocks only when offloading them)
    text_encoder: int
    image_encoder: int
    audio_encoder: int
    vae: int
    memories: int  # the session's key/value windows
    context: int  # the session's conditioning
    decoder_cache: int  # the session's streaming decoder's
    activations: int  # a chunk's transient peak: denoise, decode, or both at once with overlap_decode

    @property
    def total(self) -> int:
        return sum(astuple(self))


def count(config: dict, size: tuple[int, int], options: Options, world: int = 1) -> Needs:
    """What `options` (pipeline.Options) make one GPU of `world` hold for the transformer `config` at a video size
    (H, W): `options.resident_blocks` stay on the GPU when `options.block_offload` streams the others."""
    resident = options.resident_blocks
    dtype = options.dtype or torch.bfloat16  # None: the pipeline's choice on a GPU
    weights = transformer_weights(config, dtype, options.fp8_gemm)
    active = peak_activation_bytes(config, size, dtype, options.fp8_gemm, options.stream)
    peaks = (active.call, active.decode)
    return Needs(transformer=weights.on_device(resident + STREAMED_ON_DEVICE if options.block_offload else None),
                 text_encoder=0 if options.text_encoder_on_cpu else weight_bytes("text_encoder", dtype),
                 image_encoder=weight_bytes("image_encoder", dtype), audio_encoder=weight_bytes("audio_encoder", dtype),
                 vae=weight_bytes("vae", dtype),
                 memories=memory_count(options.stream) * memory_bytes(config, size, options.stream, dtype, world),
                 context=active.context, decoder_cache=active.decoder_cache,
                 activations=sum(peaks) if options.overlap_decode else max(peaks))


# -- a low-memory GPU: the cheapest measures that fit ---------------------------------------------------------

HEADROOM = 0.9  # plan to this share of the card: the allocator's rounding, kernel workspaces and the CUDA context
# are not counted above


def _measures(fp8_gemm: bool) -> list[tuple[str, Callable]]:
    """What `--low-vram` may turn on, cheapest first: the text encoder costs seconds once per session on the CPU;
    fp8 memory halves the window for the least quality (`eval --precision`: at most 0.001 in lip sync and flicker);
    fp8 GEMMs halve the blocks' bytes for more (flicker +0.03-0.06 on the tiny model), on Ada/Hopper only; an
    offloaded window moves each layer's window over the bus at every step."""
    measures = [("text encoder on the CPU", lambda o: replace(o, text_encoder_on_cpu=True)),
                ("fp8 memory", lambda o: replace(o, stream=replace(o.stream, fp8_memory=True)))]
    if fp8_gemm:
        measures.append(("fp8 GEMMs", lambda o: replace(o, fp8_gemm=True)))
    return measures + [("memory window in host memory", lambda o: replace(o, stream=replace(o.stream, offload_memory=True)))]


def fit(config: dict, size: tuple[int, int], options: Options, budget_bytes: int, fp8_gemm: bool = True,
        world: int = 1) -> tuple[Options, list[str]]:
    """The options with the fewest measures (in `_measures`' order, then blocks streamed from host memory, as
    many kept on the GPU as fit) whose count fits HEADROOM of `budget_bytes`, and the measures in words.
    `fp8_gemm`: whether the GPU has fp8 tensor cores. Raises ValueError when nothing fits."""
    budget, taken = HEADROOM * budget_bytes, []
    for name, measure in [("", lambda o: o), *_measures(fp8_gemm)]:
        options = measure(options)
        taken += [name] if name else []
        if count(config, size, options, world).total <= budget:
            return options, taken
    for resident in range(transformer_weights(config, options.dtype or torch.bfloat16, options.fp8_gemm).num_blocks,
                          -1, -1):
        streamed = replace(options, block_offload=True, resident_blocks=resident)
        if count(config, size, streamed, world).total <= budget:
            return streamed, taken + [f"{resident} blocks kept on the GPU, the others streamed from host memory"]
    least = count(config, size, replace(options, block_offload=True, resident_blocks=0), world).total
    raise ValueError(f"it needs about {least / HEADROOM / 2**30:.1f} GiB of GPU memory even with every block streamed "
                     f"from host memory")


def fit_table(config: dict, sizes: list[tuple[int, int]], gibs: list[float], fp8_gemm: bool = True) -> str:
    """Markdown: for each card size and video size (H, W), what `fit` takes and the bytes it counts (bf16)."""
    from .pipeline import Options  # here: pipeline imports this module

    plain = Options(dtype=torch.bfloat16)
    rows = ["| GPU memory | video | what fits (counted, not measured) | counted |", "| --- | --- | --- | --- |"]
    for gib in gibs:
        for height, width in sizes:
            try:
                options, measures = fit(config, (height, width), plain, int(gib * 2**30), fp8_gemm)
                counted = f"{count(config, (height, width), options).total / 2**30:.1f} GiB"
                rows.append(f"| {gib:g} GiB | {width}x{height} | {', '.join(measures) or 'as it is'} | {counted} |")
            except ValueError as error:
                rows.append(f"| {gib:g} GiB | {width}x{height} | does not fit: {error} | – |")
    return "\n".join(rows)
