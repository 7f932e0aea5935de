"""Benchmarks: the 30-second speed run as a smoke test, constant memory against a growing cache, FLOPs counted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import run_liveact
from liveact import bench
from liveact.hub import config_18b


def test_bench_command_30_second_smoke(tmp_path):
    report_file = tmp_path / "bench.json"
    result = run_liveact("bench", "--seconds", "30", "--runs", "1", "--json", str(report_file),
                         "--markdown", str(tmp_path / "bench.md"), "--plot", str(tmp_path / "bench.png"))
    assert result.returncode == 0, result.stderr
    report = json.loads(report_file.read_text())
    print(f"\n{result.stdout}")
    assert {"time_to_first_frame_s", "fps", "ms_per_chunk_p50", "ms_per_chunk_p95"} <= set(report)
    assert report["speed"]["runs"][0]["frames"] >= 30 * 20
    assert set(report["ms_per_chunk_by_stage"]) == {"audio", "denoise", "decode", "segments"}
    assert (tmp_path / "bench.png").stat().st_size > 0 and "time to first frame" in (tmp_path / "bench.md").read_text()


def test_convkv_memory_stays_flat_while_the_full_cache_grows():
    from liveact.pipeline import load

    long = bench.long_run(load("tiny"), minutes=1, variants=("conv", "full"), budget_seconds=120, sample_seconds=20,
                          paired_chunks=4)
    assert long["conv"]["minutes_reached"] >= 1 and long["conv"]["memory_bytes_ratio"] == 1.0
    assert long["full"]["minutes_reached"] >= 1
    assert long["full"]["memory_bytes_ratio"] > 2.5  # about 3x the frames at 60 s as at 20 s
    assert long["full"]["ms_per_chunk_ratio"] > 1.5 > long["conv"]["ms_per_chunk_ratio"]  # paired: same machine load


def test_18b_flops_are_counted_on_the_meta_device():
    """Each step as the stream runs it: step 0 without the audio module, steps 1 and 2 with it
    (StreamConfig.audio_from_step = 1), the image and text keys and values once per session. So the count is one call
    without audio and two with, each counted apart here, give or take the audio projection and ConvKV's compression
    -- and below the 3 calls with audio counted before."""
    from torch.utils.flop_counter import FlopCounterMode

    from liveact.memory import ConvKVMemory
    from liveact.stream import StreamConfig
    from liveact.transformer import LiveActTransformer

    with_memory, without = bench.flops_per_frame(512, 512), bench.flops_per_frame(512, 512, with_memory=False)
    stream = StreamConfig()
    assert stream.audio_from_step == 1 and stream.sampler.num_steps == 3 and stream.audio_guidance == 1.0
    with torch.device("meta"):
        model = LiveActTransformer.from_config(config_18b())
        cfg, frames = model.config, stream.layout.chunk
        latents, y = torch.empty(1, cfg.out_dim, frames, 64, 64), torch.empty(1, cfg.in_dim - cfg.out_dim, frames, 64, 64)
        context = model.cross_keys_values(torch.empty(1, cfg.image_tokens + cfg.text_len, cfg.dim))
        audio = torch.empty(1, frames, cfg.context_tokens, cfg.output_dim)
        memory = ConvKVMemory(cfg.num_layers, 32 * 32, cfg.num_heads, cfg.dim // cfg.num_heads, device="meta")

    def per_call(tokens) -> float:  # TFLOPs per video frame of one denoiser call
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(latents, 900.0, y, context, tokens, memory, stream.layout.chunk_slot)
        return counter.get_total_flops() / (cfg.vae_scale * frames) / 1e12

    silent, speaking = per_call(None), per_call(audio)
    print(f"\n18B at 512x512: {with_memory:.2f} TFLOPs/frame with the 6 memory frames, {without:.2f} without "
          f"(paper: {bench.PAPER_TFLOPS_PER_FRAME}); per call {silent:.2f} without audio, {speaking:.2f} with")
    assert with_memory == pytest.approx(silent + 2 * speaking, rel=1e-3) and with_memory < 3 * speaking
    assert 25 < without < with_memory < 40
    assert bench.flops_per_frame(720, 416) < bench.flops_per_frame(832, 480)
    bf16, fp8 = bench.memory_window_bytes(512, 512, fp8=False), bench.memory_window_bytes(512, 512, fp8=True)
    assert fp8 < 0.6 * bf16
    assert bf16 == 3 * 40 * 2 * 14 * 32 * 32 * 5120 * 2  # steps x layers x (K, V) x frames x tokens x dim x bytes


def test_rss_is_read():
    assert bench.rss_bytes() > 10 * 2**20


SMALL = config_18b() | dict(dim=64, ffn_dim=128, num_heads=4, num_layers=2, text_dim=32, text_len=16, image_dim=32,
                            image_tokens=5, audio_channels=16, audio_layers=2, intermediate_dim=16, output_dim=16,
                            context_tokens=4)  # the released layout, small enough for this CPU
SMALL_VAE = dict(base_dim=8)  # the Wan VAE's layout, narrow: Wan's width decodes a chunk in seconds here


def test_the_gpu_suite_runs_every_variant_of_a_small_config_on_the_cpu(monkeypatch):
    """The code `python -m liveact bench --gpu --suite` runs on a GPU, on a config small enough for this CPU; compiling
    is stood in for by nothing (inductor takes minutes here), the kernels fall back to their plain math."""
    from liveact.transformer import LiveActTransformer

    first, second = (bench._random_18b(SMALL, "cpu", torch.float32, SMALL_VAE)[0].state_dict() for _ in range(2))
    assert all(torch.equal(first[name], second[name]) for name in first)  # the same seed: every variant, the same weights
    monkeypatch.setattr(LiveActTransformer, "compile_blocks", lambda self: None)
    saved, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: on a loaded 2-core machine OpenMP's waiting threads make them 10x slower
    try:
        report = bench.gpu_suite((32, 32), chunks=3, device="cpu", dtype=torch.float32, config=SMALL,
                                 vae_config=SMALL_VAE, progress=lambda line: None,
                                 save=lambda r: saved.append(list(r["variants"])))
    finally:
        torch.set_num_threads(threads)
    variants, attention = report["variants"], report["attention"]
    assert list(variants)[:3] == ["eager", "compile", "compile + fp8 GEMM"] and report["skipped"] == []
    assert list(variants)[-1].endswith(" + overlapped decode + fp8 memory")
    assert list(variants.values())[-1]["settings"]["attention"] == attention["chosen"]
    assert saved == [list(variants)[:n] for n in range(1, len(variants) + 1)]  # written after every variant
    for name, r in variants.items():
        assert {"fps", "time_to_first_frame_s", "peak_gpu_bytes", "max_abs_error_vs_bf16"} <= set(r), name
        assert len(r["chunks"]) == 3 and r["video_frames_per_chunk"] == 32 and r["fps"] > 0 and r["denoise_s"] > 0
        assert np.isfinite([r["max_abs_error_vs_bf16"], r["relative_error_vs_bf16"]]).all()
    assert variants["eager"]["max_abs_error_vs_bf16"] == 0.0
    assert 0 < variants["compile + fp8 GEMM"]["relative_error_vs_bf16"] < 0.1  # e4m3: a few %
    last, before = list(variants.values())[-1], list(variants.values())[-2]
    assert last["memory_window_bytes"] < before["memory_window_bytes"]  # fp8 memory
    assert {"sdpa", "sdpa-cudnn", "flash", "sage"} <= set(attention["backends"]) and attention["backends"]["sdpa"]["available"]
    report["command"] = "python -m liveact bench --gpu --suite"
    page = bench.gpu_markdown(report)
    assert "`python -m liveact bench --gpu --suite`" in page and "## Attention kernels" in page and "## The target" in page
    assert all(f"| {name} |" in page for name in variants)


def test_a_gpu_run_stops_within_its_budget_and_says_what_it_skipped(monkeypatch):
    """Each variant here "takes" 100 s: with 50 s of budget the second would end past it, so it and the rest are
    skipped, and named."""
    def measure(variant, *args):
        rows = [{"video_frames": 32, "denoise_s": 1.2, "decode_s": 0.3, "wall_s": 1.5}] * 4
        return ({"settings": variant.settings, "build_s": 1.0, "warmup_s": 2.0, **bench._summary(rows),
                 "memory_window_bytes": 0, "peak_gpu_bytes": None, "total_s": 100.0}, torch.ones(3))

    monkeypatch.setattr(bench, "_measure", measure)
    saved = []
    report = bench.gpu_speed((32, 32), chunks=4, device="cpu", config=SMALL, budget_s=50.0, progress=lambda line: None,
                             save=saved.append)
    assert list(report["variants"]) == ["eager"] and report["skipped"] == [v.name for v in bench.GPU_VARIANTS[1:]]
    assert len(saved) == 1 and report["variants"]["eager"]["fps"] == pytest.approx(32 / 1.5)
    page = bench.gpu_markdown(report)
    assert "time budget of 50 s: fp8 memory, torch.compile" in page
    assert "met by no variant" in page and "first frame after 1.50 s > 1 s" in page  # 21.3 FPS, but 1.5 s to the first


def test_gpu_benchmark_without_a_gpu_is_one_sentence(monkeypatch, capsys):
    from liveact.__main__ import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "--gpu"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert main(["bench", "--gpu", "--suite"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert main(["bench", "--gpu", "--plot", "gpu.png"]) == 2  # the GPU report has nothing to plot
    assert "--gpu measures the 18B config" in capsys.readouterr().err
    assert main(["bench", "--suite"]) == 2
    assert "--suite is a --gpu benchmark" in capsys.readouterr().err
