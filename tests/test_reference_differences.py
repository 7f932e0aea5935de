"""The two measured differences from the reference (liveact/reference_differences.py), on small inputs:
liveact's persistent-cache streamed decode equals the whole decode while the reference's overlap re-decode does
not, and the reference's 2-GPU memory fold (simulated here op by op, rank by rank) is not its 1-GPU fold."""

from __future__ import annotations

import pytest
import torch

from conftest import SHARED
from liveact import reference_differences as rd
from liveact import release
from liveact.memory import MemoryLayout, fold_history

FIXTURES = SHARED / "fixtures"
pytestmark = pytest.mark.skipif(not FIXTURES.exists(), reason=f"no shared fixtures at {FIXTURES}")


def reference_fold(window: torch.Tensor, conv: torch.nn.Conv1d, tokens: int, world: int) -> torch.Tensor:
    """The reference's update_cache ops on a window [B, 14*tokens, heads, hd] -> slots 0..5 after the fold:
    model_memory.py on 1 GPU; model_memory_sp.py on 2 (each rank's cache: its 3 history + 4 chunk slots)."""
    def compress(x):  # k_compress: Conv1d over the flattened token axis
        b, n, h, d = x.shape
        return conv(x.reshape(b, n, h * d).transpose(1, 2)).transpose(1, 2).reshape(b, n // 5, h, d)

    T = tokens
    if world == 1:
        k = window.clone()
        k[:, 2 * T:3 * T] = compress(k[:, 2 * T:7 * T])
        k[:, 3 * T:4 * T] = compress(k[:, 7 * T:12 * T])
        k[:, 4 * T:6 * T] = k[:, 12 * T:14 * T]
        return k[:, :6 * T]
    slots = window.unflatten(1, (14, T))
    rank0, rank1 = (slots[:, list(r)].flatten(1, 2).clone() for r in ((0, 1, 2, 6, 7, 8, 9), (3, 4, 5, 10, 11, 12, 13)))
    rank1[:, :T] = compress(rank1[:, :5 * T])  # sp_rank == 1
    rank1[:, T:3 * T] = rank1[:, 5 * T:7 * T]
    rank0[:, 2 * T:3 * T] = compress(rank0[:, 2 * T:7 * T])  # sp_rank == 0
    return torch.cat([rank0[:, :3 * T], rank1[:, :3 * T]], dim=1)  # RoPE slots 0..2 on rank 0, 3..5 on rank 1


def test_two_gpu_fold_is_the_references_and_differs_from_one_gpu():
    torch.manual_seed(0)
    tokens, heads, hd = 16, 2, 4  # 16 tokens per frame: 5-token groups straddle frames, as in the fixtures
    conv = torch.nn.Conv1d(heads * hd, heads * hd, 5, stride=5, groups=heads * hd, bias=False)
    window = torch.randn(1, 14 * tokens, heads, hd)
    with torch.no_grad():
        ours = torch.cat([window[:, :2 * tokens], rd.two_gpu_fold(window[:, 2 * tokens:], conv.weight, tokens)], dim=1)
        one = torch.cat([window[:, :2 * tokens], fold_history(window[:, 2 * tokens:], conv.weight, MemoryLayout(),
                                                              tokens, "conv")], dim=1)
        torch.testing.assert_close(ours, reference_fold(window, conv, tokens, world=2))
        torch.testing.assert_close(one, reference_fold(window, conv, tokens, world=1))
    assert torch.equal(ours[:, 4 * tokens:], one[:, 4 * tokens:])  # the recent slots agree ...
    assert (ours[:, 2 * tokens:4 * tokens] - one[:, 2 * tokens:4 * tokens]).abs().max() > 0.1  # ... compressed don't


def test_overlap_decode_differs_where_the_persistent_cache_does_not():
    vae = release.load_vae(FIXTURES / "release" / "Wan2.1_VAE.pth")
    latents = torch.randn(1, 16, 14, 2, 2, generator=torch.Generator().manual_seed(0))  # 16x16 video: seconds
    r = rd.compare_decodes(vae, latents, rd.chunk_sizes(2))
    assert r["streamed_vs_whole"] < 1e-5 and r["chunk0_max"] < 1e-5
    assert r["boundary_max"] > 1e-3 and r["boundary_mean"] > 1e-5
    assert r["latent_ratio"] == pytest.approx((6 + 11) / 14) and r["video_ratio"] == pytest.approx((21 + 41) / 53)


def test_fold_changes_the_replayed_fixture_from_chunk_2():
    r = rd.measure_fold(FIXTURES / "reference" / "conv", chunks=3)
    assert r["parity"] < 1e-4 and r["early"] == 0.0  # 1-GPU replay = the reference; chunks 0-1 untouched
    assert r["keys"]["mean"] > 1e-3 * r["keys"]["ref_mean"]
    assert r["chunks"][2]["pred"]["max"] > 1e-4 and r["chunks"][2]["final"]["max"] > 1e-4
