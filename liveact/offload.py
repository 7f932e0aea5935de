"""Blocks streamed from host memory: the 18B model on a GPU that cannot hold its 40 blocks.

    model.enable_block_offload("cuda", resident=12)   blocks 0-11 stay on the GPU, 12-39 stream from pinned memory

A streamed block's weights (fp8 buffers included) live in pinned host memory. While block i computes, block i+1's
weights are copied on a side CUDA stream; block i waits only for its own copy, so the copies hide behind compute
where the bus is fast enough, and at most two streamed blocks are on the GPU at once. The last streamed block
prefetches the first for the next call.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn as nn


class _HostBlock:
    """One block's tensors (parameters and buffers, but those in `kept`) and their copies in host memory."""

    def __init__(self, block: nn.Module, device: torch.device, kept: tuple[str, ...] = ()):
        for name in kept:  # read outside the block's own call: they stay on the device
            block.get_submodule(name).to(device)
        on_device = {id(t) for name in kept for t in block.get_submodule(name).parameters()}
        self.tensors = [t for t in (*block.parameters(), *block.buffers()) if id(t) not in on_device]  # buffers: fp8
        pin = device.type == "cuda"  # pinned memory makes the host-to-device copies asynchronous
        self.host = [t.data.cpu().pin_memory() if pin else t.data.cpu().clone() for t in self.tensors]
        self.device = device
        self.arrived: torch.cuda.Event | None = None  # the copy's end, on the copy stream
        self.done: torch.cuda.Event | None = None  # the block's computation's end, on the compute stream
        self.on_device = False
        self.drop()

    def fetch(self, stream: torch.cuda.Stream | None) -> None:
        """Start copying to the device (on `stream` where there is one); `wait` before computing with it."""
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            for tensor, host in zip(self.tensors, self.host):
                tensor.data = host.to(self.device, non_blocking=True, copy=True)  # a copy even on a CPU: testable there
            if stream is not None:
                self.arrived = torch.cuda.Event()
                self.arrived.record(stream)
        self.on_device = True

    def wait(self) -> None:
        """The compute stream waits for the copy; the copies' memory is then this stream's to free."""
        if self.arrived is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(self.arrived)
            for tensor in self.tensors:
                tensor.data.record_stream(compute)

    def drop(self) -> None:
        """Back to the host copies; on a GPU, mark where the compute stream is done with the device ones."""
        if self.on_device and self.device.type == "cuda":
            self.done = torch.cuda.Event()
            self.done.record(torch.cuda.current_stream(self.device))
        for tensor, host in zip(self.tensors, self.host):
            tensor.data = host
        self.on_device, self.arrived = False, None

    def settle(self) -> None:
        """Wait until the GPU has finished with this block's device copies, so their memory is free again: the
        host may not run ahead queueing copies of ever more blocks (each would hold memory the count never sees)."""
        if self.done is not None:
            self.done.synchronize()
            self.done = None


class BlockStreamer:
    """Keeps the first `resident` blocks on `device` and streams the others, each prefetched by its predecessor."""

    def __init__(self, blocks: nn.ModuleList, device: torch.device | str, resident: int = 0, kept: tuple[str, ...] = ()):
        """`kept`: submodules of every block that stay on the device (the model reads them outside the blocks)."""
        self.device = torch.device(device)
        for block in blocks[:resident]:
            block.to(self.device)
        self.streamed = [_HostBlock(block, self.device, kept) for block in blocks[resident:]]
        self.copies = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        for index, block in enumerate(blocks[resident:]):
            block.register_forward_pre_hook(lambda *_, i=index: self._arrive(i))
            block.register_forward_hook(lambda *_, i=index: self.streamed[i].drop())

    @property
    def host_bytes(self) -> int:
        return sum(h.numel() * h.element_size() for block in self.streamed for h in block.host)

    def _arrive(self, index: int) -> None:
        block = self.streamed[index]
        if not block.on_device:  # the first call, or a block nobody prefetched
            block.fetch(self.copies)
        block.wait()
        following = self.streamed[(index + 1) % len(self.streamed)]
        if not following.on_device:
            self.streamed[index - 1].settle()  # at most this block and the next one on the device
            following.fetch(self.copies)  # copies while this block computes
