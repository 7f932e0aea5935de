"""One worker process per GPU for a server: every session runs on all of them at once (sequence parallelism).

The server's own process is rank 0: it takes the requests, decodes and streams. Ranks 1.. are helpers
started with torch.multiprocessing; each joins the process group, loads the same model, says "ready", and
mirrors every call rank 0 makes on a live session -- start, feed, finish, next chunk, end -- in the same order,
so the all-to-alls inside the transformer meet. The same code runs on CPUs with gloo, which is how it is tested.

A failing rank stops no one for long. A helper sends its exception back to rank 0 as one sentence and exits;
a collective whose peer died raises at once, one whose peer hangs after `chunk_timeout` seconds; a helper
whose rank 0 is gone exits. Rank 0 then ends the session with a `WorkerError` naming the worker and why, stops
every helper (they are out of step), and the next session starts fresh ones on a new rendezvous port: they
load the model again, rank 0 joins them with the model it has.

    pool = WorkerPool("liveact-18b", world=2)       # blocks until every rank has loaded the model
    live = pool.start(portrait, prompt, seed)        # a LiveSession's interface, mirrored on the helpers
    pool.close()
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import time
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .hub import LiveActError
from .inputs import LiveActInputError
from .parallel import SequenceParallel
from .pipeline import LiveActPipeline, LiveSession, VideoChunk, load
from .serve import release_free_memory

READY_TIMEOUT = 900  # seconds for a helper to load the model (the 18B weights from disk)
CHUNK_TIMEOUT = 60.0  # seconds a rank waits in a collective for the others: beyond a compiling chunk (22.6 s on
# one H200) and a helper's session start with the text encoder on the CPU, which rank 0's first chunk waits for
QUIT_TIMEOUT = 30  # seconds a helper has to leave the group when the pool closes, before it is killed
CAUSE_WAIT = 1.0  # seconds rank 0 waits, after its chunk failed, for a helper's own exception or death


class WorkerError(LiveActError):
    """A worker process failed or stopped answering: its session ended (the next one starts fresh helpers)."""


def free_port() -> int:
    """A TCP port on localhost nobody listens on now (for the rendezvous, or a test server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _rank_environment(rank: int, world: int, port: int):
    """The variables torch.distributed's env:// rendezvous reads, for as long as the rank joins."""
    values = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world), "RANK": str(rank),
              "LOCAL_RANK": str(rank)}
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:  # later loads in this process must not think they are part of the group
        for name, value in saved.items():
            os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)


def _sentence(error: BaseException) -> str:
    """An exception as a short clause: its type and first sentence (without gloo's source location)."""
    lines = str(error).strip().splitlines() or [""]
    first = re.split(r"(?<=\.)\s", re.sub(r"^\[[^\]]*\]\s*", "", lines[0]))[0]
    return f"{type(error).__name__}: {first.rstrip('.')}" if first else type(error).__name__


def _ended(exitcode: int) -> str:
    """How a helper's process ended, in words."""
    return f"its process was killed by {signal.Signals(-exitcode).name}" if exitcode < 0 else \
        f"its process exited with code {exitcode}"


def _helper(rank: int, world: int, port: int, model: str, load_kwargs: dict, inbox, outbox) -> None:
    """Rank >= 1: load the model, then mirror rank 0's session calls until told to quit. An exception goes to
    rank 0 as ("error", rank, sentence) and ends the process: rank 0 starts a fresh one."""
    torch.set_num_threads(1)
    try:
        with _rank_environment(rank, world, port):
            pipe = load(model, **load_kwargs)
        outbox.put(("ready", rank, ""))
        _mirror(pipe, inbox)
    except Exception as error:  # noqa: BLE001 -- reported to rank 0, which says it in one sentence
        outbox.put(("error", rank, _sentence(error)))
        return
    dist.destroy_process_group()


def _mirror(pipe: LiveActPipeline, inbox) -> None:
    """Make rank 0's session calls on this rank, in its order, until "quit"."""
    live = None
    while True:
        command, args, kwargs = _command(inbox)
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
            return


def _command(inbox) -> tuple[str, tuple, dict]:
    """The next call from rank 0; "quit" once rank 0's process is gone (a killed server leaves no helper behind)."""
    while True:
        try:
            return inbox.get(timeout=1)
        except queue.Empty:
            if not mp.parent_process().is_alive():
                return "quit", (), {}


class WorkerPool:
    """Rank 0 of `world` processes that run one session at a time together; a session that fails on any rank
    raises a WorkerError, and the next one starts on fresh helpers."""

    def __init__(self, model: str, world: int, chunk_timeout: float = CHUNK_TIMEOUT, **load_kwargs):
        """`load_kwargs` go to `liveact.load` on every rank (device, wav2vec, ...). `chunk_timeout`: seconds a rank
        waits in a collective for the others before the session fails (a helper that died is noticed at once)."""
        self.model, self.world, self.chunk_timeout = model, world, chunk_timeout
        self.load_kwargs = {**load_kwargs, "collective_timeout": chunk_timeout, "warm_up": False}  # see _warm_up
        self.session: MirroredSession | None = None  # the one the helpers follow
        self._spawn()
        try:
            with _rank_environment(0, world, self.port):
                self.pipe: LiveActPipeline = load(model, **self.load_kwargs)  # the rendezvous waits for every helper
            self._wait_ready()
            self._warm_up()
        except Exception:
            self._stop(wait=0)
            raise

    def _warm_up(self) -> None:
        """With --compile: every rank compiles the chunk shapes together, through the pool, once all have loaded (a
        rank warming up alone would wait in a collective for helpers still reading the weights)."""
        if self.pipe.options.compile:
            self.pipe.warmed_sizes.clear()
            self.pipe.warm_up(start=self.start)

    def _spawn(self) -> None:
        """Start the helpers on a fresh rendezvous port, with fresh queues (a killed helper may leave one locked)."""
        context = mp.get_context("spawn")
        self.port = free_port()
        self.inboxes = [context.Queue() for _ in range(self.world - 1)]
        self.replies = context.Queue()
        self.helpers = [context.Process(target=_helper, daemon=True, args=(
            rank, self.world, self.port, self.model, self.load_kwargs, inbox, self.replies))
            for rank, inbox in enumerate(self.inboxes, 1)]
        for helper in self.helpers:
            helper.start()

    def _wait_ready(self) -> None:
        """Block until every helper has loaded the model; one that fails or dies meanwhile is a WorkerError."""
        for _ in self.helpers:
            reply = self._reply(READY_TIMEOUT)
            if reply is None:
                raise WorkerError(f"the workers did not load {self.model} within {READY_TIMEOUT} s.")
            status, rank, message = reply
            if status == "error":
                raise WorkerError(f"worker {rank} could not load {self.model}: {message}.")

    def _reply(self, timeout: float) -> tuple[str, int, str] | None:
        """The next (status, rank, message) from the helpers -- ("error", rank, how it ended) for one that died
        without a word -- or None when `timeout` seconds pass without either."""
        deadline = time.monotonic() + timeout
        while True:
            dead = [(rank, helper.exitcode) for rank, helper in enumerate(self.helpers, 1) if not helper.is_alive()]
            try:  # read after looking for the dead: what a helper said before it died comes first
                return self.replies.get(timeout=0.1)
            except queue.Empty:
                if dead:
                    return "error", dead[0][0], _ended(dead[0][1])
                if time.monotonic() > deadline:
                    return None

    def _send(self, command: str, *args, **kwargs) -> None:
        for inbox in self.inboxes:
            inbox.put((command, args, kwargs))

    def start(self, *args, **kwargs) -> "MirroredSession":
        """`LiveActPipeline.start` on every rank, after replacing helpers that failed or died."""
        if not self.helpers or not all(helper.is_alive() for helper in self.helpers):
            self._restart()
        live = self.pipe.start(*args, **kwargs)  # rank 0 first: an input it refuses never reaches the helpers
        self._send("start", *args, **kwargs)
        self.session = MirroredSession(self, live)
        return self.session

    def _restart(self) -> None:
        """Fresh helpers, which load the model; rank 0 joins their new process group with the model it has."""
        self._stop(wait=0)
        self._spawn()
        try:
            with _rank_environment(0, self.world, self.port):
                self.pipe.parallel = SequenceParallel.from_env(self.pipe.options.device, self.chunk_timeout)
            self._wait_ready()
            self._warm_up()
        except Exception:
            self._stop(wait=0)  # the next session tries again
            raise

    def _fail(self, error: Exception) -> Exception:
        """What to raise when rank 0's chunk failed. The helpers are out of step with it, so all are stopped; the
        error names the worker that stopped first (a helper's own exception or death is the cause, rank 0's
        error only its symptom), in one sentence."""
        reply = self._reply(CAUSE_WAIT)
        self.session = None
        self._stop(wait=0)
        if isinstance(error, (LiveActError, LiveActInputError)):
            return error  # already a sentence for the visitor (e.g. no speech left), met by every rank
        rank, reason = (reply[1], reply[2]) if reply is not None else (0, _sentence(error))
        return WorkerError(f"worker {rank} stopped: {reason}; the session ended, start it again.")

    def _stop(self, wait: float) -> None:
        """End the helpers (killed after `wait` seconds) and leave the process group."""
        self._send("quit")
        for helper in self.helpers:
            helper.join(timeout=wait)
            if helper.is_alive():
                helper.kill()
                helper.join()
        for inbox in self.inboxes:  # what a dead helper never read must not hold up this process's exit
            inbox.cancel_join_thread()
        self.helpers, self.inboxes = [], []
        if dist.is_initialized():
            dist.destroy_process_group()

    def close(self) -> None:
        self._stop(wait=QUIT_TIMEOUT)


class MirroredSession:
    """A LiveSession on rank 0 whose every call is also sent to the helpers (the interface Broadcast uses)."""

    def __init__(self, pool: WorkerPool, live: LiveSession):
        self.pool, self.live, self.pipe = pool, live, live.pipe

    def feed(self, samples, sample_rate: int = 16000) -> None:
        self.live.feed(samples, sample_rate)  # rank 0 first: speech it refuses never reaches the helpers
        self.pool._send("feed", samples, sample_rate)

    def finish(self) -> None:
        self.live.finish()
        self.pool._send("finish")

    @property
    def done(self) -> bool:
        return self.live.done

    def chunks(self) -> Iterator[VideoChunk]:
        """Rank 0's chunks; a failure on any rank ends them with one sentence (see `WorkerPool._fail`)."""
        try:  # before each chunk the helpers are told to join its collectives
            yield from self.live.chunks(before_each=lambda: self.pool._send("chunk"))
        except Exception as error:
            raise self.pool._fail(error) from error

    def close(self) -> None:
        """End the session on the helpers, unless a later session (or a failure) already replaced it there."""
        if self.pool.session is self:
            self.pool.session = None
            self.pool._send("end")
