"""3-axis rotary position embeddings (Wan2.1) with explicit frame positions.

Each attention head's channels are split into three groups that rotate with the latent
frame index, the row and the column of a token. LiveAct never lets positions grow: the
memory window has 14 fixed frame *slots*, keys are rotated by their slot (0..13) and a
chunk's queries by the slots it occupies (0..5 for the first chunk, 6..13 after). This is
the "RoPE reset" of the paper: after an hour of video the positions are the same as after
two seconds.
"""

from __future__ import annotations

import functools

import torch


def axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels per axis (time, height, width); Wan gives time the remainder."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for rotary embeddings, got {head_dim}")
    spatial = 2 * (head_dim // 6)
    return head_dim - 2 * spatial, spatial, spatial


def _axis_angles(positions: torch.Tensor, dim: int, theta: float) -> torch.Tensor:
    """Rotation angle of each (position, channel pair): [len(positions), dim // 2], float64."""
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    return torch.outer(positions.to(torch.float64), inv_freq)


@functools.lru_cache(maxsize=64)
def _rope_table_cpu(head_dim: int, first_frame: int, frames: int, height: int, width: int,
                    theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    dim_t, dim_h, dim_w = axis_dims(head_dim)
    angles = torch.cat([
        _axis_angles(torch.arange(first_frame, first_frame + frames), dim_t, theta)
        .view(frames, 1, 1, -1).expand(frames, height, width, -1),
        _axis_angles(torch.arange(height), dim_h, theta).view(1, height, 1, -1).expand(frames, height, width, -1),
        _axis_angles(torch.arange(width), dim_w, theta).view(1, 1, width, -1).expand(frames, height, width, -1),
    ], dim=-1).reshape(frames * height * width, 1, head_dim // 2)  # [tokens, 1 (heads), head_dim/2]
    return angles.cos().float(), angles.sin().float()


@functools.lru_cache(maxsize=64)
def _rope_table_on(device: torch.device, *key) -> tuple[torch.Tensor, torch.Tensor]:
    cos, sin = _rope_table_cpu(*key)
    return cos.to(device), sin.to(device)


def rope_table(head_dim: int, first_frame: int, frames: int, height: int, width: int,
               device: torch.device | str = "cpu", theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each [frames*height*width, 1, head_dim/2], for frame slots
    first_frame..first_frame+frames-1 of a height x width token grid (cached)."""
    return _rope_table_on(torch.device(device), head_dim, first_frame, frames, height, width, float(theta))


def apply_rope(x: torch.Tensor, table: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate consecutive channel pairs of x [B, tokens, heads, head_dim] (computed in float32)."""
    cos, sin = table
    pairs = x.float().unflatten(-1, (-1, 2))  # [B, tokens, heads, head_dim/2, 2]
    real, imag = pairs.unbind(-1)
    rotated = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return rotated.flatten(-2).type_as(x)
