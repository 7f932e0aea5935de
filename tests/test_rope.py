from __future__ import annotations

import torch

from liveact.rope import apply_rope, axis_dims, rope_table


def wan_rope_reference(x: torch.Tensor, first_frame: int, frames: int, h: int, w: int) -> torch.Tensor:
    """Wan2.1's formulation: complex multiplication in float64 by a polar table per axis."""
    head_dim = x.shape[-1]
    half = head_dim // 2
    tables = []
    for dim in axis_dims(head_dim):
        inv = 1.0 / torch.pow(10000, torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        tables.append(torch.polar(torch.ones(1024, dim // 2, dtype=torch.float64), torch.outer(torch.arange(1024), inv)))
    freqs = torch.cat([
        tables[0][first_frame:first_frame + frames].view(frames, 1, 1, -1).expand(frames, h, w, -1),
        tables[1][:h].view(1, h, 1, -1).expand(frames, h, w, -1),
        tables[2][:w].view(1, 1, w, -1).expand(frames, h, w, -1)], dim=-1).reshape(-1, 1, half)
    complex_x = torch.view_as_complex(x.to(torch.float64).reshape(*x.shape[:-1], half, 2))
    return torch.view_as_real(complex_x * freqs).flatten(-2).float()


def test_matches_wan_complex_formulation():
    x = torch.randn(2, 3 * 4 * 5, 2, 24)
    ours = apply_rope(x, rope_table(24, 6, 3, 4, 5))
    assert torch.allclose(ours, wan_rope_reference(x, 6, 3, 4, 5), atol=1e-5)
    assert axis_dims(128) == (44, 42, 42)


def test_scores_depend_only_on_slot_distance():
    # RoPE reset is sound because attention sees relative positions only
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    score = lambda qs, ks: (apply_rope(q, rope_table(16, qs, 1, 1, 1)) * apply_rope(k, rope_table(16, ks, 1, 1, 1))).sum()  # noqa: E731
    assert torch.allclose(score(10, 4), score(6, 0), atol=1e-5)
    assert not torch.allclose(score(10, 4), score(6, 1), atol=1e-3)
