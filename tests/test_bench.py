"""Benchmarks: the 30-second speed run as a smoke test, constant memory against a growing cache, FLOPs counted."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from conftest import run_liveact
from liveact import bench, gpu_bench
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

    first, second = (gpu_bench._random_18b(SMALL, "cpu", torch.float32, SMALL_VAE)[0].state_dict() for _ in range(2))
    assert all(torch.equal(first[name], second[name]) for name in first)  # the same seed: every variant, the same weights
    monkeypatch.setattr(LiveActTransformer, "compile_blocks", lambda self: None)
    saved, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: on a loaded 2-core machine OpenMP's waiting threads make them 10x slower
    try:
        report = gpu_bench.gpu_suite((32, 32), chunks=3, device="cpu", dtype=torch.float32, config=SMALL,
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
    page = gpu_bench.gpu_markdown(report)
    assert "`python -m liveact bench --gpu --suite`" in page and "## Attention kernels" in page and "## The target" in page
    assert all(f"| {name} |" in page for name in variants)
    low_vram = "\n".join([gpu_bench.LOW_VRAM_MARKERS[0], "## On a 24 GB card", "", "measured apart", gpu_bench.LOW_VRAM_MARKERS[1]])
    kept = gpu_bench.gpu_page(report, f"# An older page\n\n{low_vram}\n")  # the suite's page keeps the low-vram section
    assert kept.startswith(page.rstrip()) and kept.endswith(f"\n\n{low_vram}\n") and "older" not in kept


def test_a_gpu_run_stops_within_its_budget_and_says_what_it_skipped(monkeypatch):
    """Each variant here "takes" 100 s: with 50 s of budget the second would end past it, so it and the rest are
    skipped, and named."""
    def measure(variant, *args):
        rows = [{"video_frames": 32, "denoise_s": 1.2, "decode_s": 0.3, "wall_s": 1.5}] * 4
        return ({"settings": variant.settings, "build_s": 1.0, "warmup_s": 2.0, **gpu_bench._summary(rows),
                 "memory_window_bytes": 0, "peak_gpu_bytes": None, "total_s": 100.0}, torch.ones(3))

    monkeypatch.setattr(gpu_bench, "_measure", measure)
    saved = []
    report = gpu_bench.gpu_speed((32, 32), chunks=4, device="cpu", config=SMALL, budget_s=50.0, progress=lambda line: None,
                             save=saved.append)
    assert list(report["variants"]) == ["eager"] and report["skipped"] == [v.name for v in gpu_bench.GPU_VARIANTS[1:]]
    assert len(saved) == 1 and report["variants"]["eager"]["fps"] == pytest.approx(32 / 1.5)
    page = gpu_bench.gpu_markdown(report)
    assert "time budget of 50 s: fp8 memory, torch.compile" in page
    assert "met by no variant" in page and "first frame after 1.50 s > 1 s" in page  # 21.3 FPS, but 1.5 s to the first


def test_a_low_vram_run_stops_within_its_budget_and_says_what_it_skipped(monkeypatch):
    """Each case here takes 1.5 s: with 2 s of budget a second would end past it, so it and the rest are skipped."""
    monkeypatch.setattr(gpu_bench, "_low_vram_case", lambda case, *args: time.sleep(1.5) or case.update(
        status="failed", reason="stood in for"))
    monkeypatch.setattr(gpu_bench, "flops_per_frame", lambda *args, **kwargs: 30.0)
    report = gpu_bench.gpu_low_vram((24, 16), device="cpu", config=SMALL, budget_s=2.0, progress=lambda line: None)
    assert list(report) == ["_run", "24", "16"] and list(report["16"]) == ["416x720", "512x512"]
    assert [case["status"] for card in ("24", "16") for case in report[card].values()] == ["failed"] + ["skipped"] * 3
    page = gpu_bench.low_vram_markdown(report)
    assert "**24 GiB, 416x720** failed: stood in for." in page
    assert "**16 GiB, 512x512** skipped: not measured, to end within the time budget of 2 s." in page


def test_the_low_vram_command_writes_its_json_and_its_section_of_the_suites_page(tmp_path, monkeypatch):
    from liveact.__main__ import main

    page, data, suite_page = tmp_path / "GPU.md", tmp_path / "gpu-low-vram.json", "# The 18B model on a GPU\n\nTables.\n"
    page.write_text(suite_page)

    def measured(caps, sizes, chunks, device, budget_s, save):  # stands for the GPU
        report = {"_run": {"machine": "a GPU", "commit": "abc1234", "torch": "2.11", "dtype": "bfloat16", "chunks": chunks,
                           "fp8_gemm": True, "h2d_bytes_per_s": 5e10},
                  "16": {"416x720": {"status": "does not fit", "reason": "it needs about 17.1 GiB"}}}
        save(report)
        return report

    monkeypatch.setattr(gpu_bench, "gpu_low_vram", measured)
    argv = ["bench", "--gpu", "--low-vram", "16", "--json", str(data), "--markdown", str(page)]
    assert main(argv) == 0
    report = json.loads(data.read_text())
    assert list(report) == ["_run", "16"] and report["_run"]["command"] == "python -m liveact " + " ".join(argv)
    text = page.read_text()
    assert text.startswith(suite_page) and "**16 GiB, 416x720** does not fit: it needs about 17.1 GiB." in text
    assert f"`python -m liveact {' '.join(argv)}` from commit abc1234" in text and "10 chunks" in text


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
    assert main(["bench", "--gpu", "--low-vram", "24", "16"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert main(["bench", "--low-vram", "24"]) == 2
    assert "--low-vram is a --gpu benchmark" in capsys.readouterr().err
    assert main(["bench", "--gpu", "--suite", "--low-vram", "24"]) == 2
    assert "two runs" in capsys.readouterr().err


def test_the_low_vram_run_streams_blocks_from_host_memory_and_counts_their_bytes_on_the_cpu():
    """`bench --gpu --low-vram`'s code on a small config on the CPU: one card that vram.fit meets by keeping one block
    of six and streaming the others from host memory, one that nothing fits. A CPU has no allocator to cap: the cap is
    recorded instead. The bytes a chunk reads from host memory are counted as they are copied: each streamed block
    once per denoiser call, and what each offloaded window loads (memory.py: slots 2-13 to compress, 0-5 to attend)."""
    from liveact import vram
    from liveact.pipeline import Options
    from liveact.stream import StreamConfig

    config, size = SMALL | dict(num_layers=6), (32, 32)
    one_kept = Options(device="cpu", dtype=torch.float32, text_encoder_on_cpu=True, fp8_gemm=True, block_offload=True,
                       resident_blocks=1, stream=StreamConfig(fp8_memory=True, offload_memory=True))
    card = (vram.count(config, size, one_kept).total / vram.HEADROOM + 1024) / 2**30  # GiB: a block more does not fit
    caps, saved, threads = [], [], torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: see the suite's test above
    try:
        report = gpu_bench.gpu_low_vram((card, 0.5), sizes=(size,), chunks=4, device="cpu", dtype=torch.float32, config=config,
                                    vae_config=SMALL_VAE, cap=caps.append, progress=lambda line: None,
                                    save=lambda r: saved.append(json.dumps(r)))
    finally:
        torch.set_num_threads(threads)
    assert list(report) == ["_run", f"{card:g}", "0.5"] and len(saved) == 2  # written after each case
    assert json.loads(saved[-1]) == report and report["_run"]["h2d_bytes_per_s"] > 0
    case, too_small = report[f"{card:g}"]["32x32"], report["0.5"]["32x32"]
    assert too_small["status"] == "does not fit" and "even with every block streamed" in too_small["reason"]
    assert case["status"] == "measured", case.get("reason")
    assert case["settings"] | {"attention": "sdpa", "compile": False, "overlap_decode": False} == dict(
        fp8_gemm=True, fp8_memory=True, offload_memory=True, block_offload=True, resident_blocks=1, attention="sdpa",
        compile=False, overlap_decode=False)
    assert case["measures"][-1] == "1 blocks kept on the GPU, the others streamed from host memory"
    estimate = case["estimate"]
    assert caps == [case["allocator_limit_bytes"], None, None]  # capped for the measured case, uncapped after each
    assert case["allocator_limit_bytes"] == int(card * 2**30) - estimate["image_encoder"] - estimate["audio_encoder"]
    assert case["estimated_gpu_bytes"] == sum(estimate.values())

    filters = vram.meta_transformer(config, torch.float32, fp8_gemm=True).blocks[0].self_attn  # stay on the device
    block = vram.transformer_weights(config, torch.float32, fp8_gemm=True).block - sum(
        vram.module_bytes(m) for m in (filters.memory_proj_k, filters.memory_proj_v))  # what a streamed block moves
    assert case["streamed_blocks"] == 5 and case["denoiser_calls_per_chunk"] == 3
    assert case["block_bytes_per_chunk"] == 5 * block * 3
    # 3 windows (one per step) x 6 layers x (12 + 6) slots x 4 tokens (4x4 latents, 2x2 patches) x 64 channels x K, V in
    # fp8 (1 byte; their float32 scales need no copy on a CPU)
    assert case["window_bytes_per_chunk"] == 3 * 6 * 18 * 4 * 64 * 2
    assert case["bytes_moved_per_chunk"] == case["block_bytes_per_chunk"] + case["window_bytes_per_chunk"]
    assert case["offloaded_bytes"] >= 5 * block and case["host_rss_bytes"] > 10 * 2**20

    assert case["video_frames_per_chunk"] == 32 and case["fps"] > 0 and case["precision"] == "fp8"
    assert case["flops_per_chunk"] == pytest.approx(bench.flops_per_frame(*size, config=config) * 1e12 * 32)
    assert case["utilisation"] == pytest.approx(case["flops_per_chunk"] / case["wall_s"] / 1978.9e12)
    seconds = max(case["bytes_moved_per_chunk"] / 25e9, case["flops_per_chunk"] / (330.3e12 * case["utilisation"]))
    assert case["rtx4090_fps_estimate"] == pytest.approx(32 / seconds)

    suite_page = "# The 18B model on a GPU\n\nWhat the suite measured.\n"
    page = gpu_bench.low_vram_page(report, suite_page)
    assert page.startswith(suite_page) and "## On a 24 GB card" in page and too_small["reason"] in page
    assert "**The RTX 4090 column is an estimate, not a measurement:**" in page
    assert gpu_bench.low_vram_page(report, page) == page  # rewritten in place, not added again
