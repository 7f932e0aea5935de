from __future__ import annotations

import pytest
import torch

from conftest import make_conditioning, make_tiny_model
from liveact.memory import ConvKVMemory, MemoryLayout, quantize_fp8
from liveact.stream import StreamConfig, StreamingSession

T = 4  # tokens per frame: not a multiple of 5, so merged groups straddle frames


def filled_memory(**options) -> tuple[ConvKVMemory, torch.Tensor, torch.Tensor]:
    """A one-layer memory whose 14 slots hold distinct known values (as after chunks 0 and 1)."""
    memory = ConvKVMemory(1, T, 2, 3, **options)
    keys = torch.arange(14 * T * 6, dtype=torch.float32).view(1, 14 * T, 2, 3)
    values = -keys
    memory.attend_window(0, 0, keys[:, :6 * T], values[:, :6 * T])
    memory.attend_window(0, 6, keys[:, 6 * T:], values[:, 6 * T:])
    return memory, keys, values


def test_layout_of_the_paper():
    layout = MemoryLayout()
    assert (layout.window, layout.first_chunk, layout.chunk_slot) == (14, 6, 6)
    with pytest.raises(ValueError, match="inconsistent layout"):
        MemoryLayout(compressed=2, chunk=6)


def test_mean_compression_merges_consecutive_tokens_of_the_flattened_slots():
    memory, keys, values = filled_memory(compression="mean")
    memory.compress_and_shift()
    window, _ = memory._load(0, 0, 6)
    tokens = keys[0]  # [14*T, heads, head_dim]
    expected = torch.cat([
        tokens[:2 * T],  # sink: untouched
        tokens[2 * T:7 * T].view(T, 5, 2, 3).mean(1),  # slot 2 <- slots 2..6, 5 consecutive tokens at a time
        tokens[7 * T:12 * T].view(T, 5, 2, 3).mean(1),  # slot 3 <- slots 7..11
        tokens[12 * T:14 * T],  # slots 4..5 <- 12..13
    ])
    assert torch.equal(window[0], expected)


@pytest.mark.parametrize("value_filter", ["key", "value"])
def test_conv_compression_uses_the_chosen_value_filter(value_filter):
    memory, keys, values = filled_memory(value_filter=value_filter)
    dim = 6
    k_filter = torch.rand(dim, 1, 5)
    v_filter = torch.rand(dim, 1, 5)
    memory.compress_and_shift([(k_filter, v_filter)])
    new_keys, new_values = memory._load(0, 2, 3)

    def conv(x, f):  # slots 2..6 as [dim, 5*T], merged by the depthwise filter
        x = x[0, 2 * T:7 * T].reshape(5 * T, dim).T
        return torch.einsum("ctk,ck->tc", x.view(dim, T, 5), f[:, 0]).reshape(1, T, 2, 3)

    assert torch.allclose(new_keys, conv(keys, k_filter))
    expected_filter = k_filter if value_filter == "key" else v_filter
    assert torch.allclose(new_values, conv(values, expected_filter))


def test_compress_requires_filters_for_conv():
    memory, _, _ = filled_memory()
    with pytest.raises(ValueError, match="one \\(key, value\\) filter pair per layer"):
        memory.compress_and_shift()


def test_overflowing_the_window_is_an_error():
    memory = ConvKVMemory(1, T, 2, 3)
    with pytest.raises(ValueError, match="overflows"):
        memory.attend_window(0, 8, torch.zeros(1, 8 * T, 2, 3), torch.zeros(1, 8 * T, 2, 3))


def test_fp8_round_trip_error_bound():
    torch.manual_seed(0)
    x = torch.randn(2, 64, 4, 16) * torch.logspace(-3, 3, 64).view(1, 64, 1, 1)  # wide dynamic range
    quantized, scale = quantize_fp8(x)
    assert quantized.dtype == torch.float8_e4m3fn and quantized.element_size() == 1
    restored = quantized.float() * scale
    # e4m3 keeps 3 mantissa bits: relative error <= 2^-4 of each vector's max (round to nearest)
    bound = x.abs().amax(-1, keepdim=True) * 2.0**-4
    assert ((restored - x).abs() <= bound).all()
    relative = ((restored - x).norm() / x.norm()).item()
    assert relative < 0.05


@pytest.mark.parametrize("options", [dict(fp8=True), dict(offload=True), dict(fp8=True, offload=True)])
def test_stored_variants_attend_like_the_direct_memory(options):
    torch.manual_seed(0)
    filters = [(torch.rand(6, 1, 5), torch.rand(6, 1, 5))]
    direct, keys, _ = filled_memory()
    stored, _, _ = filled_memory(**options)
    for memory in (direct, stored):
        memory.compress_and_shift(filters)
    fresh_k, fresh_v = torch.randn(1, 8 * T, 2, 3), torch.randn(1, 8 * T, 2, 3)
    (dk, dv), (sk, sv) = (m.attend_window(0, 6, fresh_k, fresh_v) for m in (direct, stored))
    for ours, exact in ((sk, dk), (sv, dv)):
        # fp8: each stored vector within 2 roundings (stored, then merged and stored again) of its max
        tolerance = 2 * 2.0**-4 * exact.abs().amax(-1, keepdim=True) if options.get("fp8") else 1e-6
        assert ((ours - exact).abs() <= tolerance).all()
    # the chunk's own fresh keys/values are exact, whatever the storage
    assert torch.equal(sk[:, 6 * T:], fresh_k) and torch.equal(sv[:, 6 * T:], fresh_v)


def test_fp8_storage_costs_about_half_of_bf16():
    # the 18B geometry (40 layers, head_dim 128), with few tokens
    shape = dict(num_layers=40, tokens_per_frame=4, num_heads=2, head_dim=128, dtype=torch.bfloat16)
    bf16, fp8 = ConvKVMemory(**shape), ConvKVMemory(**shape, fp8=True)
    # 1 byte per value + a float32 scale per 128 values, plus one layer of bf16 workspace
    assert fp8.nbytes == pytest.approx(bf16.nbytes * ((1 + 4 / 128) / 2 + 1 / 40))
    assert fp8.nbytes < 0.55 * bf16.nbytes


@pytest.mark.parametrize("compression", ["conv", "mean"])
def test_memory_is_constant_over_50_chunks(compression):
    model = make_tiny_model()
    y, image, text, audio = make_conditioning(model, video_frames=21 + 49 * 32)
    session = StreamingSession(model, y, image, text, config=StreamConfig(compression=compression),
                               generator=torch.Generator().manual_seed(0))
    storage = [(m.keys.data_ptr(), m.values.data_ptr()) for m in session.memories]
    sizes = [chunk.memory_bytes for chunk in session.stream(audio, num_chunks=50)]
    assert len(sizes) == 50
    assert len(set(sizes[2:])) == 1, f"memory bytes changed after chunk 2: {sorted(set(sizes))}"
    assert sizes[0] == sizes[2]  # allocated once, up front
    assert storage == [(m.keys.data_ptr(), m.values.data_ptr()) for m in session.memories], "storage was reallocated"
    # and the window is what it says: 3 steps x layers x (K, V) x 14 frames x tokens x dim x 4 bytes
    cfg = model.config
    assert sizes[0] == 3 * cfg.num_layers * 2 * 14 * T * cfg.dim * 4
