"""The 18B model on a GPU, with random weights: what `python -m liveact bench --gpu` measures (docs/GPU.md).

    python -m liveact bench --gpu --suite         the attention kernels on a steady chunk's self-attention, then
                                                    eager, compile, fp8 GEMMs, ... each end to end (the page's table)
    python -m liveact bench --gpu --low-vram 24 16
                                                  the same on a GPU capped to a 24 and a 16 GiB card: the measures
                                                    `vram.fit` takes, and an RTX 4090 estimate (the page's section)

Random weights compute as fast as trained ones (the same shapes and kernels), so the released configuration is
built straight on the GPU and nothing is downloaded. The CPU runs the same code on small configs, for the tests.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .bench import H100_PEAK_TFLOPS, flops_per_frame, machine, rss_bytes
from .hub import check_gpu, config_18b
from .kernels import has_fp8_gemm
from .stream import StreamConfig, StreamingSession

# -- 4. the 18B model on a GPU, random weights -----------------------------------------------------

@dataclass(frozen=True)
class GpuVariant:
    """One way to run the model: each setting is the pipeline's option of that name (`Options`, `StreamConfig`)."""

    name: str
    compile: bool = False
    fp8_gemm: bool = False
    attention: str = "sdpa"
    overlap_decode: bool = False
    fp8_memory: bool = False
    offload_memory: bool = False
    block_offload: bool = False
    resident_blocks: int = 0

    @property
    def settings(self) -> dict:
        return {key: value for key, value in asdict(self).items() if key != "name"}


GPU_VARIANTS = (GpuVariant("eager"), GpuVariant("fp8 memory", fp8_memory=True), GpuVariant("torch.compile", compile=True),
                GpuVariant("torch.compile + fp8 memory", compile=True, fp8_memory=True))  # `bench --gpu`
OPTIONAL_ATTENTION = ("flash", "sage")  # kernels of wheels of their own: a suite variant each where installed
ATTENTION_TOLERANCE = 0.01  # the most relative error vs float32 math of an attention kernel the suite may choose
WARMUP_CHUNKS = 3  # every shape a stream has: the first chunk, a later one, the first one ConvKV compresses for
STEADY_FROM = 3  # steady state: the fourth chunk on (the window is full and ConvKV compresses)
ERROR_STEP = 1  # the velocity compared across variants: chunk 2's step 1 (compressed window, audio module on)
TARGET = {"fps": 20.0, "time_to_first_frame_s": 1.0, "worst_chunk_over_median": 1.5}  # issue #17, at 512x512


def suite_variants(attention: str, others: Sequence[str] = ()) -> list[GpuVariant]:
    """Issue #17's variants, cumulative: each adds one setting to the one before (a setting that changes nothing --
    the attention kernel "sdpa", which every variant runs anyway -- adds no variant); then the "compile + fp8 GEMM"
    variant once more with each kernel of `others` instead."""
    additions = (("compile", {"compile": True}), ("fp8 GEMM", {"fp8_gemm": True}), (attention, {"attention": attention}),
                 ("overlapped decode", {"overlap_decode": True}), ("fp8 memory", {"fp8_memory": True}))
    variants, names = [GpuVariant("eager")], []
    for name, setting in additions:
        settings = variants[-1].settings | setting
        if settings != variants[-1].settings:
            names.append(name)
            variants.append(GpuVariant(" + ".join(names), **settings))
    kernels = GpuVariant("compile + fp8 GEMM", compile=True, fp8_gemm=True)
    return variants + [replace(kernels, name=f"{kernels.name} + {other}", attention=other) for other in others]


def gpu_suite(size: tuple[int, int] = (512, 512), chunks: int = 6, device: str = "cuda",
              dtype: torch.dtype = torch.bfloat16, config: dict | None = None, budget_s: float | None = 540.0,
              **options) -> dict:
    """`python -m liveact bench --gpu --suite`: the attention kernels compared on the self-attention of a steady chunk,
    then `suite_variants` with the fastest kernel within ATTENTION_TOLERANCE (`gpu_speed`; `options` go there), all
    within `budget_s` wall seconds."""
    began = time.perf_counter()  # the budget counts the kernels' comparison too
    check_gpu(device, 0, "python -m liveact bench --gpu", "")  # one sentence where no GPU is visible
    config = config or config_18b()
    attention = compare_attention(device, dtype, **_self_attention_shape(_meta_model(config).config, size))
    _release(device)  # the comparison's float32 scores leave the allocator's cache before the 18B model comes
    others = [name for name in OPTIONAL_ATTENTION if attention["backends"][name]["available"] and name != attention["chosen"]]
    return gpu_speed(size, chunks, device, dtype, suite_variants(attention["chosen"], others), config,
                     budget_s=budget_s, began=began, attention=attention, **options)


def gpu_speed(size: tuple[int, int] = (512, 512), chunks: int = 6, device: str = "cuda",
              dtype: torch.dtype = torch.bfloat16, variants: Sequence[GpuVariant] = GPU_VARIANTS, config: dict | None = None,
              vae_config: dict | None = None, budget_s: float | None = None, began: float | None = None,
              attention: dict | None = None, progress=print, save=lambda report: None) -> dict:
    """Each variant of the released configuration with random weights on one GPU, as `_measure` measures it: a model
    of its own per variant (fp8 and compiling are not undone), all built from the same seed, so the first variant's
    velocity is the reference of every other's error. Before each variant: stop, naming the rest as skipped, if the
    longest variant so far would end past `budget_s` wall seconds from `began` (default: now). `save(report)` after
    each variant, so a run stopped early still leaves what it measured. Encoders (text and image: once per session;
    wav2vec2: per chunk) are left out; `vae_config`: diffusers' `AutoencoderKLWan` arguments (default: Wan's)."""
    began = time.perf_counter() if began is None else began
    check_gpu(device, 0, "python -m liveact bench --gpu", "")
    config = config or config_18b()
    shape = _meta_model(config)
    inputs = _stream_inputs(shape.config, size, chunks, device, dtype)
    report = {"machine": machine(), "commit": git_commit(), "torch": torch.__version__, "size": f"{size[1]}x{size[0]}",
              "dtype": str(dtype).removeprefix("torch."), "chunks": chunks,
              "parameters": sum(p.numel() for p in shape.parameters()),
              "tflops_per_frame": flops_per_frame(*size, config=config), "budget_s": budget_s, "attention": attention,
              "variants": {}, "skipped": [], "failed": {}}
    reference = None
    for index, variant in enumerate(variants):
        longest = max((r["total_s"] for r in report["variants"].values()), default=0.0)
        if budget_s is not None and time.perf_counter() - began + longest > budget_s:
            report["skipped"] = [v.name for v in variants[index:]]
            progress(f"stopping within the budget of {budget_s:.0f} s; skipped: {', '.join(report['skipped'])}")
            break
        try:
            result, velocity = _measure(variant, config, vae_config, inputs, chunks, device, dtype, progress)
        except Exception as failure:  # noqa: BLE001 -- a kernel this GPU lacks, memory: reported, the rest still run
            report["failed"][variant.name] = _in_one_line(failure)
            progress(f"{variant.name} failed: {report['failed'][variant.name]}")
        else:
            reference = velocity if reference is None else reference
            error, precision = velocity - reference, "fp8" if variant.fp8_gemm else "bf16"
            result |= {"max_abs_error_vs_bf16": error.abs().max().item(),
                       "relative_error_vs_bf16": (error.norm() / reference.norm()).item(),
                       "denoise_tflops": report["tflops_per_frame"] * result["fps_denoise"], "peak_precision": precision}
            result |= {"utilisation": result["denoise_tflops"] / H100_PEAK_TFLOPS[precision],
                       "meets_target": not target_misses(result)}
            report["variants"][variant.name] = result
        _release(device)  # the variant's model (or what its failure held) goes before the next is built
        report["elapsed_s"] = time.perf_counter() - began
        save(report)
    return report


def _in_one_line(failure: Exception) -> str:
    return f"{type(failure).__name__}: {(str(failure).strip().splitlines() or [''])[0]}"


def _meta_model(config: dict):
    """The transformer of `config` on the meta device: its shapes and parameter count, nothing allocated."""
    from .transformer import LiveActTransformer

    with torch.device("meta"):
        return LiveActTransformer.from_config(config)


def _self_attention_shape(cfg, size: tuple[int, int]) -> dict:
    """Self-attention of a steady chunk at `size`: its latent frames' tokens against the whole window's."""
    layout = StreamConfig().layout
    tokens_per_frame = (size[0] // 8 // cfg.patch_size[1]) * (size[1] // 8 // cfg.patch_size[2])
    return {"queries": layout.chunk * tokens_per_frame, "keys": layout.window * tokens_per_frame,
            "heads": cfg.num_heads, "head_dim": cfg.dim // cfg.num_heads}


def compare_attention(device: str, dtype: torch.dtype, queries: int, keys: int, heads: int, head_dim: int,
                      repeats: int = 20) -> dict:
    """Every attention kernel (`kernels.ATTENTION_BACKENDS`) on one attention of `queries` tokens against `keys`
    (random [1, tokens, heads, head_dim] in `dtype`): mean seconds per call, and the error against plain float32
    math on the same inputs. A kernel that raises (not installed, not for this GPU, dtype or shape) is reported
    unavailable; the chosen one is the fastest whose relative error is within ATTENTION_TOLERANCE."""
    from .kernels import ATTENTION_BACKENDS, attention_kernel

    generator = torch.Generator(device).manual_seed(0)
    q, k, v = (torch.randn(1, n, heads, head_dim, generator=generator, device=device, dtype=dtype)
               for n in (queries, keys, keys))
    exact = _float32_attention(q, k, v)
    backends = {}
    for name in ATTENTION_BACKENDS:
        try:
            kernel = attention_kernel(name)
            error = kernel(q, k, v).float() - exact
            seconds = _seconds_per_call(lambda: kernel(q, k, v), device, repeats)
        except Exception as failure:  # noqa: BLE001 -- whatever a kernel raises on this machine, it is unavailable here
            backends[name] = {"available": False, "error": _in_one_line(failure)}
            continue
        backends[name] = {"available": True, "ms": 1000 * seconds,
                          "tflops": 4 * queries * keys * heads * head_dim / seconds / 1e12,  # QK^T and PV: 2 FLOPs a MAC
                          "max_abs_error": error.abs().max().item(), "relative_error": (error.norm() / exact.norm()).item()}
    within = [name for name, r in backends.items() if r["available"] and r["relative_error"] <= ATTENTION_TOLERANCE]
    return {"queries": queries, "keys": keys, "heads": heads, "head_dim": head_dim, "dtype": str(dtype).removeprefix("torch."),
            "repeats": repeats, "tolerance": ATTENTION_TOLERANCE, "backends": backends,
            "chosen": min(within, key=lambda name: backends[name]["ms"], default="sdpa")}


def _float32_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads_at_once: int = 4) -> torch.Tensor:
    """softmax(q k^T / sqrt(head_dim)) v in float32 on [B, tokens, heads, head_dim], a few heads at a time (the scores
    of one head at 512x512 are 8192 x 14336 floats, 0.5 GB)."""
    out = []
    for first in range(0, q.shape[2], heads_at_once):
        qh, kh, vh = (t[:, :, first:first + heads_at_once].float().transpose(1, 2) for t in (q, k, v))  # [B, h, L, d]
        scores = qh @ kh.transpose(-1, -2) / qh.shape[-1] ** 0.5
        out.append((scores.softmax(-1) @ vh).transpose(1, 2))
    return torch.cat(out, dim=2)


class _Clock:
    """Seconds between marks in a device's own time: CUDA events on a GPU (marking never waits for the GPU; the
    event marks the point its current stream has reached), the wall clock elsewhere."""

    def __init__(self, device: torch.device | str):
        self.cuda = torch.device(device).type == "cuda"

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, start, end) -> float:
        if not self.cuda:
            return end - start
        end.synchronize()
        return start.elapsed_time(end) / 1000


def _seconds_per_call(work, device: str, repeats: int) -> float:
    """Mean seconds of `work()` over `repeats` calls after one warm-up (CUDA events on a GPU)."""
    work()
    clock = _Clock(device)
    start = clock.mark()
    for _ in range(repeats):
        work()
    return clock.seconds(start, clock.mark()) / repeats


def _random_18b(config: dict, device: str, dtype: torch.dtype, vae_config: dict | None = None, seed: int = 0):
    """The released transformer and a Wan VAE built straight on `device` in `dtype` with random weights drawn from
    `seed` (no 75 GB full-precision copy on the way), as the loading code would leave them -- except the head: Wan's
    initialisation zeroes it, and a velocity of 0 would make every variant's error 0 too."""
    from diffusers import AutoencoderKLWan

    from .transformer import LiveActTransformer
    from .vae import WanVAE

    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    torch.manual_seed(seed)
    try:
        with torch.device(device):
            model = LiveActTransformer.from_config(config).eval()
            torch.nn.init.xavier_uniform_(model.head.head.weight)
            return model, WanVAE(AutoencoderKLWan(**(vae_config or {})).eval())
    finally:
        torch.set_default_dtype(default)


def _build(variant: GpuVariant, config: dict, vae_config: dict | None, device: str, dtype: torch.dtype):
    """A fresh model and VAE set up as `variant` says, in the order the pipeline's `load` applies the options. With
    block offload the streamed blocks end in host memory; the model is built whole first, on the GPU where it fits
    (the GPU draws 18.9B random weights in seconds, the CPU's serial generator in minutes), else on the host."""
    home = device if not variant.block_offload or _holds_whole(config, dtype, device) else "cpu"
    model, vae = _random_18b(config, home, dtype, vae_config)
    vae.vae.to(device)
    model.prepare(device, variant.attention, variant.fp8_gemm, variant.block_offload, variant.resident_blocks,
                  variant.compile)
    return model, vae


def _holds_whole(config: dict, dtype: torch.dtype, device: str) -> bool:
    """Whether `device` has room for the whole transformer in `dtype` now (a CPU: yes)."""
    from .vram import transformer_weights

    if torch.device(device).type != "cuda":
        return True
    return torch.cuda.mem_get_info(device)[0] > 1.1 * transformer_weights(config, dtype).on_device()


def _stream_inputs(cfg, size: tuple[int, int], chunks: int, device: str, dtype: torch.dtype) -> tuple:
    """Random conditioning, the same for every variant: y [1, mask + reference, window, H/8, W/8], image and text
    tokens, and audio features [video frames, layers, channels] for `chunks` chunks."""
    from .stream import ChunkGeometry

    layout, generator = StreamConfig().layout, torch.Generator(device).manual_seed(0)
    draw = lambda *shape: torch.randn(*shape, generator=generator, device=device, dtype=dtype)  # noqa: E731
    frames = ChunkGeometry(layout, cfg.vae_scale).chunk_video_frames(chunks - 1).stop
    return (draw(1, cfg.in_dim - cfg.out_dim, layout.window, size[0] // 8, size[1] // 8),
            draw(1, cfg.image_tokens, cfg.image_dim), draw(1, cfg.text_len, cfg.text_dim),
            draw(frames, cfg.audio_layers, cfg.audio_channels))


def _timed(device: str, work) -> tuple[object, float]:
    """`work()` and its wall seconds, the GPU's queue drained on both sides."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    sync()
    began = time.perf_counter()
    result = work()
    sync()
    return result, time.perf_counter() - began


def _measure(variant: GpuVariant, config: dict, vae_config: dict | None, inputs: tuple, chunks: int, device: str,
             dtype: torch.dtype, progress) -> tuple[dict, torch.Tensor]:
    """One variant on a model of its own: built, then `_run`."""
    began = time.perf_counter()
    (model, vae), build_s = _timed(device, lambda: _build(variant, config, vae_config, device, dtype))
    progress(f"{variant.name}: built in {build_s:.1f} s")
    result, velocity, _ = _run(model, vae, variant, inputs, chunks, device, progress)
    return {"build_s": build_s, **result, "total_s": time.perf_counter() - began}, velocity


def _run(model, vae, variant: GpuVariant, inputs: tuple, chunks: int, device: str,
         progress) -> tuple[dict, torch.Tensor, StreamingSession]:
    """A warm-up session of WARMUP_CHUNKS chunks (where the model compiles, the compiling happens there), then the
    timed session: its result, its velocity at chunk 2's ERROR_STEP, and the session itself (its memories live on)."""
    cuda = torch.device(device).type == "cuda"
    warmup_s = _timed(device, lambda: _session(model, vae, variant, inputs, min(WARMUP_CHUNKS, chunks)))[1]
    progress(f"{variant.name}: warmed up in {warmup_s:.1f} s")
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    velocity, error_at = [], (min(2, chunks - 1), ERROR_STEP)

    def capture(chunk: int, step: int, latents: torch.Tensor, v: torch.Tensor) -> None:
        if (chunk, step) == error_at:
            velocity.append(v.to("cpu", torch.float32, copy=True))

    rows, session = _session(model, vae, variant, inputs, chunks, on_step=capture)
    result = {"settings": variant.settings, "warmup_s": warmup_s, **_summary(rows),
              "memory_window_bytes": session.memory_bytes,
              "peak_gpu_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
              "peak_reserved_bytes": torch.cuda.max_memory_reserved(device) if cuda else None}
    progress(f"{variant.name}: {result['fps']:.1f} FPS, first frame after {result['time_to_first_frame_s']:.2f} s, "
             f"denoise {result['denoise_s']:.2f} s + decode {result['decode_s']:.2f} s per chunk")
    return result, velocity[0], session


def _session(model, vae, variant: GpuVariant, inputs: tuple, chunks: int,
             on_step=None) -> tuple[list[dict], StreamingSession]:
    """One session as the pipeline runs it: each chunk denoised, then decoded to the host -- beside the next chunk's
    denoise with `overlap_decode` (`vae.decode_beside`). Per chunk: its video frames, denoise and decode seconds (on
    the GPU's streams: nothing waits for them), and the wall seconds since the chunk before came out (the first: since
    the session began). And the session."""
    from .vae import DecodeThread, decode_beside

    y, image, text, features = inputs
    gc.collect()  # whatever of the last session a reference cycle may still hold, before this one takes its memories
    began = time.perf_counter()
    stream = StreamConfig(fp8_memory=variant.fp8_memory, offload_memory=variant.offload_memory)
    session = StreamingSession(model, y, image, text, config=stream, generator=torch.Generator(model.device).manual_seed(0),
                               on_step=on_step)  # the same noise
    decoder, clock, denoised, decoded = vae.streaming_decoder(), _Clock(model.device), [], []  # (start, end) marks

    def decode(latents: torch.Tensor) -> torch.Tensor:
        start = clock.mark()
        frames = decoder.decode(latents).cpu()  # ends on the host, as the pipeline's frames do
        decoded.append((start, clock.mark()))
        return frames

    rows, last = [], began
    for chunk, _, _ in decode_beside(_marked(session.stream(features, chunks), clock, denoised), decode,
                                     DecodeThread() if variant.overlap_decode else None):
        now = time.perf_counter()
        rows.append({"video_frames": len(chunk.video_frames), "wall_s": now - last})
        last = now
    for row, denoise, decode_marks in zip(rows, denoised, decoded):
        row |= {"denoise_s": clock.seconds(*denoise), "decode_s": clock.seconds(*decode_marks)}
    return rows, session


def _marked(chunks: Iterator, clock: _Clock, marks: list) -> Iterator:
    """`chunks`, each one's making marked on `clock` (start, end) into `marks`."""
    while True:
        start = clock.mark()
        chunk = next(chunks, None)
        if chunk is None:
            return
        marks.append((start, clock.mark()))
        yield chunk


def _summary(rows: list[dict]) -> dict:
    """Medians of the steady chunks; frames per second end to end (frames over the wall time of a chunk: with the
    decode beside the denoise, the wall is less than their sum); the first chunk's wall time from the session's start;
    and the slowest steady chunk over the median."""
    steady = rows[STEADY_FROM:] or rows
    denoise, decode, wall, frames = (statistics.median(r[key] for r in steady)
                                     for key in ("denoise_s", "decode_s", "wall_s", "video_frames"))
    return {"chunks": rows, "denoise_s": denoise, "decode_s": decode, "wall_s": wall, "video_frames_per_chunk": frames,
            "fps_denoise": frames / denoise, "fps": frames / wall, "time_to_first_frame_s": rows[0]["wall_s"],
            "worst_chunk_over_median": max(r["wall_s"] for r in steady) / wall}


def _release(device: str) -> None:
    """Give a variant's model back before the next is built: dynamo's compiled graphs (the next model's blocks would
    count towards the recompile limit of these), Python's cycles, the CUDA allocator's cache, and the pinned host
    memory cached (streamed blocks, offloaded windows), so the next model's host RSS is its own."""
    torch._dynamo.reset()
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        getattr(torch._C, "_host_emptyCache", lambda: None)()  # private, in CUDA builds (torch.cuda.graphs calls it)


def target_misses(result: dict) -> list[str]:
    """What of TARGET a variant's result misses, in words (nothing: the target is met)."""
    misses = []
    if result["fps"] < TARGET["fps"]:
        misses.append(f"{result['fps']:.1f} FPS < {TARGET['fps']:g}")
    if result["time_to_first_frame_s"] > TARGET["time_to_first_frame_s"]:
        misses.append(f"first frame after {result['time_to_first_frame_s']:.2f} s > {TARGET['time_to_first_frame_s']:g} s")
    if result["worst_chunk_over_median"] > TARGET["worst_chunk_over_median"]:
        misses.append(f"a steady chunk at {result['worst_chunk_over_median']:.2f}x the median "
                      f"> {TARGET['worst_chunk_over_median']:g}x")
    return misses


# -- 5. the 18B model on a 24 GB card: a bigger GPU, capped --------------------------------------------

LOW_VRAM_SIZES = ((720, 416), (512, 512))  # (height, width): 416x720 and 512x512
PCIE4_X16_BYTES_PER_S = 25e9  # host to device over an RTX 4090's link, PCIe 4.0 x16: 31.5 GB/s raw, ~25 GB/s achieved
# Dense peaks of the GeForce RTX 4090 with FP32 accumulation, as our bf16 GEMMs and torch._scaled_mm accumulate: NVIDIA
# Ada GPU architecture whitepaper, appendix table (twice these with sparsity; fp8 with FP16 accumulation: 660.6).
RTX4090_PEAK_TFLOPS = {"bf16": 165.2, "fp8": 330.3}


def gpu_low_vram(caps_gib: Sequence[float] = (24, 16), sizes: Sequence[tuple[int, int]] = LOW_VRAM_SIZES,
                 chunks: int = 10, device: str = "cuda", dtype: torch.dtype = torch.bfloat16, config: dict | None = None,
                 vae_config: dict | None = None, budget_s: float | None = 540.0, cap=None, progress=print,
                 save=lambda report: None) -> dict:
    """`python -m liveact bench --gpu --low-vram 24 16`: for each card of `caps_gib` GiB and each video size (H, W), the
    options `vram.fit` takes for that card, run on this GPU with its allocator capped to the card (`_low_vram_case`).
    The report: {"_run": {machine, commit, ...}, "24": {"416x720": {...}, "512x512": {...}}, "16": {...}}, saved after
    each case; a case that would end past `budget_s` wall seconds is skipped, and says so. `cap(limit_bytes or None)`
    caps the allocator (default `cap_allocator`)."""
    from .pipeline import Options  # here, not above: it needs PyAV, which `bench --gpu --suite` does without

    began = time.perf_counter()
    check_gpu(device, 0, "python -m liveact bench --gpu", "")
    config, cap = config or config_18b(), cap or (lambda limit: cap_allocator(device, limit))
    run = {"machine": machine(), "commit": git_commit(), "torch": torch.__version__,
           "dtype": str(dtype).removeprefix("torch."), "chunks": chunks, "budget_s": budget_s,
           "fp8_gemm": has_fp8_gemm(device), "h2d_bytes_per_s": h2d_bytes_per_s(device)}
    report, cfg, tflops_per_frame, longest = {"_run": run}, _meta_model(config).config, {}, 0.0
    for gib in caps_gib:
        for size in sizes:
            name = f"{size[1]}x{size[0]}"
            case = report.setdefault(f"{gib:g}", {})[name] = {"status": "measured"}
            if budget_s is not None and time.perf_counter() - began + longest > budget_s:
                case |= {"status": "skipped", "reason": f"not measured, to end within the time budget of {budget_s:.0f} s"}
                continue
            started = time.perf_counter()
            try:
                if size not in tflops_per_frame:
                    tflops_per_frame[size] = flops_per_frame(*size, config=config)
                inputs = _stream_inputs(cfg, size, chunks, device, dtype)
                _low_vram_case(case, Options(device=device, dtype=dtype), gib, size, config, vae_config, inputs, chunks,
                               run["fp8_gemm"], tflops_per_frame[size], cap, progress)
            except Exception as failure:  # noqa: BLE001 -- out of memory under the cap, say: reported, the rest still run
                case |= {"status": "failed", "reason": _in_one_line(failure)}
            cap(None)
            _release(device)  # the case's model (or what its failure held) goes before the next is built
            longest = max(longest, time.perf_counter() - started)
            run["elapsed_s"] = time.perf_counter() - began
            progress(f"{gib:g} GiB, {name}: " + (f"{case['fps']:.1f} FPS" if "fps" in case else case["reason"]))
            save(report)
    return report


def _low_vram_case(case: dict, options, gib: float, size: tuple[int, int], config: dict, vae_config: dict | None,
                   inputs: tuple, chunks: int, fp8_gemm: bool, tflops_per_frame: float, cap, progress) -> None:
    """One card and video size, into `case`: the options `vram.fit` takes for the card and the count of what they hold;
    the model built so (its streamed blocks in host memory); the allocator capped to the card less what a real one
    holds besides that this run does not build (the CUDA context, the encoders: random conditioning stands for them);
    `_run`'s sessions; one more chunk with its reads from host memory counted; and the RTX 4090 estimate."""
    from . import vram

    device, card = options.device, int(gib * 2**30)
    try:
        options, measures = vram.fit(config, size, options, card, fp8_gemm)
    except ValueError as error:
        case |= {"status": "does not fit", "reason": str(error)}
        return
    needs = vram.count(config, size, options)
    unbuilt = needs.text_encoder + needs.image_encoder + needs.audio_encoder
    variant = GpuVariant(", ".join(measures) or "nothing needed", fp8_gemm=options.fp8_gemm,
                         fp8_memory=options.stream.fp8_memory, offload_memory=options.stream.offload_memory,
                         block_offload=options.block_offload, resident_blocks=options.resident_blocks)
    case |= {"measures": measures, "settings": variant.settings, "estimated_gpu_bytes": needs.total,
             "estimated_built_bytes": needs.total - unbuilt, "estimate": asdict(needs)}
    (model, vae), case["build_s"] = _timed(device, lambda: _build(variant, config, vae_config, device, options.dtype))
    _release(device)  # what the build passed through the GPU (the whole model, before its blocks went to the host)
    case["allocator_limit_bytes"] = card - unbuilt - _outside_allocator(device)
    cap(case["allocator_limit_bytes"])
    result, _, session = _run(model, vae, variant, inputs, chunks, device, progress)
    case |= result | {"device_used_bytes": _device_used(device), "host_rss_bytes": rss_bytes()}
    case |= _host_traffic(model, session, inputs[-1])
    precision = "fp8" if variant.fp8_gemm else "bf16"
    flops = tflops_per_frame * 1e12 * result["video_frames_per_chunk"]
    case |= {"flops_per_chunk": flops, "precision": precision,
             "utilisation": flops / result["wall_s"] / (H100_PEAK_TFLOPS[precision] * 1e12),
             "measured_over_estimated": None if result["peak_gpu_bytes"] is None
             else result["peak_gpu_bytes"] / case["estimated_built_bytes"]}
    case |= rtx4090_estimate(case)


def rtx4090_estimate(case: dict) -> dict:
    """An RTX 4090's FPS for a measured case, estimated: a chunk takes the longer of moving its bytes from host memory
    over PCIe 4.0 x16 and computing its FLOPs at the 4090's dense peak times the share of its peak this GPU reached
    end to end (so the copies are taken to hide behind compute, and the 4090 to reach the same share)."""
    transfer = case["bytes_moved_per_chunk"] / PCIE4_X16_BYTES_PER_S
    compute = case["flops_per_chunk"] / (RTX4090_PEAK_TFLOPS[case["precision"]] * 1e12 * case["utilisation"])
    return {"rtx4090_transfer_s_per_chunk": transfer, "rtx4090_compute_s_per_chunk": compute,
            "rtx4090_fps_estimate": case["video_frames_per_chunk"] / max(transfer, compute)}


class HostReads(TorchDispatchMode):
    """Bytes that copies read out of the storages of groups of host tensors (`groups`: name -> tensors), per group:
    what crosses the bus when they are copied to a GPU."""

    def __init__(self, groups: dict[str, Sequence[torch.Tensor]]):
        super().__init__()
        self.group = {t.untyped_storage().data_ptr(): name for name, tensors in groups.items() for t in tensors}
        self.bytes = dict.fromkeys(groups, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        source = {torch.ops.aten.copy_.default: 1, torch.ops.aten._to_copy.default: 0}.get(func)  # which argument
        if source is not None:
            name = self.group.get(args[source].untyped_storage().data_ptr())
            if name is not None:
                self.bytes[name] += args[source].nbytes
        return func(*args, **(kwargs or {}))


def _host_traffic(model, session: StreamingSession, features: torch.Tensor) -> dict:
    """One more chunk of `session` (a steady one: the window full, compressed before it) with the bytes it reads from
    host memory counted as they are copied -- the streamed blocks', the offloaded windows' -- and its denoiser calls;
    and the bytes those keep in host memory."""
    streamer = getattr(model, "block_streamer", None)
    memories = {id(m): m for m in [*session.memories, *session.null_memories.values()]}.values()
    groups = {"block": [host for block in streamer.streamed for host in block.host] if streamer else [],
              "window": [t for m in memories if m.offload for t in (m.keys, m.values, m.key_scales, m.value_scales)
                         if t is not None]}
    calls = []
    hook = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with HostReads(groups) as reads:
            next(session.stream(features, 1))
    finally:
        hook.remove()
    return {"bytes_moved_per_chunk": sum(reads.bytes.values()), "block_bytes_per_chunk": reads.bytes["block"],
            "window_bytes_per_chunk": reads.bytes["window"], "denoiser_calls_per_chunk": len(calls),
            "streamed_blocks": len(streamer.streamed) if streamer else 0,
            "offloaded_bytes": sum(t.nbytes for tensors in groups.values() for t in tensors)}


def h2d_bytes_per_s(device: str, nbytes: int = 2**28, repeats: int = 5) -> float:
    """Bytes per second of a copy from pinned host memory to `device`, the way streamed blocks travel (on a CPU: a
    memory copy)."""
    host = torch.ones(nbytes, dtype=torch.uint8, pin_memory=torch.device(device).type == "cuda")
    target = torch.empty_like(host, device=device)
    return nbytes / _seconds_per_call(lambda: target.copy_(host, non_blocking=True), device, repeats)


def cap_allocator(device: str, limit_bytes: int | None) -> None:
    """Let PyTorch's allocator on `device` hold at most `limit_bytes` (None: the whole card): a smaller card, as far as
    this process can tell. A CPU has nothing to cap."""
    if torch.device(device).type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(1.0 if limit_bytes is None else min(max(limit_bytes, 0) / total, 1.0),
                                                   device)


def _device_used(device: str) -> int | None:
    """Bytes in use on the whole device, as nvidia-smi shows them (None on a CPU)."""
    if torch.device(device).type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return total - free


def _outside_allocator(device: str) -> int:
    """Device bytes this process holds besides PyTorch's allocator -- the CUDA context, library handles: a real card
    holds them too, and a cap on the allocator does not count them (0 on a CPU)."""
    used = _device_used(device)
    return 0 if used is None else used - torch.cuda.memory_reserved(device)


def git_commit() -> str:
    """The code's commit: `git rev-parse --short HEAD` in a clone, else $LIVEACT_COMMIT (set it where a copy of the
    tree runs without its .git), else "unknown"."""
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("LIVEACT_COMMIT", "unknown")



def gpu_markdown(report: dict) -> str:
    """docs/GPU.md: what `gpu_speed` (and `gpu_suite`) measured -- the attention kernels, one row per variant, and
    whether the target is met. Every number, and every sentence that weighs one, comes from the report."""
    variants, dtype, layout = report["variants"], report["dtype"], StreamConfig().layout
    lines = ["# The 18B model on a GPU", "",
             f"Written by `{report.get('command', 'python -m liveact bench --gpu')}` from commit {report['commit']} on "
             f"{report['machine']}, torch {report['torch']}. The released configuration ({report['parameters'] / 1e9:.1f}B "
             f"parameters in the transformer) with random weights in {dtype} at {report['size']}, and a Wan VAE (diffusers' "
             "`AutoencoderKLWan`, random weights); each variant is a model of its own, built from the same seed: the same "
             f"weights. A chunk is {StreamConfig().sampler.num_steps} denoising steps against the Neighbor-Forcing memories "
             "(one ConvKV window per step), then the streaming decode to the host. Random weights compute as fast as trained "
             "ones: the same shapes and kernels. Not included: the text and image encoders (once per session) and wav2vec2 "
             "(per chunk, small).", ""]
    attention = report.get("attention")
    if attention:
        backends, chosen = attention["backends"], attention["chosen"]
        within = backends[chosen]["available"] and backends[chosen]["relative_error"] <= attention["tolerance"]
        lines += ["## Attention kernels", "",
                  f"One self-attention of a steady chunk at {report['size']}: {attention['queries']} queries ({layout.chunk} "
                  f"latent frames) against {attention['keys']} keys (the {layout.window}-frame window), {attention['heads']} "
                  f"heads of {attention['head_dim']}, {attention['dtype']}, random inputs; the mean of {attention['repeats']} "
                  "calls after one (CUDA events on a GPU), and the error against plain float32 math on the same inputs. A "
                  f"kernel may be chosen when its relative error (the norm of the difference over the exact output's) is at "
                  f"most {attention['tolerance']:.0%}: "
                  + (f"the fastest such is **{chosen}**, the kernel of the variants below that name one."
                     if within else f"none is, so the variants keep **{chosen}**."), "",
                  "| kernel | ms per call | TFLOP/s | max abs error | relative error |", "| --- | --- | --- | --- | --- |"]
        for name, r in backends.items():
            lines.append(f"| {name} | {r['ms']:.2f} | {r['tflops']:.0f} | {r['max_abs_error']:.2e} | {r['relative_error']:.2%} |"
                         if r["available"] else f"| {name} | unavailable: {r['error'].replace('|', '/')} | | | |")
        lines.append("")
    if variants:
        lines += _variant_lines(report)
    if report["failed"]:
        lines += ["", "Failed on this machine: " + "; ".join(f"{name} ({error})" for name, error in report["failed"].items())
                  + "."]
    if report["skipped"]:
        lines += ["", f"Not measured, to end within the time budget of {report['budget_s']:.0f} s: "
                  f"{', '.join(report['skipped'])}."]
    if variants:
        lines += _target_lines(report)
    lines += ["", "The paper reports 20 FPS at 512x512 on two H100s; `liveact.parallel` splits every chunk over two "
              "GPUs (`torchrun --nproc-per-node 2`), which this one-GPU machine could not measure.", ""]
    return "\n".join(lines) + "\n"


def _variant_lines(report: dict) -> list[str]:
    """GPU.md's variants: the table, what its columns mean, and fp8 memory against its twin."""
    variants, dtype = report["variants"], report["dtype"]
    reference = next(iter(variants))  # the first variant: every error is against its velocity
    frames = variants[reference]["video_frames_per_chunk"]
    lines = ["## Variants", "",
             "| variant | FPS end to end | time to first frame | denoise s/chunk | decode s/chunk | wall s/chunk | slowest "
             f"steady chunk / median | peak GPU memory | K/V memory | max abs error vs {reference} | relative error | "
             "denoise TFLOP/s | of peak | build, warm-up s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in variants.items():
        peak = f"{r['peak_gpu_bytes'] / 2**30:.1f} GiB" if r["peak_gpu_bytes"] is not None else "-"
        lines.append(f"| {name} | {r['fps']:.1f} | {r['time_to_first_frame_s']:.2f} s | {r['denoise_s']:.2f} | "
                     f"{r['decode_s']:.2f} | {r['wall_s']:.2f} | {r['worst_chunk_over_median']:.2f}x | {peak} | "
                     f"{r['memory_window_bytes'] / 2**30:.1f} GiB | {r['max_abs_error_vs_bf16']:.2e} | "
                     f"{r['relative_error_vs_bf16']:.2%} | {r['denoise_tflops']:.0f} | {r['utilisation']:.0%} "
                     f"{r['peak_precision']} | {r['build_s']:.1f}, {r['warmup_s']:.1f} |")
    lines += ["", f"Steady state is the median of chunks {STEADY_FROM + 1}-{report['chunks']}: the window is full and ConvKV "
              f"compresses. FPS end to end: a chunk's {frames:g} video frames over its wall time, as a viewer receives "
              "them (with the decode overlapped, the wall is less than denoise + decode). Time to first frame: from a warm "
              "pipeline's session start (conditioning embedded, memories allocated) to the first chunk's frames on the host; "
              f"before it each variant runs a warm-up session of {min(WARMUP_CHUNKS, report['chunks'])} chunks (compiling, "
              f"where it compiles: the last column). The errors compare chunk {min(2, report['chunks'] - 1)}'s step-"
              f"{ERROR_STEP} velocity with the {reference} variant's on the same weights, inputs and noise. Denoise TFLOP/s "
              f"is the counted {report['tflops_per_frame']:.2f} TFLOPs per frame (`bench.flops_per_frame`: each denoising "
              "step as the stream runs it) times the frames per second of the denoise alone; \"of peak\" divides it by the "
              f"H100/H200 SXM datasheet's dense peak, {H100_PEAK_TFLOPS['bf16']:.0f} TFLOPS bf16, or "
              f"{H100_PEAK_TFLOPS['fp8']:.0f} fp8 for the variants with fp8 GEMMs."]
    for name, r in variants.items():
        twin = r["settings"] | {"fp8_memory": False}
        base = next((other for other, o in variants.items() if r["settings"]["fp8_memory"] and o["settings"] == twin), None)
        if base:
            lines += ["", f"{name} stores the window in {r['memory_window_bytes'] / 2**30:.1f} GiB instead of "
                      f"{variants[base]['memory_window_bytes'] / 2**30:.1f} GiB ({base}) and costs "
                      f"{r['denoise_s'] - variants[base]['denoise_s']:+.2f} s of denoise per chunk: attention still runs in "
                      f"{dtype}, so each layer's part of the window is scaled back into a {dtype} workspace first "
                      f"(`memory.py`). It is the option for a card the {dtype} window does not fit."]
    return lines


def _target_lines(report: dict) -> list[str]:
    """GPU.md's verdict on TARGET, and where the fastest variant's time goes when it misses."""
    variants = report["variants"]
    best = max(variants, key=lambda name: variants[name]["fps"])
    b, met = variants[best], [name for name, r in variants.items() if r["meets_target"]]
    frames = b["video_frames_per_chunk"]
    lines = ["", "## The target", "",
              f"At least {TARGET['fps']:g} FPS sustained end to end at 512x512, the first frame within "
              f"{TARGET['time_to_first_frame_s']:g} s, and no steady chunk over {TARGET['worst_chunk_over_median']:g}x the "
              "median" + (f" (this run is at {report['size']})" if report["size"] != "512x512" else "") + ": "
              + (f"met by {', '.join(met)}." if met else "met by no variant.")]
    if not b["meets_target"]:
        allowed, stages, c0 = frames / TARGET["fps"], b["denoise_s"] + b["decode_s"], b["chunks"][0]
        overlap = (f"; the decode runs beside the next denoise, so the wall is {b['wall_s'] / stages:.0%} of their sum"
                   if b["settings"]["overlap_decode"] else "")
        lines += ["", f"The fastest variant, {best}, misses it: {'; '.join(target_misses(b))}. Its steady chunk of "
                  f"{frames:g} frames takes {b['wall_s']:.2f} s where {TARGET['fps']:g} FPS allows {allowed:.2f} s "
                  f"({b['wall_s'] / allowed:.2f}x that): denoise {b['denoise_s']:.2f} s ({b['denoise_s'] / stages:.0%} of "
                  f"denoise + decode) and decode {b['decode_s']:.2f} s ({b['decode_s'] / stages:.0%}){overlap}. Its first "
                  f"frame comes {c0['wall_s']:.2f} s after the session starts: chunk 0 denoised in {c0['denoise_s']:.2f} s, "
                  f"decoded in {c0['decode_s']:.2f} s, and {c0['wall_s'] - c0['denoise_s'] - c0['decode_s']:.2f} s besides "
                  "(the session's setup" + (", and the next chunk's start before the first is handed out"
                                            if b["settings"]["overlap_decode"] else "") + ")."]
    return lines


LOW_VRAM_MARKERS = ("<!-- written by `bench --gpu --low-vram` -->", "<!-- end of `bench --gpu --low-vram` -->")


def low_vram_markdown(report: dict) -> str:
    """docs/GPU.md's section "On a 24 GB card", between LOW_VRAM_MARKERS: what `gpu_low_vram` measured per card and
    video size, and the RTX 4090 estimate with its formula. Every number, and every sentence that weighs one, comes
    from the report."""
    run = report["_run"]
    cases = [(f"{card} GiB, {size}", case) for card, sizes in report.items() if card != "_run"
             for size, case in sizes.items()]
    lines = [LOW_VRAM_MARKERS[0], "## On a 24 GB card", "",
             f"Written by `{run.get('command', 'python -m liveact bench --gpu --low-vram')}` from commit {run['commit']} "
             f"on {run['machine']}, torch {run['torch']}. For each card size, `vram.fit` chose the cheapest measures that "
             "fit it (fp8 GEMMs " + ("allowed: this GPU has them" if run["fp8_gemm"] else "not allowed: this GPU has none")
             + f"); the released configuration was built so, with random weights in {run['dtype']} and its streamed blocks "
             "in host memory; then this process's allocator was capped (`torch.cuda.set_per_process_memory_fraction`) to "
             "the card less what a real one would hold besides that this run does not build: the CUDA context (measured) "
             "and the encoders (counted; random conditioning stands for them). Each case streamed "
             f"{run['chunks']} chunks, each denoised and decoded to the host, after a warm-up session of {WARMUP_CHUNKS}; "
             f"steady state is the median of chunks {STEADY_FROM + 1}-{run['chunks']}. One more chunk then counted the "
             "bytes copied out of host memory as they were copied.", "",
             "| card, size | FPS here | RTX 4090, estimated | peak allocated | counted | measured / counted | in use on "
             "the device | host RSS | from host per chunk |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, c in cases:
        if c["status"] != "measured":
            lines.append(f"| {name} | {c['status']} | | | | | | | |")
            continue
        ratio = "-" if c["measured_over_estimated"] is None else f"{c['measured_over_estimated']:.2f}"
        lines.append(f"| {name} | {c['fps']:.1f} | {c['rtx4090_fps_estimate']:.1f} | {_gib(c['peak_gpu_bytes'])} | "
                     f"{_gib(c['estimated_built_bytes'])} | {ratio} | {_gib(c['device_used_bytes'])} | "
                     f"{_gib(c['host_rss_bytes'])} | {c['bytes_moved_per_chunk'] / 1e9:.2f} GB |")
    lines += ["", "**The RTX 4090 column is an estimate, not a measurement:** a chunk's frames over the longer of moving "
              f"its bytes from host memory over PCIe 4.0 x16, taken as {PCIE4_X16_BYTES_PER_S / 1e9:g} GB/s (31.5 GB/s "
              "raw), and computing its counted FLOPs (`bench.flops_per_frame` x the frames) at the 4090's dense peak "
              "times the utilisation measured here: `frames / max(bytes / 25e9, FLOPs / (peak x utilisation))`. The "
              "peaks are the dense figures of NVIDIA's Ada architecture whitepaper for the RTX 4090 with FP32 "
              f"accumulation: {RTX4090_PEAK_TFLOPS['bf16']:g} TFLOPS bf16, {RTX4090_PEAK_TFLOPS['fp8']:g} fp8 (assumed "
              "to be the rate of `torch._scaled_mm`, which accumulates in FP32). The utilisation is the counted FLOPs of "
              "a steady chunk over its wall time here, decode and waits included, as a share of this GPU's dense peak "
              f"(H100/H200 SXM: {H100_PEAK_TFLOPS['bf16']:.0f} TFLOPS bf16, {H100_PEAK_TFLOPS['fp8']:.0f} fp8): the "
              "4090 is taken to reach the same share of its own. And the copies are taken to hide behind compute: the "
              "streamed blocks' do (`offload.py` copies each on a side stream while the block before computes), the "
              "windows' reads do not (`memory.py` copies them on the compute stream), so where those are a large part "
              "the estimate is optimistic."]
    for name, c in cases:
        lines += ["", _low_vram_sentences(name, c, run["h2d_bytes_per_s"])]
    return "\n".join(lines + ["", LOW_VRAM_MARKERS[1]])


def _low_vram_sentences(name: str, c: dict, h2d_bytes_per_s: float) -> str:
    """GPU.md's paragraph on one case: its measures, speed, bytes from host memory, estimate and memory."""
    if c["status"] != "measured":
        counted = (f" (with {', '.join(c['measures'])}: {_gib(c['estimated_gpu_bytes'])} counted)"
                   if "measures" in c else "")
        return f"**{name}** {c['status']}{counted}: {c['reason']}."
    moved, window, frames = c["bytes_moved_per_chunk"], c["window_bytes_per_chunk"], c["video_frames_per_chunk"]
    transfer, compute = c["rtx4090_transfer_s_per_chunk"], c["rtx4090_compute_s_per_chunk"]
    text = (f"**{name}:** {', '.join(c['measures']) or 'no measure needed'}. Here {c['fps']:.1f} FPS end to end: a "
            f"steady chunk of {frames:g} frames in {c['wall_s']:.2f} s (denoise {c['denoise_s']:.2f} s, decode "
            f"{c['decode_s']:.2f} s). It reads {moved / 1e9:.2f} GB from host memory: {c['block_bytes_per_chunk'] / 1e9:.2f} "
            f"GB of {c['streamed_blocks']} streamed blocks over {c['denoiser_calls_per_chunk']} denoiser calls and "
            f"{window / 1e9:.2f} GB of key/value windows; this machine moves {h2d_bytes_per_s / 1e9:.0f} GB/s from pinned "
            f"memory (a timed copy), {moved / h2d_bytes_per_s:.2f} s of the chunk. On an RTX 4090 the bytes would take "
            f"{transfer:.2f} s and the compute ({c['flops_per_chunk'] / 1e15:.2f} PFLOPs at {c['utilisation']:.0%} of "
            f"{RTX4090_PEAK_TFLOPS[c['precision']]:g} TFLOPS {c['precision']}) {compute:.2f} s: bound by "
            f"{'PCIe' if transfer > compute else 'compute'}, about {c['rtx4090_fps_estimate']:.1f} FPS, "
            f"{c['rtx4090_fps_estimate'] / TARGET['fps']:.2f}x the {TARGET['fps']:g} FPS of real time")
    text += (f"; of those bytes the windows' {window / PCIE4_X16_BYTES_PER_S:.2f} s would not overlap compute."
             if window else ".")
    if c["peak_gpu_bytes"] is not None:
        text += (f" The allocator peaked at {_gib(c['peak_gpu_bytes'])} allocated, {c['measured_over_estimated']:.2f}x "
                 f"the {_gib(c['estimated_built_bytes'])} `vram.count` gives for what this run builds (the transformer's "
                 "weights on the GPU, the VAE, the windows' GPU part, the conditioning, the decoder's cache "
                 f"and a chunk's transient peak), with {_gib(c['peak_reserved_bytes'])} reserved of the "
                 f"{_gib(c['allocator_limit_bytes'])} it was allowed; the device showed {_gib(c['device_used_bytes'])} "
                 "in use.")
    return text + (f" The process held {_gib(c['host_rss_bytes'])} of host memory, {_gib(c['offloaded_bytes'])} of it "
                   "the streamed blocks and offloaded windows.")


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.1f} GiB"


def low_vram_page(report: dict, page: str = "") -> str:
    """`page` (docs/GPU.md as it was) with its "On a 24 GB card" section written from `report`."""
    return _splice(page or "# The 18B model on a GPU\n", low_vram_markdown(report))


def gpu_page(report: dict, page: str = "") -> str:
    """docs/GPU.md from `gpu_speed`'s report, keeping the "On a 24 GB card" section of `page` (the page as it was)."""
    return _splice(gpu_markdown(report), _low_vram_section(page))


def _low_vram_section(page: str) -> str | None:
    begin, end = LOW_VRAM_MARKERS
    if begin in page and end in page:
        return begin + page.split(begin, 1)[1].split(end, 1)[0] + end
    return None


def _splice(page: str, section: str | None) -> str:
    """`page` with its section between LOW_VRAM_MARKERS replaced by `section`, or `section` added at its end."""
    if section is None:
        return page
    if _low_vram_section(page) is None:
        return page.rstrip("\n") + "\n\n" + section + "\n"
    head, rest = page.split(LOW_VRAM_MARKERS[0], 1)
    return head + section + rest.split(LOW_VRAM_MARKERS[1], 1)[1]
