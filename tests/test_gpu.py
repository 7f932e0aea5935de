"""On a CUDA GPU only (skipped elsewhere, so in CI): the whole pipeline, encoders to decoded frames, on the GPU; the
fast kernels -- fp8 GEMMs, the attention kernels, the overlapped decode -- each against the plain path; and a smaller
card's means -- blocks streamed from pinned memory, vram's count against the allocator's peak, the capped benchmark.

    pytest tests/test_gpu.py        on a machine with an NVIDIA GPU; needs no weights from the Hub
"""

from __future__ import annotations

import copy
import gc

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import make_tiny_model, stream_latents
from liveact.hub import config_18b
from liveact.kernels import ATTENTION_BACKENDS, Fp8Linear
from liveact.pipeline import Options, load
from liveact.synthetic import SAMPLE_RATE, portrait, speech
from random_model import build_random_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def stream_on_the_gpu(model, dtype: torch.dtype) -> list:
    pipe = load(model, device="cuda", dtype=dtype)
    assert next(pipe.transformer.parameters()).device.type == "cuda"
    live = pipe.start(portrait(5, pipe.size[0]), prompt="a person is talking", seed=1)
    live.feed(speech(6.0, 5), SAMPLE_RATE)
    live.finish()
    chunks = list(live.chunks())
    assert len(chunks) == live.session.chunks_for(int(6.0 * pipe.fps))
    assert all(c.frames.dtype == np.uint8 and c.frames.shape[1:] == (*pipe.size, 3) for c in chunks)
    return chunks


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_tiny_model_streams_on_the_gpu(dtype):
    chunks = stream_on_the_gpu("tiny", dtype)
    assert np.std(chunks[-1].frames) > 1  # a picture, not a flat or blown-out frame


def test_a_checkpoint_of_the_released_layout_streams_on_the_gpu_in_bf16(tmp_path):
    """CLIP, umT5, wav2vec2, the Wan VAE and the transformer, as the 18B model loads them (tiny random weights)."""
    stream_on_the_gpu(build_random_model(tmp_path / "model", size=(64, 64)), torch.bfloat16)


# -- the fast kernels (issue #17), each against the plain path ---------------------------------------

FP8_GPU = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.skipif(not FP8_GPU, reason="needs fp8 tensor cores (Ada or Hopper)")
def test_fp8_gemm_on_the_gpu_is_its_dequantised_math_and_close_to_the_bf16_linear(monkeypatch):
    torch.manual_seed(0)
    linear = nn.Linear(512, 256).to("cuda", torch.bfloat16)
    x = torch.randn(4, 100, 512, device="cuda", dtype=torch.bfloat16)
    fp8, scaled_mm, calls = Fp8Linear(linear), torch._scaled_mm, []
    monkeypatch.setattr(torch, "_scaled_mm", lambda *args, **kwargs: calls.append(1) or scaled_mm(*args, **kwargs))
    on_tensor_cores = fp8(x)
    assert calls and on_tensor_cores.dtype == torch.bfloat16  # the fp8 kernel ran, not the fallback
    dequantised = copy.deepcopy(fp8).cpu()(x.cpu())  # the same quantised values, multiplied in float32 on the CPU
    assert relative_error(on_tensor_cores.cpu(), dequantised) < 0.01  # accumulation order and bf16 rounding only
    assert relative_error(on_tensor_cores, linear(x)) < 0.05


@pytest.mark.parametrize("backend", [name for name in ATTENTION_BACKENDS if name != "sdpa"])
def test_each_attention_kernel_streams_what_plain_sdpa_streams(backend):
    if backend in ("flash", "sage"):
        pytest.importorskip({"flash": "flash_attn", "sage": "sageattention"}[backend])
    model = make_tiny_model().to("cuda", torch.bfloat16)
    reference = stream_latents(model, chunks=3)
    model.set_attention_backend(backend)
    latents = stream_latents(model, chunks=3)
    assert all(relative_error(a, b) < 0.02 for a, b in zip(latents, reference))  # bf16 against fp32 differs by ~0.6%


def test_overlapped_decode_on_the_gpu_gives_the_same_frames():
    def frames(overlap: bool) -> np.ndarray:
        pipe = load("tiny", device="cuda", options=Options(overlap_decode=overlap))
        live = pipe.start(portrait(5, pipe.size[0]), prompt="a person is talking", seed=1)
        live.feed(speech(6.0, 5), SAMPLE_RATE)
        live.finish()
        chunks = list(live.chunks())
        assert [chunk.index for chunk in chunks] == list(range(len(chunks))) and len(chunks) >= 3
        return np.concatenate([chunk.frames for chunk in chunks])

    assert np.array_equal(frames(False), frames(True))


def test_the_gpu_benchmark_runs_a_small_config_on_the_gpu():
    """`bench --gpu --suite`'s CUDA paths (events, peak memory, fp8 GEMMs, the kernels, a decode stream of its own) on
    a small config, in seconds, before the 18B run spends its minutes; no compile (inductor takes minutes per config)."""
    from liveact import gpu_bench

    config = config_18b() | dict(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=32, text_len=16, image_dim=32,
                                 image_tokens=5, audio_channels=16, audio_layers=2, intermediate_dim=16, output_dim=16,
                                 context_tokens=4)  # head_dim 128, as released
    attention = gpu_bench.compare_attention("cuda", torch.bfloat16, queries=8 * 64, keys=14 * 64, heads=2, head_dim=128)
    assert attention["backends"]["sdpa"]["available"] and attention["backends"]["sdpa"]["relative_error"] < 0.01
    variants = (gpu_bench.GpuVariant("eager"), gpu_bench.GpuVariant("fp8 GEMM", fp8_gemm=FP8_GPU, attention=attention["chosen"]),
                gpu_bench.GpuVariant("overlapped decode", overlap_decode=True, fp8_memory=True))
    report = gpu_bench.gpu_speed((64, 64), chunks=4, device="cuda", variants=variants, config=config,
                             vae_config=dict(base_dim=32), attention=attention)
    for name, r in report["variants"].items():
        assert r["peak_gpu_bytes"] > 0 and r["fps"] > 0 and r["time_to_first_frame_s"] > 0, name
        assert 0 < r["denoise_s"] and 0 < r["decode_s"], name
    assert report["variants"]["eager"]["max_abs_error_vs_bf16"] == 0.0
    assert report["variants"]["overlapped decode"]["relative_error_vs_bf16"] < 0.05  # fp8 memory: the window in e4m3
    assert report["variants"]["fp8 GEMM"]["relative_error_vs_bf16"] < 0.1
    print("\n" + gpu_bench.gpu_markdown(report))


# -- a smaller card (issue #18): blocks streamed from host memory, the memory counted, the capped benchmark ----------

SMALL = config_18b() | dict(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=32, text_len=16, image_dim=32,
                            image_tokens=5, audio_channels=16, audio_layers=2, intermediate_dim=16, output_dim=16,
                            context_tokens=4)  # head_dim 128, as released


def test_blocks_streamed_from_pinned_memory_compute_what_resident_ones_do_on_the_gpu():
    """Blocks 1-3 of 4 live in pinned host memory: each computes with its weights on the GPU (copied on a side stream
    while the block before computes), and between calls they are back on the host -- all but the first streamed one,
    already on its way for the next call. A block computing before its copy arrived would be far off."""
    resident_model, model = make_tiny_model(num_layers=4).to("cuda"), make_tiny_model(num_layers=4)
    model.enable_block_offload("cuda", resident=1)
    streamed, on_gpu = model.block_streamer.streamed, []
    for index, block in enumerate(model.blocks[1:]):  # after the streamer's hook: the block has arrived
        block.register_forward_pre_hook(lambda *_, i=index: on_gpu.append(all(t.is_cuda for t in streamed[i].tensors)))
    assert len(streamed) == 3 and all(host.is_pinned() for block in streamed for host in block.host)
    reference = stream_latents(resident_model, chunks=3)
    assert all(relative_error(a, b) < 1e-5 for a, b in zip(stream_latents(model, chunks=3), reference))
    assert len(on_gpu) == 3 * 3 * 3 and all(on_gpu)  # 3 streamed blocks x 3 steps x 3 chunks
    assert [block.on_device for block in streamed] == [True, False, False]
    assert all(not t.is_cuda and t.data_ptr() == host.data_ptr()
               for block in streamed[1:] for t, host in zip(block.tensors, block.host))
    assert all(p.is_cuda for p in model.blocks[0].parameters()) and model.head.head.weight.is_cuda


def test_the_vram_count_of_a_denoising_session_is_within_10_percent_of_its_gpu_peak():
    """What vram.count says a session's denoising holds -- the transformer's weights, the 3 windows, the conditioning
    and a steady chunk's transient peak -- against torch.cuda.max_memory_allocated over a session of 4 chunks (the
    window compressed before the third). The VAE and the encoders are left out: the count's are the released ones, and
    a decode's peak holds cuDNN's workspaces, which the count does not see. A mid-sized config (dim 1024, 8 layers, heads
    of 128 as released) at 256x256, about 0.9 GiB counted: the tiny one's kilobytes would drown in what the count
    leaves out (cuBLAS's workspace, tens of MiB; the allocator's rounding)."""
    from liveact import gpu_bench, vram
    from liveact.stream import StreamingSession
    from liveact.transformer import LiveActTransformer

    config, size, dtype = config_18b() | dict(dim=1024, ffn_dim=4096, num_heads=8, num_layers=8), (256, 256), torch.bfloat16
    y, image, text, features = gpu_bench._stream_inputs(gpu_bench._meta_model(config).config, size, 4, "cuda", dtype)
    gc.collect()
    before = torch.cuda.memory_allocated()  # other tests' leftovers and the inputs (an encoder's outputs, freed)
    with torch.device("cuda"):
        model = LiveActTransformer.from_config(config).to(dtype).eval()
    torch.cuda.reset_peak_memory_stats()  # past the float32 build: from the bf16 weights on
    session = StreamingSession(model, y, image, text, generator=torch.Generator("cuda").manual_seed(0))
    for _ in session.stream(features, 4):
        pass
    peak = torch.cuda.max_memory_allocated() - before
    needs = vram.count(config, size, Options(dtype=dtype))
    counted = needs.transformer + needs.memories + needs.context + vram.peak_activation_bytes(config, size, dtype).call
    print(f"\nmeasured {peak / 2**20:.0f} MiB, counted {counted / 2**20:.0f} MiB ({peak / counted:.3f}x)")
    assert abs(peak / counted - 1) < 0.1


def test_the_low_vram_benchmark_runs_a_small_config_under_a_capped_allocator():
    """`bench --gpu --low-vram`'s CUDA paths -- the allocator capped, the blocks and windows in pinned memory and their
    bytes counted as they cross the bus, the device's memory read -- on a small config, in seconds, before the 18B run
    spends its minutes. The card is one that vram.fit meets by keeping one block of six; the allocator gets 1 GiB more
    than such a card would leave it, since a small card's 10% headroom cannot hold the CUDA context as a 24 GB one's
    does."""
    from liveact import gpu_bench, vram
    from liveact.stream import StreamConfig

    config, size = SMALL | dict(num_layers=6), (64, 64)
    one_kept = Options(device="cuda", dtype=torch.bfloat16, text_encoder_on_cpu=True, fp8_gemm=FP8_GPU,
                       block_offload=True, resident_blocks=1, stream=StreamConfig(fp8_memory=True, offload_memory=True))
    card, limits = (vram.count(config, size, one_kept).total / vram.HEADROOM + 1024) / 2**30, []

    def cap(limit):
        limits.append(limit)
        gpu_bench.cap_allocator("cuda", None if limit is None else limit + 2**30)

    report = gpu_bench.gpu_low_vram((card,), sizes=(size,), chunks=4, device="cuda", config=config,
                                vae_config=dict(base_dim=32), cap=cap, budget_s=None)
    case = report[f"{card:g}"]["64x64"]
    assert case["status"] == "measured", case.get("reason")
    assert limits == [case["allocator_limit_bytes"], None] and case["settings"]["resident_blocks"] == 1
    assert 0 < case["peak_gpu_bytes"] <= case["peak_reserved_bytes"] <= case["allocator_limit_bytes"] + 2**30
    assert case["device_used_bytes"] > 0 and report["_run"]["h2d_bytes_per_s"] > 1e9
    block = vram.transformer_weights(config, torch.bfloat16, FP8_GPU).block
    assert case["streamed_blocks"] == 5 and case["block_bytes_per_chunk"] == 5 * block * 3
    # 3 windows x 6 layers x (12 + 6) slots x 16 tokens x (256 fp8 channels + a float32 scale per head) x K, V
    assert case["window_bytes_per_chunk"] == 3 * 6 * 18 * 16 * (256 + 2 * 4) * 2
    assert case["rtx4090_fps_estimate"] > 0 and case["measured_over_estimated"] > 0
    print("\n" + gpu_bench.low_vram_markdown(report))
