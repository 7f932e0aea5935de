"""One worker process per GPU for a server: every session runs on all of them at once (sequence parallelism).

The server's own process is rank 0: it takes the requests, decodes and streams. Ranks 1.. are helpers
started with torch.multiprocessing; each joins the process group, loads the same model, and mirrors every
call rank 0 makes on a live session -- start, feed, finish, next chunk, end -- in the same order, so the
all-to-alls inside the transformer meet. The same code runs on CPUs with gloo, which is how it is tested.

    pool = WorkerPool("liveact-18b", world=2)       # blocks until every rank has loaded the model
    live = pool.start(portrait, prompt, seed)        # a LiveSession's interface, mirrored on the helpers
    pool.close()
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .pipeline import LiveActPipeline, LiveSession, VideoChunk, load
from .serve import release_free_memory

READY_TIMEOUT = 900  # seconds for a helper to load the model (the 18B weights from disk)


def free_port() -> int:
    """A TCP port on localhost nobody listens on now (for the rendezvous, or a test server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _rank_environment(rank: int, world: int, port: int):
    """The variables torch.distributed's env:// rendezvous reads, for as long as the pipeline loads."""
    values = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world), "RANK": str(rank),
              "LOCAL_RANK": str(rank)}
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:  # later loads in this process must not think they are part of the group
        for name, value in saved.items():
            os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)


def _helper(rank: int, world: int, port: int, model: str, load_kwargs: dict, inbox, outbox) -> None:
    """Rank >= 1: load the model, then mirror rank 0's session calls until told to quit."""
    torch.set_num_threads(1)
    try:
        with _rank_environment(rank, world, port):
            pipe = load(model, **load_kwargs)
    except Exception as error:  # noqa: BLE001 -- reported to rank 0, which says it in one sentence
        outbox.put(("error", rank, f"{type(error).__name__}: {error}"))
        return
    outbox.put(("ready", rank, ""))
    live = None
    while True:
        command, args, kwargs = inbox.get()
        if command == "start":
            live = pipe.start(*args, **kwargs)
        elif command == "feed":
            live.feed(*args)
        elif command == "finish":
            live.finish()
        elif command == "chunk":
            live.next_chunk(decode=False)  # denoise only: rank 0 decodes and streams
        elif command == "end":
            live = None
            release_free_memory()  # as rank 0 does when its session ends
        elif command == "quit":
            break
    dist.destroy_process_group()


class WorkerPool:
    """Rank 0 of `world` processes that run one session at a time together."""

    def __init__(self, model: str, world: int, **load_kwargs):
        """`load_kwargs` go to `liveact.load` on every rank (device, wav2vec, ...)."""
        context = mp.get_context("spawn")
        port = free_port()
        self.inboxes = [context.Queue() for _ in range(world - 1)]
        replies = context.Queue()
        self.helpers = [context.Process(target=_helper, args=(rank, world, port, model, load_kwargs, inbox, replies),
                                        daemon=True) for rank, inbox in enumerate(self.inboxes, 1)]
        for helper in self.helpers:
            helper.start()
        try:
            with _rank_environment(0, world, port):
                self.pipe: LiveActPipeline = load(model, **load_kwargs)  # the rendezvous waits for every helper
        except Exception:
            self.close()
            raise
        for _ in self.helpers:
            status, rank, message = replies.get(timeout=READY_TIMEOUT)
            if status == "error":
                self.close()
                raise RuntimeError(f"worker {rank} could not load {model}: {message}")

    def _send(self, command: str, *args, **kwargs) -> None:
        for inbox in self.inboxes:
            inbox.put((command, args, kwargs))

    def start(self, *args, **kwargs) -> "MirroredSession":
        """`LiveActPipeline.start` on every rank."""
        self._send("start", *args, **kwargs)
        return MirroredSession(self, self.pipe.start(*args, **kwargs))

    def close(self) -> None:
        self._send("quit")
        for helper in self.helpers:
            helper.join(timeout=30)
            if helper.is_alive():
                helper.kill()
        if dist.is_initialized():
            dist.destroy_process_group()


class MirroredSession:
    """A LiveSession on rank 0 whose every call is first sent to the helpers (the interface Broadcast uses)."""

    def __init__(self, pool: WorkerPool, live: LiveSession):
        self.pool, self.live, self.pipe = pool, live, live.pipe

    def feed(self, samples, sample_rate: int = 16000) -> None:
        self.pool._send("feed", samples, sample_rate)
        self.live.feed(samples, sample_rate)

    def finish(self) -> None:
        self.pool._send("finish")
        self.live.finish()

    @property
    def done(self) -> bool:
        return self.live.done

    def chunks(self) -> Iterator[VideoChunk]:
        while self.live.ready:
            self.pool._send("chunk")  # the helpers join this chunk's collectives
            yield self.live.next_chunk()

    def close(self) -> None:
        self.pool._send("end")
