"""Nothing leaks: many short sessions through the app, and one long live session.

    python -m liveact soak --sessions 100 --live-minutes 60 --json docs/results/soak.json

1. `many_sessions`: `python app.py` (tiny model) in a process of its own, and visitors one after another.
   Each one connects with gradio_client, uploads the portrait and the speech, generates a short video with a
   seed of its own, downloads the mp4, and leaves; Gradio's heartbeat notices, and the app ends the session.
   After every visitor: the server's RSS, the bytes under its temp folder (Gradio's uploads and cache,
   and the sessions' folders), and the bytes glibc's heap holds in live allocations (the app logs them).
   The start is taken after 20 warm-up visitors: the first requests fill caches that stay (torch's, the
   allocator's), and Gradio keeps the output values of the last `app.SESSION_STATES`
   (8) visitors, so the server reaches its steady size only after more visitors than that.
2. `live_session`: one live session (`serve.Broadcast`, as the app's microphone mode runs it, segments not
   kept) fed speech as it goes, for an hour of video; RSS and its folder's bytes every minute of video.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .bench import rss_bytes
from .synthetic import SAMPLE_RATE, speech


def folder_bytes(folder: str | Path) -> int:
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())


def _rss_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _serve(temp: Path, port: int, heap_log: Path) -> subprocess.Popen:
    """`python app.py` on the tiny model, its Gradio folder `temp`; returns once it answers. The app appends
    its heap's numbers to `heap_log` whenever a session ends."""
    import urllib.request

    env = {**os.environ, "GRADIO_TEMP_DIR": str(temp), "LIVEACT_HEAP_LOG": str(heap_log),
           "GRADIO_HEARTBEAT_INTERVAL": "1"}  # a leaving visitor
    server = subprocess.Popen([sys.executable, "-c", "from liveact.app import main; main()", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noticed within 1 s
    deadline = time.perf_counter() + 300
    while time.perf_counter() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            return server
        except OSError:
            if server.poll() is not None:
                raise RuntimeError("the app exited before it answered") from None
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("the app did not answer within 5 minutes")


def many_sessions(sessions: int = 100, seconds: float = 1.0, warm_up: int = 20, progress: bool = True) -> dict:
    """`sessions` visitors one after another, after `warm_up` more; the server's RSS and temp bytes after each."""
    from gradio_client import Client, handle_file
    from tqdm.auto import tqdm

    from .app import write_examples
    from .audio import save_wav
    from .workers import free_port

    temp, visitor = Path(tempfile.mkdtemp(prefix="liveact-soak-")), Path(tempfile.mkdtemp(prefix="liveact-visitor-"))
    port, heap_log = free_port(), visitor / "heap.jsonl"
    server = _serve(temp, port, heap_log)
    portrait = write_examples(visitor, 128)[0][0]
    voice = save_wav(visitor / "visitor.wav", speech(seconds, 7_200_000), SAMPLE_RATE)

    def visit(seed: int) -> None:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(visitor / "downloads"))
        client.predict(handle_file(portrait), handle_file(str(voice)), "", "a person is talking", "", seed, "conv",
                       1.0, False, "512*512", api_name="/generate")
        client.close()

    def heap_lines() -> list[str]:  # one per session the app has ended (folder deleted, memory released)
        text = heap_log.read_text() if heap_log.exists() else ""
        return text.split("\n")[:-1]  # whole lines only: the app may be writing the next one

    def settle(visitors: int) -> None:  # wait until the app has ended this many sessions
        deadline = time.perf_counter() + 30
        while len(heap_lines()) < visitors:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"the app had not ended session {visitors} 30 s after its visitor left")
            time.sleep(0.1)

    def heap_in_use_now() -> int | None:
        return json.loads(heap_lines()[-1])["in_use"]

    rss, temp_bytes, heap_in_use = [], [], []
    try:
        for seed in range(warm_up):
            visit(seed)
        settle(warm_up)
        start_rss, start_temp, start_heap = _rss_of(server.pid), folder_bytes(temp), heap_in_use_now()
        began = time.perf_counter()
        for seed in tqdm(range(warm_up, warm_up + sessions), desc="visitors", disable=not progress):
            visit(seed)
            settle(seed + 1)
            rss.append(_rss_of(server.pid))
            temp_bytes.append(folder_bytes(temp))
            heap_in_use.append(heap_in_use_now())
        wall = time.perf_counter() - began
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(visitor, ignore_errors=True)
    return {"sessions": sessions, "speech_seconds": seconds, "warm_up": warm_up, "wall_seconds": wall,
            "start_rss_bytes": start_rss, "start_temp_bytes": start_temp, "rss_bytes": rss, "temp_bytes": temp_bytes,
            "start_heap_in_use_bytes": start_heap, "heap_in_use_bytes": heap_in_use,
            "heap_in_use_change": heap_in_use[-1] / start_heap - 1.0 if start_heap and heap_in_use[-1] else None,
            "rss_change": rss[-1] / start_rss - 1.0, "temp_change": temp_bytes[-1] / start_temp - 1.0,
            "max_rss_change": max(rss) / start_rss - 1.0, "max_temp_change": max(temp_bytes) / start_temp - 1.0}


def live_session(minutes: float = 60.0, progress: bool = True) -> dict:
    """One live session of `minutes` of video, speech pushed 10 s ahead of the stream, as a microphone would."""
    from tqdm.auto import tqdm

    from .bench import _portrait_and_speech
    from .pipeline import load
    from .serve import Broadcast

    pipe = load("tiny")
    portrait, voice = _portrait_and_speech(pipe, 60.0, seed=0)  # one minute of speech, fed again and again
    fed = [0.0]
    minute_marks, rss, temp_bytes = [], [], []
    bar = tqdm(total=int(minutes), unit="min of video", disable=not progress)
    began = time.perf_counter()
    with Broadcast(pipe.start(portrait, prompt="a person is talking"), keep=False) as broadcast:

        def microphone() -> None:
            while not broadcast.stopped.is_set() and fed[0] < minutes * 60:
                if fed[0] - broadcast.stats.frames / pipe.fps < 10.0:  # 10 s of speech ahead of the video
                    start = int(fed[0] % 60 * SAMPLE_RATE)
                    broadcast.feed(voice[start:start + 5 * SAMPLE_RATE], SAMPLE_RATE)
                    fed[0] += 5.0
                else:
                    time.sleep(0.05)
            broadcast.finish()

        talker = threading.Thread(target=microphone, daemon=True)
        talker.start()
        for _ in broadcast.segments():
            minute = int(broadcast.stats.frames / pipe.fps // 60)
            if minute > len(minute_marks):
                gc.collect()
                minute_marks.append(minute)
                rss.append(rss_bytes())
                temp_bytes.append(folder_bytes(broadcast.folder))
                bar.update(1)
        talker.join()
        stats = broadcast.stats
    bar.close()
    return {"minutes": minutes, "wall_seconds": time.perf_counter() - began, "frames": stats.frames,
            "memory_bytes": stats.memory_bytes, "minute": minute_marks, "rss_bytes": rss, "temp_bytes": temp_bytes,
            "rss_change_from_minute_1": rss[-1] / rss[0] - 1.0,
            "temp_bytes_max": max(temp_bytes), "ms_per_chunk_p50": float(np.median(stats.latencies_ms))}


def plot(report: dict, path: str | Path) -> Path:
    """The server's RSS and temp folder visitor after visitor; the live session's RSS and folder minute by minute."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [part for part in ("many_sessions", "live_session") if part in report]
    figure, axes = plt.subplots(1, len(parts), figsize=(5.5 * len(parts), 3.5), squeeze=False)
    for axis, part in zip(axes[0], parts):
        numbers = report[part]
        x = range(1, len(numbers["rss_bytes"]) + 1) if part == "many_sessions" else numbers["minute"]
        axis.plot(x, [b / 2**20 for b in numbers["rss_bytes"]], marker=".", label="RSS (MiB)")
        axis.plot(x, [b / 2**20 for b in numbers["temp_bytes"]], marker=".", label="temp files (MiB)")
        if any(numbers.get("heap_in_use_bytes") or ()):
            axis.plot(x, [b / 2**20 for b in numbers["heap_in_use_bytes"]], marker=".", label="heap in use (MiB)")
        if part == "many_sessions":
            axis.axhline(numbers["start_rss_bytes"] / 2**20, ls="--", lw=1, color="C0", label="RSS at the start")
            axis.set(title=f"{numbers['sessions']} visitors through python app.py", xlabel="visitor")
        else:
            axis.set(title="one live session", xlabel="minute of video")
        axis.set_ylim(bottom=0)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)
