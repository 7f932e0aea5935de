"""fp8 GEMMs' scaling math (on the CPU, the same quantised values a GPU multiplies) and the model's own kernels."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from conftest import make_tiny_model, stream_latents
from liveact.hub import LiveActError
from liveact.kernels import Fp8Linear
from liveact.pipeline import Options, load


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def test_an_fp8_linear_is_close_to_its_linear_and_not_equal():
    torch.manual_seed(0)
    linear = nn.Linear(256, 128)
    x = torch.randn(4, 50, 256)
    exact, fp8 = linear(x), Fp8Linear(linear)(x)
    assert fp8.shape == exact.shape and fp8.dtype == exact.dtype
    assert 1e-4 < relative_error(fp8, exact) < 0.05  # e4m3 keeps 3 mantissa bits: a few % per product, averaged


def test_an_fp8_linear_keeps_its_fp8_weight_and_float32_scales_through_a_cast():
    layer = Fp8Linear(nn.Linear(32, 16))
    weight, scale = layer.weight.clone(), layer.weight_scale.clone()
    layer.to(torch.bfloat16)
    assert layer.bias.dtype == torch.bfloat16
    assert layer.weight.dtype == torch.float8_e4m3fn and torch.equal(layer.weight.float(), weight.float())
    assert layer.weight_scale.dtype == torch.float32 and torch.equal(layer.weight_scale, scale)


def test_per_row_scales_keep_small_rows_when_one_row_is_huge():
    """One token 1e5 times larger than the rest: a per-tensor scale would flush the others to zero."""
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    x = torch.randn(8, 64)
    x[0] *= 1e5
    exact, fp8 = linear(x), Fp8Linear(linear)(x)
    assert all(relative_error(fp8[row], exact[row]) < 0.05 for row in range(8))


def test_the_model_in_fp8_keeps_embeddings_head_and_norms():
    model = make_tiny_model()
    reference = stream_latents(model, chunks=2)
    model.enable_fp8_gemm()
    linears = [m for block in model.blocks for m in block.modules() if isinstance(m, (nn.Linear, Fp8Linear))]
    assert linears and all(isinstance(m, Fp8Linear) for m in linears)
    assert isinstance(model.head.head, nn.Linear) and isinstance(model.text_embedding[0], nn.Linear)
    latents = stream_latents(model, chunks=2)
    assert all(0 < relative_error(a, b) < 0.1 for a, b in zip(latents, reference))


def test_fp8_gemm_on_a_gpu_without_fp8_is_refused_in_one_sentence(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(LiveActError) as error:
        load("tiny", device="cuda", options=Options(fp8_gemm=True))
    message = str(error.value)
    assert "A100" in message and "--fp8-gemm" in message and message.count(". ") == 0
