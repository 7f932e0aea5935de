"""Serving one viewer: a live session whose chunks become player segments, with live statistics.

    broadcast = Broadcast(pipe.start(portrait, prompt, seed))   a temp folder of its own
    broadcast.feed(samples, sample_rate); broadcast.finish()    speech, all at once or as it is spoken
    for segment in broadcast.segments(): ...                    each chunk as a .ts file, as soon as it is ready
    broadcast.movie()                                           the whole stream as one mp4, segments joined
    broadcast.close()                                           deletes the folder (also on errors and Stop)
    release_free_memory()                                       a server's RSS stays flat, visitor after visitor
    log_heap()                                                  the heap's numbers, for the soak

The web app (`liveact.app`) is a thin layer over this; tests and benchmarks drive it without a browser.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .audio import SAMPLE_RATE, as_mono
from .inputs import LiveActInputError, check_prompt
from .pipeline import LiveSession
from .stream import ChunkGeometry
from .segments import encode_segment


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


def parse_edits(text: str, geometry: ChunkGeometry, fps: float, seconds: float | None = None) -> list[tuple[int, int | None, str]]:
    """Prompt edits by time, one per line: "4-8: the person smiles" (seconds; "4-: ..." = to the end) ->
    (first chunk, end chunk or None, prompt): the chunks whose frames overlap the range. `seconds`: the
    speech's length, when known, which an edit must start within."""
    edits = []
    for number, line in enumerate(text.strip().splitlines(), 1):
        if not line.strip():
            continue
        match = EDIT_LINE.match(line)
        if match is None:
            raise LiveActInputError(f"edit line {number} ({line.strip()[:40]!r}) is not 'START-END: prompt' in "
                                    "seconds, e.g. '4-8: the person smiles'.")
        start, end = float(match[1]), None if match[2] is None else float(match[2])
        if end is not None and end <= start:
            raise LiveActInputError(f"edit line {number}: the range {start:g}-{end:g} s ends before it starts.")
        if seconds is not None and start >= seconds:
            raise LiveActInputError(f"edit line {number} starts at {start:g} s, after the speech ends ({seconds:.1f} s).")
        first = geometry.chunks_for(int(start * fps) + 1) - 1
        edits.append((first, None if end is None else geometry.chunks_for(int(end * fps)), check_prompt(match[3])))
    return edits


SEGMENT_SECONDS = 1.0  # Gradio's playlist target is the longest segment rounded up, and hls.js re-polls a
# playlist that has not grown every half target: whole-second segments keep that wait at 0.5 s, not 1 s


class Broadcast:
    """One viewer's stream: speech in (all at once, or pushed from another thread while it runs), segments out.

    Chunks are made on a thread of their own, ahead of the reader: while the web server packages one segment
    for the player, the next chunk is already being denoised. Segments are cut at whole seconds of video,
    whatever the model's chunk length; the last one takes what is left."""

    def __init__(self, live: LiveSession, root: str | Path | None = None, max_seconds: float | None = None,
                 began: float | None = None, keep: bool = True):
        """`began`: perf_counter() of the viewer's request (default now), the zero of time to first frame.
        `keep`: keep every segment for `movie()`; without it a segment is deleted once the reader has come back
        for the next one, so the folder stays the same size however long a live session runs."""
        self.live, self.fps = live, live.pipe.fps
        self.folder = Path(tempfile.mkdtemp(prefix="liveact-", dir=root))
        self.max_frames = None if max_seconds is None else int(max_seconds * self.fps)
        self.segment_frames = max(1, round(SEGMENT_SECONDS * self.fps))
        self.stats = Stats(self.fps)  # as of the last segment the reader took
        self._tally = Stats(self.fps)  # as of the last chunk made
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()  # (samples, rate) or None = end of speech, any thread
        self.stopped = threading.Event()
        self._sound = np.zeros(0, np.float32)  # 16 kHz speech not yet written into a segment
        self._sound_start = 0  # absolute sample index of _sound[0]
        self._frames: np.ndarray | None = None  # made, not yet in a segment: uint8 [T, H, W, 3]
        self._frames_start = 0  # absolute frame index of _frames[0]
        self._written: list[Path] = []
        self.keep = keep
        self._writing = threading.Lock()  # close() waits for a segment being written, then deletes the folder
        self._ready: queue.SimpleQueue = queue.SimpleQueue()  # (segment, stats), an error, or None = the end
        self._maker: threading.Thread | None = None
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
        return self.max_frames is not None and self._tally.frames >= self.max_frames

    # -- segments out -------------------------------------------------------------------------------

    def segments(self, wait: float = 0.02) -> Iterator[Path]:
        """Every second of video as a segment, as soon as it is made; returns when the speech has ended and is
        all covered, on `stop()`, or at the session limit. Waits (polling every `wait` s) while speech is due."""
        self._maker = threading.Thread(target=self._make, args=(wait,), name="liveact-broadcast", daemon=True)
        self._maker.start()
        taken = None
        while (item := self._ready.get()) is not None and not self.stopped.is_set():
            if isinstance(item, BaseException):
                raise item
            if taken is not None and not self.keep:  # the reader is back: it is done with the last one
                taken.unlink(missing_ok=True)
            taken, self.stats = item
            yield taken

    def _make(self, wait: float) -> None:
        """The maker thread: chunks while speech is due, cut into segments for the reader."""
        try:
            while not self.done:
                self._take_inbox()
                made = False
                for chunk in self.live.chunks():
                    if not self._publish(chunk):
                        return
                    made = True
                    self._take_inbox()
                    if self.done:
                        break
                if not made and not self.done:
                    time.sleep(wait)
            if self._frames is not None and len(self._frames) and not self.stopped.is_set():  # live speech ended after its last chunk
                self._publish(None)
        except BaseException as error:  # noqa: BLE001 -- handed to the reader, raised there
            self._ready.put(error)
        finally:
            self._ready.put(None)

    def _publish(self, chunk) -> bool:
        """Cut the chunk's frames into whole-second segments (all that is left after the last chunk), update the
        statistics, hand the segments to the reader. False once stopped: the folder may be gone."""
        with self._writing:
            if self.stopped.is_set():
                return False
            began = time.perf_counter()
            if chunk is not None:
                self._frames = chunk.frames if self._frames is None else np.concatenate([self._frames, chunk.frames])
            last = chunk is None or self.live.done or (
                self.max_frames is not None and chunk.first_frame + len(chunk.frames) >= self.max_frames)
            segments = []
            while len(self._frames) >= self.segment_frames * (2 if last else 1) or (last and len(self._frames)):
                whole = not last or len(self._frames) >= 2 * self.segment_frames  # the last one: 1 to 2 s
                count = self.segment_frames if whole else len(self._frames)
                segments.append(self._write(self._frames[:count]))
                self._frames, self._frames_start = self._frames[count:], self._frames_start + count
            if chunk is not None:
                self._account(chunk, began)
        for segment in segments:
            self._ready.put((segment, replace(self._tally, latencies_ms=list(self._tally.latencies_ms),
                                              stage_seconds=dict(self._tally.stage_seconds))))
        return True

    def _write(self, frames: np.ndarray) -> Path:
        """One segment: the frames and the speech under them (silence past its end: every segment has sound)."""
        first = round(self._frames_start / self.fps * SAMPLE_RATE) - self._sound_start
        count = round(len(frames) / self.fps * SAMPLE_RATE)
        sound = np.zeros(count, np.float32)
        piece = self._sound[max(first, 0):first + count]
        sound[:len(piece)] = piece
        self._sound, self._sound_start = self._sound[first + count:], self._sound_start + first + count
        path = encode_segment(self.folder / f"{len(self._written):06d}.ts", frames, self.fps, sound,
                              start_seconds=self._frames_start / self.fps)
        self._written.append(path)
        if self._tally.time_to_first_frame_s is None:
            self._tally.time_to_first_frame_s = time.perf_counter() - self._began
        return path

    def _account(self, chunk, began: float) -> None:
        now = time.perf_counter()
        stats = self._tally
        stats.chunk, stats.frames = chunk.index, chunk.first_frame + len(chunk.frames)
        stats.ms_per_chunk = 1000 * (chunk.seconds + now - began)
        stats.latencies_ms.append(stats.ms_per_chunk)
        stats.fps = stats.frames / (now - self._began)
        stats.memory_bytes = chunk.memory_bytes
        for stage, seconds in (chunk.timings | {"segments": now - began}).items():
            stats.stage_seconds[stage] = stats.stage_seconds.get(stage, 0.0) + seconds

    def movie(self) -> Path | None:
        """The stream so far as one mp4 (H.264 and AAC copied from the segments, not re-encoded); None once
        the broadcast was stopped, or when it does not keep its segments."""
        joined, out = self.folder / "joined.ts", self.folder / "liveact.mp4"
        with self._writing:
            if self.stopped.is_set() or not self.keep:
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
        """End the session (waiting for a chunk being made) and delete its folder."""
        self.stop()
        if self._maker is not None and self._maker is not threading.current_thread():
            self._maker.join()
        with self._writing:
            shutil.rmtree(self.folder, ignore_errors=True)
        end = getattr(self.live, "close", None)  # a session mirrored on worker processes ends there too
        if end is not None:
            end()

    def __enter__(self) -> "Broadcast":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- the server's memory ---------------------------------------------------------------------------

class _HeapInfo(ctypes.Structure):  # glibc's `struct mallinfo2`
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _glibc() -> ctypes.CDLL | None:
    libc = ctypes.CDLL(None)  # the C library this process runs on
    if not hasattr(libc, "malloc_trim"):
        return None  # not glibc (macOS, musl): its allocator keeps its own policy
    if hasattr(libc, "mallinfo2"):  # glibc >= 2.33
        libc.mallinfo2.restype = _HeapInfo
    return libc


_LIBC = _glibc()


def _mkl() -> ctypes.CDLL | None:
    """The MKL inside torch's CPU library (x86 Linux wheels), for its buffer pool; None where torch has none."""
    try:
        library = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))  # already loaded
    except OSError:
        return None
    return library if hasattr(library, "mkl_serv_free_buffers") else None


_MKL = _mkl()


def heap_bytes() -> dict[str, int] | None:
    """glibc's heap: bytes of live allocations, and free bytes it holds on to (None where it cannot tell)."""
    if _LIBC is None or not hasattr(_LIBC, "mallinfo2"):
        return None
    info = _LIBC.mallinfo2()
    return {"in_use": info.uordblks + info.hblkhd, "free": info.fordblks}


def release_free_memory() -> None:
    """Give the pages a finished session freed back to the system. glibc keeps freed memory in its heaps, and
    the mix of buffer sizes a session allocates (tensors, video packets, HTTP bodies) reuses it imperfectly:
    without this, a server's RSS creeps up visitor after visitor while the memory in use stays flat.
    MKL keeps a pool of ~4 MiB GEMM buffers that grows whenever more threads multiply at once than ever before
    (the session's generator and its read-ahead decode, by chance): its unused buffers go first."""
    if _MKL is not None:
        _MKL.mkl_serv_free_buffers()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def log_heap() -> None:
    """With LIVEACT_HEAP_LOG set, append a line with the heap's numbers (null where unknown) to that file: the
    soak counts the lines to know the app has ended a session."""
    if log := os.environ.get("LIVEACT_HEAP_LOG"):
        with open(log, "a") as f:
            f.write(json.dumps(heap_bytes() or {"in_use": None, "free": None}) + "\n")
