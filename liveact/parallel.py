"""Sequence parallelism (Ulysses) over torch.distributed: one chunk split across GPUs by latent frames.

Every rank holds `frames / world` latent frames of the chunk (whole frames, so the per-frame audio
cross-attention stays local). Only self-attention needs the whole sequence: an all-to-all turns
"my frames, all heads" into "all frames, my heads" before attention and back after it. So each rank
keeps the ConvKV memory of *its heads* over the whole window, and compresses it with its slice of the
depthwise filters -- exactly the 1-GPU computation, split by channels (the reference's own 2-GPU variant
compresses different groups and does not equal its 1-GPU path; ours does, and a test holds it to that).

Run with `torchrun --nproc-per-node 2 -m liveact generate ...` (nccl on GPUs, gloo on CPUs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class SequenceParallel:
    rank: int
    world: int
    group: dist.ProcessGroup | None = None

    @classmethod
    def from_env(cls, device: torch.device | str = "cpu", timeout: float | None = None) -> "SequenceParallel | None":
        """Join the torchrun process group if WORLD_SIZE > 1 (initialising it when needed), else None. `timeout`:
        seconds a collective waits for the other ranks before it raises (None: torch's default, 30 min on gloo)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return None
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.device(device).type == "cuda" else "gloo")
        # a group of its own: the rendezvous above keeps torch's patience for ranks that are still starting
        group = None if timeout is None else dist.new_group(timeout=timedelta(seconds=timeout))
        return cls(dist.get_rank(), dist.get_world_size(), group)

    def frames(self, total: int) -> slice:
        """This rank's latent frames of a chunk of `total` frames."""
        if total % self.world:
            raise ValueError(f"a chunk of {total} latent frames cannot be split over {self.world} ranks; "
                             f"use a world size that divides 6 and 8 (1 or 2)")
        per_rank = total // self.world
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def heads(self, total: int) -> slice:
        """This rank's attention heads."""
        if total % self.world:
            raise ValueError(f"{total} attention heads cannot be split over {self.world} ranks")
        per_rank = total // self.world
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def sequence_to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, tokens/world, heads, D] (my frames) -> [B, tokens, heads/world, D] (my heads)."""
        batch, tokens, heads, dim = x.shape
        send = x.reshape(batch, tokens, self.world, heads // self.world, dim).permute(2, 0, 1, 3, 4).contiguous()
        received = torch.empty_like(send)  # [source rank, B, tokens/world, heads/world, D]
        dist.all_to_all_single(received, send, group=self.group)
        return received.permute(1, 0, 2, 3, 4).reshape(batch, self.world * tokens, heads // self.world, dim)

    def heads_to_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """[B, tokens, heads/world, D] (my heads) -> [B, tokens/world, heads, D] (my frames)."""
        batch, tokens, heads, dim = x.shape
        send = x.reshape(batch, self.world, tokens // self.world, heads, dim).transpose(0, 1).contiguous()
        received = torch.empty_like(send)  # [source rank (head group), B, tokens/world, heads/world, D]
        dist.all_to_all_single(received, send, group=self.group)
        return received.permute(1, 2, 0, 3, 4).reshape(batch, tokens // self.world, self.world * heads, dim)

    def gather_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """[B, tokens/world, C] from every rank -> [B, tokens, C] in frame order."""
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=1)

    def broadcast(self, x: torch.Tensor) -> torch.Tensor:
        """Rank 0's tensor on every rank (so all ranks denoise the same noise)."""
        dist.broadcast(x, src=0, group=self.group)
        return x
