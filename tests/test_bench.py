"""Benchmarks: the 30-second speed run as a smoke test, constant memory against a growing cache, FLOPs counted."""

from __future__ import annotations

import json

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
    with_memory, without = bench.flops_per_frame(512, 512), bench.flops_per_frame(512, 512, with_memory=False)
    print(f"\n18B at 512x512: {with_memory:.2f} TFLOPs/frame with the 6 memory frames, {without:.2f} without "
          f"(paper: {bench.PAPER_TFLOPS_PER_FRAME})")
    assert 25 < without < with_memory < 40
    assert bench.flops_per_frame(720, 416) < bench.flops_per_frame(832, 480)
    bf16, fp8 = bench.memory_window_bytes(512, 512, fp8=False), bench.memory_window_bytes(512, 512, fp8=True)
    assert fp8 < 0.6 * bf16
    assert bf16 == 3 * 40 * 2 * 14 * 32 * 32 * 5120 * 2  # steps x layers x (K, V) x frames x tokens x dim x bytes


def test_rss_is_read():
    assert bench.rss_bytes() > 10 * 2**20


def test_gpu_speed_runs_every_variant_of_a_small_config_on_the_cpu():
    """The code `python -m liveact bench --gpu` runs on a GPU, on a config small enough for this CPU (no decode,
    no compile: the Wan VAE at full width and inductor take minutes here)."""
    config = config_18b() | dict(dim=64, ffn_dim=128, num_heads=4, num_layers=2, text_dim=32, text_len=16, image_dim=32,
                   image_tokens=5, audio_channels=16, audio_layers=2, intermediate_dim=16, output_dim=16, context_tokens=4)
    report = bench.gpu_speed((64, 64), chunks=4, device="cpu", dtype=torch.float32, config=config,
                             variants=("eager", "fp8 memory"), decode=False, progress=lambda line: None)
    eager, fp8 = report["variants"]["eager"], report["variants"]["fp8 memory"]
    assert len(eager["chunks"]) == 4 and eager["video_frames_per_chunk"] == 32  # 8 latent frames, 4x in time
    assert eager["fps_denoise"] > 0 and eager["decode_s"] == 0.0
    assert fp8["memory_window_bytes"] < eager["memory_window_bytes"]
    table = bench.gpu_markdown(report)
    assert "| eager |" in table and "| fp8 memory |" in table and "chunks 4-4" in table


def test_gpu_benchmark_without_a_gpu_is_one_sentence(monkeypatch, capsys):
    from liveact.__main__ import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "--gpu"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert main(["bench", "--gpu", "--plot", "gpu.png"]) == 2  # the GPU report has nothing to plot
    assert "--gpu measures the 18B config" in capsys.readouterr().err
