"""The app's multi-GPU pool on CPUs (gloo): a helper that dies, hangs or raises mid-session ends that session with
one sentence within seconds, and the next session through the same pool streams what one process streams."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from liveact.synthetic import SAMPLE_RATE, portrait, speech
from liveact.workers import WorkerError, WorkerPool

SEED = 7_000_031
VOICE = speech(3.0, SEED)  # three chunks of the tiny model
CHUNK_TIMEOUT = 3.0  # a hung helper is given up on after this (the tiny model's chunks take well under a second)


def within(seconds: float, run):
    """run() on a thread of its own: its result or exception, or a failure after `seconds` (a hang fails the test
    instead of stalling the suite)."""
    outcome = {}

    def target():
        try:
            outcome["value"] = run()
        except BaseException as error:  # noqa: BLE001 -- raised again on the test's thread
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"still running after {seconds} s: something waits forever")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def started(start):
    live = start(portrait(SEED), seed=5)
    live.feed(VOICE, SAMPLE_RATE)
    live.finish()
    return live


def frames(start) -> np.ndarray:
    live = started(start)
    made = np.concatenate([chunk.frames for chunk in live.chunks()])
    getattr(live, "close", lambda: None)()
    return made


def failure(pool: WorkerPool, harm) -> tuple[str, float]:
    """A session that makes its first chunk, then `harm(pool)`: the sentence it ends with, and the seconds that took."""
    live = started(pool.start)
    chunks = live.chunks()
    next(chunks)
    harm(pool)
    began = time.perf_counter()
    with pytest.raises(WorkerError) as caught:
        for _ in chunks:
            pass
    seconds = time.perf_counter() - began
    live.close()
    return str(caught.value), seconds


def kill(pool: WorkerPool) -> None:
    os.kill(pool.helpers[0].pid, signal.SIGKILL)


def freeze(pool: WorkerPool) -> None:  # alive, never answering: only the collective's timeout ends the wait
    os.kill(pool.helpers[0].pid, signal.SIGSTOP)


def bad_call(pool: WorkerPool) -> None:  # a call only the helper gets: it raises there
    pool._send("feed", "not speech", SAMPLE_RATE)


def test_a_failing_helper_ends_its_session_in_one_sentence_and_the_next_one_streams(tiny_pipeline):
    def run():
        pool = WorkerPool("tiny", world=2, chunk_timeout=CHUNK_TIMEOUT)
        try:
            ended = {harm.__name__: failure(pool, harm) for harm in (kill, freeze, bad_call)}
            return ended, frames(pool.start)
        finally:
            pool.close()

    ended, split = within(240, run)
    for harm, (message, seconds) in ended.items():
        print(f"{harm}: {seconds:.2f} s: {message}")
        assert seconds < 15, harm
        assert message.endswith("; the session ended, start it again.") and "\n" not in message, harm
        assert message.count(". ") == 0, f"{harm}: not one sentence"
    assert ended["kill"][0].startswith("worker 1 stopped: its process was killed by SIGKILL")
    assert ended["freeze"][0].startswith("worker 0 stopped: RuntimeError: Timed out")
    assert ended["bad_call"][0].startswith("worker 1 stopped: LiveActInputError: speech samples are numbers")
    single = frames(tiny_pipeline.start)
    assert split.shape == single.shape
    assert np.abs(split.astype(int) - single.astype(int)).max() <= 1  # float summation order only
