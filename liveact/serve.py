"""Serving one viewer: a live session whose chunks become player segments, with live statistics.

    broadcast = Broadcast(pipe.start(portrait, prompt, seed))   a temp folder of its own
    broadcast.feed(samples, sample_rate); broadcast.finish()    speech, all at once or as it is spoken
    for segment in broadcast.segments(): ...                    each chunk as a .ts file, as soon as it is ready
    broadcast.movie()                                           the whole stream as one mp4, segments joined
    broadcast.close()                                           deletes the folder (also on errors and Stop)

The web app (`liveact.app`) is a thin layer over this; tests and benchmarks drive it without a browser.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .audio import SAMPLE_RATE, as_mono
from .hub import LiveActError
from .pipeline import LiveSession
from .stream import ChunkGeometry
from .segments import encode_segment


@dataclass
class Limits:
    """What a public server accepts; each can be set by an environment variable (LIVEACT_MAX_...)."""

    max_upload_mb: float = 50.0
    max_audio_seconds: float = 300.0
    max_session_seconds: float = 900.0  # of video, live sessions included
    max_queue: int = 16

    @classmethod
    def from_env(cls) -> "Limits":
        read = lambda name, default: type(default)(os.environ.get(f"LIVEACT_{name.upper()}", default))  # noqa: E731
        return cls(**{name: read(name, value) for name, value in vars(cls()).items()})


@dataclass
class Stats:
    """What the viewer sees beside the video, updated every chunk."""

    video_fps: float
    chunk: int = 0
    frames: int = 0
    ms_per_chunk: float = 0.0
    fps: float = 0.0  # frames made per second of wall time since the start
    time_to_first_frame_s: float | None = None
    memory_bytes: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)  # audio, denoise, decode, segments: totals

    @property
    def real_time_factor(self) -> float:
        return self.fps / self.video_fps

    def markdown(self) -> str:
        first = "–" if self.time_to_first_frame_s is None else f"{self.time_to_first_frame_s:.2f} s"
        return (f"**chunk** {self.chunk} · **{self.ms_per_chunk:.0f} ms** per chunk · **{self.fps:.0f} FPS** "
                f"({self.real_time_factor:.1f}x real time) · first frame after {first} · "
                f"memory **{self.memory_bytes / 2**20:.2f} MiB**")


EDIT_LINE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)?\s*:\s*(.+?)\s*$")


def parse_edits(text: str, geometry: ChunkGeometry, fps: float) -> list[tuple[int, int | None, str]]:
    """Prompt edits by time, one per line: "4-8: the person smiles" (seconds; "4-: ..." = to the end) ->
    (first chunk, end chunk or None, prompt): the chunks whose frames overlap the range."""
    edits = []
    for number, line in enumerate(text.strip().splitlines(), 1):
        if not line.strip():
            continue
        match = EDIT_LINE.match(line)
        if match is None:
            raise LiveActError(f"edit line {number} ({line.strip()!r}) is not 'START-END: prompt' in seconds, "
                               f"e.g. '4-8: the person smiles'.")
        start, end = float(match[1]), None if match[2] is None else float(match[2])
        if end is not None and end <= start:
            raise LiveActError(f"edit line {number}: the range {start:g}-{end:g} s ends before it starts.")
        first = geometry.chunks_for(int(start * fps) + 1) - 1
        edits.append((first, None if end is None else geometry.chunks_for(int(end * fps)), match[3]))
    return edits


class Broadcast:
    """One viewer's stream: speech in (all at once, or pushed from another thread while it runs), segments out."""

    def __init__(self, live: LiveSession, root: str | Path | None = None, max_seconds: float | None = None,
                 began: float | None = None):
        """`began`: perf_counter() of the viewer's request (default now), the zero of time to first frame."""
        self.live, self.fps = live, live.pipe.fps
        self.folder = Path(tempfile.mkdtemp(prefix="liveact-", dir=root))
        self.max_frames = None if max_seconds is None else int(max_seconds * self.fps)
        self.stats = Stats(self.fps)
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()  # (samples, rate) or None = end of speech, any thread
        self.stopped = threading.Event()
        self._sound = np.zeros(0, np.float32)  # 16 kHz speech not yet written into a segment
        self._sound_start = 0  # absolute sample index of _sound[0]
        self._written: list[Path] = []
        self._writing = threading.Lock()  # close() waits for a segment being written, then deletes the folder
        self._began = time.perf_counter() if began is None else began

    # -- speech in ----------------------------------------------------------------------------------

    def feed(self, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
        """Queue speech (safe from any thread, e.g. a microphone handler)."""
        self.inbox.put((samples, sample_rate))

    def finish(self) -> None:
        self.inbox.put(None)

    def _take_inbox(self) -> None:
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return
            if item is None:
                self.live.finish()
                continue
            sound = as_mono(*item, SAMPLE_RATE)
            self.live.feed(sound, SAMPLE_RATE)
            self._sound = np.concatenate([self._sound, sound])

    @property
    def done(self) -> bool:
        return self.stopped.is_set() or self.live.done or self._past_limit

    @property
    def _past_limit(self) -> bool:
        return self.max_frames is not None and self.stats.frames >= self.max_frames

    # -- segments out -------------------------------------------------------------------------------

    def segments(self, wait: float = 0.02) -> Iterator[Path]:
        """Every chunk as a segment, as soon as its speech has arrived; returns when the speech has ended and is
        all covered, on `stop()`, or at the session limit. Waits (polling every `wait` s) while speech is due."""
        while not self.done:
            self._take_inbox()
            made = False
            for chunk in self.live.chunks():
                with self._writing:
                    if self.stopped.is_set():  # stopped while the chunk was denoised: its folder is gone
                        return
                    segment = self._write(chunk)
                yield segment
                made = True
                self._take_inbox()
                if self.done:
                    return
            if not made and not self.done:
                time.sleep(wait)

    def _write(self, chunk) -> Path:
        began = time.perf_counter()
        first = round(chunk.first_frame / self.fps * SAMPLE_RATE) - self._sound_start
        count = round(len(chunk.frames) / self.fps * SAMPLE_RATE)
        sound = np.zeros(count, np.float32)  # silence past the end of the speech: every segment has sound
        piece = self._sound[max(first, 0):first + count]
        sound[:len(piece)] = piece
        self._sound, self._sound_start = self._sound[first + count:], self._sound_start + first + count
        path = encode_segment(self.folder / f"{chunk.index:06d}.ts", chunk.frames, self.fps, sound,
                              start_seconds=chunk.first_frame / self.fps)
        self._written.append(path)
        now = time.perf_counter()
        stats = self.stats
        stats.chunk, stats.frames = chunk.index, chunk.first_frame + len(chunk.frames)
        stats.ms_per_chunk = 1000 * (chunk.seconds + now - began)
        stats.latencies_ms.append(stats.ms_per_chunk)
        stats.fps = stats.frames / (now - self._began)
        stats.memory_bytes = chunk.memory_bytes
        for stage, seconds in (chunk.timings | {"segments": now - began}).items():
            stats.stage_seconds[stage] = stats.stage_seconds.get(stage, 0.0) + seconds
        if stats.time_to_first_frame_s is None:
            stats.time_to_first_frame_s = now - self._began
        return path

    def movie(self) -> Path | None:
        """The stream so far as one mp4 (H.264 and AAC copied from the segments, not re-encoded); None once
        the broadcast was stopped (its segments are gone)."""
        joined, out = self.folder / "joined.ts", self.folder / "liveact.mp4"
        with self._writing:
            if self.stopped.is_set():
                return None
            with open(joined, "wb") as sink:  # MPEG-TS segments concatenate byte by byte
                for segment in self._written:
                    sink.write(segment.read_bytes())
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(joined), "-c", "copy", "-bsf:a", "aac_adtstoasc",
                            "-movflags", "+faststart", str(out)], check=True)
            joined.unlink()
        return out

    def stop(self) -> None:
        self.stopped.set()

    def close(self) -> None:
        """End the session and delete its folder."""
        self.stop()
        with self._writing:
            shutil.rmtree(self.folder, ignore_errors=True)
        end = getattr(self.live, "close", None)  # a session mirrored on worker processes ends there too
        if end is not None:
            end()

    def __enter__(self) -> "Broadcast":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
