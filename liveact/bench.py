"""Benchmarks: real time on a CPU, constant memory for hours, and the 18B model's cost, counted.

    python -m liveact bench                       streaming speed of the tiny model (3 runs, medians)
    python -m liveact bench --long-minutes 30     + memory, RSS and ms per chunk over 30 minutes of video
                                                    for conv, mean, sliding and the full cache
    python -m liveact bench --flops               + TFLOPs per video frame of the 18B config (meta device)
    python -m liveact bench --gpu ...             the 18B config on a GPU: `gpu_bench.py`

Speed is measured end to end, as a viewer meets it: from the portrait to the first frame of video
(`time_to_first_frame_s`: portrait and prompt encoding, audio features, 3 denoiser calls, decode, and
the first H.264 segment written), then every chunk, with the time split between the stages.
"""

from __future__ import annotations

import copy
import gc
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .hub import config_18b
from .stream import StreamConfig, StreamingSession
from .synthetic import SAMPLE_RATE, portrait, speech

VARIANTS = ("conv", "mean", "sliding", "full")
SIZES_18B = {"512x512": (512, 512), "416x720": (720, 416), "480x832": (832, 480)}  # name: (height, width)
H100_PEAK_TFLOPS = {"bf16": 989.4, "fp8": 1978.9}  # dense, SXM, NVIDIA's datasheet
PAPER_TFLOPS_PER_FRAME = 27.2  # SoulX-LiveAct, 512x512


def rss_bytes() -> int:
    """Resident memory of this process now (Linux /proc; elsewhere the peak so far)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _portrait_and_speech(pipe, seconds: float, seed: int):
    from .evaluate import HELDOUT_SEED  # here, not above: `bench --gpu` runs where PyAV is not installed

    person = HELDOUT_SEED + seed
    return portrait(person, pipe.size[0]), speech(seconds, person)


# -- 1. streaming speed ------------------------------------------------------------------------------

def stream_once(pipe, seconds: float, seed: int = 0) -> dict:
    """One viewer's session (`serve.Broadcast`, as the app runs it) fed `seconds` of speech at once."""
    from .serve import Broadcast

    image, audio = _portrait_and_speech(pipe, seconds, seed)
    began = time.perf_counter()
    with Broadcast(pipe.start(image, prompt="a person is talking", seed=seed), began=began) as broadcast:
        encoded = time.perf_counter() - began
        broadcast.feed(audio, SAMPLE_RATE)
        broadcast.finish()
        for _ in broadcast.segments():
            pass
        wall, stats = time.perf_counter() - began, broadcast.stats
    chunk_ms = stats.latencies_ms
    return {"time_to_first_frame_s": stats.time_to_first_frame_s, "fps": stats.frames / wall,
            "real_time_factor": stats.frames / pipe.fps / wall, "ms_per_chunk_p50": float(np.percentile(chunk_ms, 50)),
            "ms_per_chunk_p95": float(np.percentile(chunk_ms, 95)), "ms_per_chunk_max": float(max(chunk_ms)),
            "chunks": len(chunk_ms), "frames": stats.frames, "encode_ms": 1000 * encoded, "chunk_ms": chunk_ms,
            "ms_per_chunk_by_stage": {stage: 1000 * total / len(chunk_ms) for stage, total in stats.stage_seconds.items()}}


def stream_speed(pipe, seconds: float = 30.0, runs: int = 3) -> dict:
    """`runs` sessions one after the other; each headline number is the median over the runs."""
    results = [stream_once(pipe, seconds, seed=run) for run in range(runs)]
    median = lambda key: float(statistics.median(r[key] for r in results))  # noqa: E731
    summary = {key: median(key) for key in ("time_to_first_frame_s", "fps", "real_time_factor", "ms_per_chunk_p50",
                                            "ms_per_chunk_p95", "ms_per_chunk_max", "encode_ms")}
    summary["ms_per_chunk_by_stage"] = {stage: float(statistics.median(r["ms_per_chunk_by_stage"][stage] for r in results))
                                        for stage in results[0]["ms_per_chunk_by_stage"]}
    summary["runs"] = results
    return summary


# -- 2. long runs --------------------------------------------------------------------------------------

def long_run(pipe, minutes: float = 30.0, variants=VARIANTS, budget_seconds: float = 900.0,
             sample_seconds: float = 60.0, paired_chunks: int = 12) -> dict:
    """Denoise `minutes` of video per memory variant (decoding adds a constant per chunk, so it is left out),
    sampling the session's memory bytes, the process RSS and the median ms per chunk every `sample_seconds` of
    video. A variant on pace to outlast `budget_seconds` of wall time stops early and says where.

    The ms-per-chunk ratio is *paired*: the session is copied at the first sample, and at the end the copy and
    the session make `paired_chunks` chunks each, alternately, so both are timed under the same machine load
    (on a shared 2-core machine the load drifts by 10-20% over half an hour, more than what is measured)."""
    from .audio import featurize

    image, audio = _portrait_and_speech(pipe, minutes * 60 + 60, seed=0)
    features = featurize(pipe.featurizer, audio, SAMPLE_RATE, pipe.fps)
    probe = pipe.start(image)  # the portrait's conditioning, as a live session makes it
    image_tokens, text = pipe.image_encoder(probe.portrait), pipe.text_encoder("a person is talking")
    results = {}
    for variant in variants:
        gc.collect()
        session = StreamingSession(pipe.transformer, probe.session.y, image_tokens, text,
                                   config=replace(pipe.options.stream, compression=variant),
                                   generator=torch.Generator().manual_seed(0))
        results[variant] = _sample(session, features, pipe.fps, minutes, budget_seconds, sample_seconds, paired_chunks)
        del session
    return results


def _sample(session, features: torch.Tensor, fps: float, minutes: float, budget_seconds: float,
            sample_seconds: float, paired_chunks: int) -> dict:
    samples, recent_ms, began, early = [], [], time.perf_counter(), None
    planned = minutes * 60 / sample_seconds
    for chunk in session.stream(features, num_chunks=session.chunks_for(int(minutes * 60 * fps))):
        recent_ms.append(1000 * chunk.seconds)
        if chunk.video_frames.stop >= (len(samples) + 1) * sample_seconds * fps:  # another sample of video done
            early = early or copy.deepcopy(session, memo={id(session.model): session.model})  # before RSS is read
            samples.append({"minute": round(chunk.video_frames.stop / fps / 60, 3), "memory_bytes": chunk.memory_bytes,
                            "rss_bytes": rss_bytes(), "ms_per_chunk": float(statistics.median(recent_ms))})
            recent_ms = []
            if time.perf_counter() - began > budget_seconds * (len(samples) + 1) / planned:
                break  # on pace to blow the budget (the full cache's chunks keep getting slower)
    late_ms, early_ms = [], []
    for _ in range(paired_chunks):  # the end of the stream and its copy from the first sample, alternately
        for timed, times in ((session, late_ms), (early, early_ms)):
            times.append(next(timed.stream(features, num_chunks=1)).seconds)
    first, last = samples[0], samples[-1]
    ratio = lambda key: last[key] / first[key]  # noqa: E731
    return {"minutes_reached": last["minute"], "memory_bytes_ratio": ratio("memory_bytes"), "rss_ratio": ratio("rss_bytes"),
            "ms_per_chunk_ratio": statistics.median(late_ms) / statistics.median(early_ms),
            "ms_per_chunk_p50_ratio": ratio("ms_per_chunk"),
            "paired_ms": {"first": 1000 * statistics.median(early_ms), "last": 1000 * statistics.median(late_ms)},
            "samples": samples}


# -- 3. the 18B model's cost, counted ---------------------------------------------------------------

def flops_per_frame(height: int, width: int, with_memory: bool = True, config: dict | None = None,
                    stream: StreamConfig = StreamConfig()) -> float:
    """TFLOPs per video frame of the released configuration in steady state, counted as the stream runs it: one
    `StreamingSession.next_chunk` of the third chunk (8 latent frames = 32 video frames at slot 6 against the full
    14-frame window, the first chunk ConvKV compresses for), counted by `torch.utils.flop_counter` on the meta device
    (nothing is allocated or computed). So each denoising step counts as `stream` runs it -- the steps before
    `audio_from_step` without the audio module, a null-audio pass for each guided step where `audio_guidance` != 1 --
    and the audio projection and the compression count too. `with_memory=False`: every call attends within its own
    chunk (the memory's bookkeeping still runs, its window unused): the cost of a chunk alone."""
    from torch.utils.flop_counter import FlopCounterMode

    from .transformer import LiveActTransformer

    with torch.device("meta"):
        model = LiveActTransformer.from_config(config or config_18b())
        cfg, latent = model.config, (height // 8, width // 8)
        session = StreamingSession(model if with_memory else _WithinChunks(model),
                                   torch.empty(1, cfg.in_dim - cfg.out_dim, stream.layout.window, *latent),
                                   torch.empty(1, cfg.image_tokens, cfg.image_dim), torch.empty(1, cfg.text_len, cfg.text_dim),
                                   config=stream)
        audio = torch.empty(1, session.window_video_frames, cfg.audio_window, cfg.audio_layers, cfg.audio_channels)
    for _ in range(2):  # chunks 0 and 1 fill the window
        session.next_chunk(audio)
    with FlopCounterMode(display=False) as counter:
        chunk = session.next_chunk(audio)
    return counter.get_total_flops() / len(chunk.video_frames) / 1e12


class _WithinChunks:
    """The model as a session sees it, except that every call attends within its own chunk (no memory window)."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def __call__(self, latents, timestep, y, context, audio, memory, slot, parallel=None):
        return self.model(latents, timestep, y, context, audio, None, slot, parallel)


def memory_window_bytes(height: int, width: int, fp8: bool, config: dict | None = None) -> int:
    """Bytes of a session's key/value windows (one per denoising step) of the 18B config at a resolution, one GPU."""
    from . import vram

    stream = StreamConfig(fp8_memory=fp8)
    return vram.memory_count(stream) * vram.memory_bytes(config or config_18b(), (height, width), stream)


def cost_18b() -> dict:
    """TFLOPs per frame at the three resolutions, the memory window, and the FPS ceilings on H100s."""
    result = {"tflops_per_frame": {}, "tflops_per_frame_without_memory": {}, "memory_window_bytes": {},
              "fps_ceiling": {}}
    for name, (height, width) in SIZES_18B.items():
        tflops = flops_per_frame(height, width)
        result["tflops_per_frame"][name] = tflops
        result["tflops_per_frame_without_memory"][name] = flops_per_frame(height, width, with_memory=False)
        result["memory_window_bytes"][name] = {"bf16": memory_window_bytes(height, width, False),
                                               "fp8": memory_window_bytes(height, width, True)}
        result["fps_ceiling"][name] = {f"{gpus}xH100 {precision}": gpus * peak / tflops
                                       for gpus in (1, 2) for precision, peak in H100_PEAK_TFLOPS.items()}
    return result


def machine() -> str:
    """The machine in words: GPU name, or CPU model and the threads torch uses."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA)"
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "CPU") if Path("/proc/cpuinfo").exists() else "CPU"
    return f"{model}, {os.cpu_count()} cores, torch using {torch.get_num_threads()} threads"


def run(model: str = "tiny", seconds: float = 30.0, runs: int = 3, long_minutes: float | None = None,
        long_budget: float = 900.0, flops: bool = False, device: str | None = None, size: str | None = None) -> dict:
    """Everything `python -m liveact bench` measures, as one JSON-able report."""
    from .pipeline import load

    began = time.perf_counter()
    pipe = load(model, device=device, size=size)
    report = {"machine": machine(), "model": pipe.name, "size": f"{pipe.size[1]}x{pipe.size[0]}", "video_fps": pipe.fps,
              "load_s": time.perf_counter() - began}
    speed = stream_speed(pipe, seconds, runs)
    report |= {key: value for key, value in speed.items() if key != "runs"} | {"speed": speed}
    if long_minutes:
        report["long"] = long_run(pipe, long_minutes, budget_seconds=long_budget)
    if flops:
        report["flops"] = cost_18b()
        report["tflops_per_frame"] = report["flops"]["tflops_per_frame"]
    return report


# -- report --------------------------------------------------------------------------------------------

def markdown(report: dict) -> str:
    """The whole benchmark document (docs/BENCHMARKS.md is written by this): tables, and what they mean."""
    lines = ["# Benchmarks", "", f"Written by `{report.get('command', 'python -m liveact bench')}` on "
             f"{report['machine']}. Model: {report['model']} at {report['size']}, {report['video_fps']:g} fps video.", ""]
    speed = report.get("speed")
    if speed:
        runs = len(speed["runs"])
        lines += ["## Streaming speed", "",
                  f"A live session fed {speed['runs'][0]['frames'] / report['video_fps']:.0f} s of speech, every chunk "
                  f"denoised, decoded and written as an H.264 + AAC segment (`liveact.serve.Broadcast`, as the app runs "
                  f"it); median of {runs} runs. Time to first frame runs from the portrait to the first segment on disk.", "",
                  "| time to first frame | FPS | real-time factor | ms/chunk p50 | p95 | max | audio | denoise | decode | segments |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
                  f"| {speed['time_to_first_frame_s']:.2f} s | {speed['fps']:.1f} | {speed['real_time_factor']:.2f}x | "
                  f"{speed['ms_per_chunk_p50']:.0f} | {speed['ms_per_chunk_p95']:.0f} | {speed['ms_per_chunk_max']:.0f} | "
                  + " | ".join(f"{speed['ms_per_chunk_by_stage'][s]:.0f} ms" for s in ("audio", "denoise", "decode", "segments"))
                  + " |", "",
                  "Per run: " + "; ".join(f"{r['fps']:.1f} FPS, first frame {r['time_to_first_frame_s']:.2f} s"
                                         for r in speed["runs"]) + ".", ""]
    long = report.get("long")
    if long:
        minutes = max(r["minutes_reached"] for r in long.values())
        lines += ["## Long run: constant memory", "",
                  f"{minutes:g} minutes of video per memory variant in one process, denoising only (decoding adds a "
                  "constant per chunk); the session's key/value bytes, the process RSS and the median ms per chunk of "
                  "each minute, reported as the last sample over the first (minute 1). The ms-per-chunk ratio is paired: "
                  "the session is copied at minute 1, and at the end the copy and the session make 12 chunks each, "
                  "alternately, timed under the same machine load (the median of each minute, noise of a shared machine "
                  "included, is the ratio in brackets and the plot). A variant on pace to exceed the wall-time budget "
                  "stops early: the full cache gets slower with every chunk.", "",
                  "| memory | minutes reached | memory bytes ratio | RSS ratio | ms/chunk ratio (paired) | ms/chunk, first -> last | (per-minute medians) | memory at the end |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {variant} | {r['minutes_reached']:g} | {r['memory_bytes_ratio']:.2f} | {r['rss_ratio']:.2f} | "
                  f"{r['ms_per_chunk_ratio']:.2f} | {r['paired_ms']['first']:.0f} -> {r['paired_ms']['last']:.0f} | "
                  f"({r['ms_per_chunk_p50_ratio']:.2f}) | {r['samples'][-1]['memory_bytes'] / 2**20:.1f} MiB |"
                  for variant, r in long.items()]
        if report.get("plot"):
            lines += ["", f"![latency of the speed runs, ms per chunk and memory over the long run]({report['plot']})"]
        lines.append("")
    cost = report.get("flops")
    if cost:
        ours, alone = cost["tflops_per_frame"]["512x512"], cost["tflops_per_frame_without_memory"]["512x512"]
        lines += ["## The 18B model's cost, counted", "",
                  "`torch.utils.flop_counter` over one steady-state chunk of the released configuration as the stream runs "
                  "it, on the meta device: `StreamingSession.next_chunk` of 8 latent frames = 32 video frames at slot 6 of "
                  "the full 14-frame window, every denoising step as the session makes it (the audio module from step "
                  "`audio_from_step` on, the image and text keys and values once per session) with the audio projection "
                  "and ConvKV's compression, per video frame. The ceilings divide dense peak throughput (H100 SXM: 989 "
                  "TFLOPS bf16, 1979 fp8) by it: 100% utilisation, the VAE and encoders free, so no real system reaches "
                  "them.", "",
                  "| 18B at | TFLOPs / frame | without the memory frames | K/V window bf16 (3 steps, 1 GPU) | window fp8 | ceiling 1xH100 bf16 | 2xH100 bf16 | 2xH100 fp8 |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, tflops in cost["tflops_per_frame"].items():
            ceiling, window = cost["fps_ceiling"][name], cost["memory_window_bytes"][name]
            lines.append(f"| {name} | {tflops:.1f} | {cost['tflops_per_frame_without_memory'][name]:.1f} | "
                         f"{window['bf16'] / 2**30:.1f} GiB | {window['fp8'] / 2**30:.1f} GiB | {ceiling['1xH100 bf16']:.0f} FPS | "
                         f"{ceiling['2xH100 bf16']:.0f} FPS | {ceiling['2xH100 fp8']:.0f} FPS |")
        nearer = "without" if abs(PAPER_TFLOPS_PER_FRAME / alone - 1) < abs(PAPER_TFLOPS_PER_FRAME / ours - 1) else "with"
        lines += ["", f"**Against the paper's {PAPER_TFLOPS_PER_FRAME} TFLOPs per frame at 512x512:** counted, "
                  f"{ours:.2f} with the memory window and {alone:.2f} without it. The paper's figure is "
                  f"{(PAPER_TFLOPS_PER_FRAME / alone - 1):+.1%} from the count of a chunk attending to itself only, and "
                  f"{(PAPER_TFLOPS_PER_FRAME / ours - 1):+.1%} from the full count: nearer the count {nearer} the memory "
                  f"window. The {ours - alone:.2f} TFLOPs per frame between the two are self-attention over the 6 memory "
                  "frames (2 sink, 2 compressed, 2 recent) that every chunk attends to besides its own 8: 14 frames of keys "
                  f"instead of 8. The window costs them ({(ours - alone) / ours:.0%} of the total), constant however long "
                  "the stream.", ""]
    lines += ["## The 18B model on a GPU", "",
              "Measured apart, on a GPU: `python -m liveact bench --gpu --suite` writes [GPU.md](GPU.md) (the released "
              "configuration with random weights: the attention kernels, then eager, `torch.compile`, fp8 GEMMs, the "
              "chosen attention kernel, the decode overlapped and fp8 memory, one after the other).", ""]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: str | Path) -> Path:
    """Per-chunk latency of the speed runs, and ms per chunk and memory over the long run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    long = report.get("long") or {}
    figure, axes = plt.subplots(1, 3 if long else 1, figsize=(13 if long else 5, 3.5), squeeze=False)
    for run in (report.get("speed") or {}).get("runs", []):
        axes[0, 0].plot(run.get("chunk_ms", []), lw=1)
    axes[0, 0].set(title="speed runs: ms per chunk", xlabel="chunk")
    for variant, r in long.items():
        minutes = [m["minute"] for m in r["samples"]]
        axes[0, 1].plot(minutes, [m["ms_per_chunk"] for m in r["samples"]], marker=".", label=variant)
        axes[0, 2].plot(minutes, [m["memory_bytes"] / 2**20 for m in r["samples"]], marker=".", label=variant)
    if long:
        axes[0, 1].set(title="ms per chunk (median of each minute)", xlabel="minute of video", yscale="log")
        axes[0, 2].set(title="key/value memory (MiB)", xlabel="minute of video", yscale="log")
        axes[0, 1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)
