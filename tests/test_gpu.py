"""On a CUDA GPU only (skipped elsewhere, so in CI): the whole pipeline, encoders to decoded frames, on the GPU; and
the fast kernels -- fp8 GEMMs, the attention kernels, the overlapped decode -- each against the plain path.

    pytest tests/test_gpu.py        on a machine with an NVIDIA GPU; needs no weights from the Hub
"""

from __future__ import annotations

import copy

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
    from liveact import bench

    config = config_18b() | dict(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=32, text_len=16, image_dim=32,
                                 image_tokens=5, audio_channels=16, audio_layers=2, intermediate_dim=16, output_dim=16,
                                 context_tokens=4)  # head_dim 128, as released
    attention = bench.compare_attention("cuda", torch.bfloat16, queries=8 * 64, keys=14 * 64, heads=2, head_dim=128)
    assert attention["backends"]["sdpa"]["available"] and attention["backends"]["sdpa"]["relative_error"] < 0.01
    variants = (bench.GpuVariant("eager"), bench.GpuVariant("fp8 GEMM", fp8_gemm=FP8_GPU, attention=attention["chosen"]),
                bench.GpuVariant("overlapped decode", overlap_decode=True, fp8_memory=True))
    report = bench.gpu_speed((64, 64), chunks=4, device="cuda", variants=variants, config=config,
                             vae_config=dict(base_dim=32), attention=attention)
    for name, r in report["variants"].items():
        assert r["peak_gpu_bytes"] > 0 and r["fps"] > 0 and r["time_to_first_frame_s"] > 0, name
        assert 0 < r["denoise_s"] and 0 < r["decode_s"], name
    assert report["variants"]["eager"]["max_abs_error_vs_bf16"] == 0.0
    assert report["variants"]["overlapped decode"]["relative_error_vs_bf16"] < 0.05  # fp8 memory: the window in e4m3
    assert report["variants"]["fp8 GEMM"]["relative_error_vs_bf16"] < 0.1
    print("\n" + bench.gpu_markdown(report))
