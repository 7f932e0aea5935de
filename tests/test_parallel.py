"""Sequence parallelism over 2 CPU processes (gloo) computes what one process computes."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import make_tiny_model, stream_latents
from liveact.parallel import SequenceParallel
from liveact.stream import StreamConfig

CONFIG = StreamConfig(audio_guidance=1.5)  # null-audio memories and compression included
CHUNKS = 4


def stream(parallel=None) -> list[torch.Tensor]:
    return stream_latents(make_tiny_model(), seed=1, chunks=CHUNKS, config=CONFIG, parallel=parallel)


def _rank(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        latents = stream(SequenceParallel(rank, world))
        torch.save(latents, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one(tmp_path):
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), str(tmp_path / "latents")), nprocs=2, join=True)
    single = stream()
    for rank in range(2):
        split = torch.load(tmp_path / f"latents.{rank}")
        errors = [(a - b).abs().max().item() for a, b in zip(split, single)]
        print(f"rank {rank}: max abs difference to 1 process per chunk {errors}")
        assert max(errors) < 1e-5


def test_frames_must_split_evenly():
    with pytest.raises(ValueError, match="cannot be split over 4 ranks"):
        SequenceParallel(0, 4).frames(6)
