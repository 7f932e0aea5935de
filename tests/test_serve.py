"""Serving a viewer: segments a player can stream, the whole mp4, live speech, prompt edits by time, speech from text."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from conftest import probe
from liveact.memory import MemoryLayout
from liveact.inputs import Limits, LiveActInputError
from liveact.serve import Broadcast, heap_bytes, log_heap, parse_edits, release_free_memory
from liveact.stream import ChunkGeometry
from liveact.synthetic import SAMPLE_RATE, speech
from liveact.synthetic import portrait as synthetic_portrait


def portrait(seed: int = 7_000_011):
    return synthetic_portrait(seed)


def test_every_segment_is_self_contained_and_the_movie_joins_them(tiny_pipeline):
    voice = speech(5.0, 7_000_011)
    with Broadcast(tiny_pipeline.start(portrait(), seed=1)) as broadcast:
        broadcast.feed(voice, SAMPLE_RATE)
        broadcast.finish()
        segments = list(broadcast.segments())
        infos = [probe(path) for path in segments]
        movie = probe(broadcast.movie())
        folder = broadcast.folder
        stats = broadcast.stats
    assert stats.chunk + 1 == tiny_pipeline.start(portrait()).session.chunks_for(5 * 20)
    assert len(segments) == stats.frames // 20  # whole seconds; the last one takes the rest
    videos = [next(s for s in info["streams"] if s["codec_type"] == "video") for info in infos]
    assert [float(video["duration"]) for video in videos[:-1]] == [1.0] * (len(segments) - 1)  # playlist target 1 s
    for info in infos:
        video = next(s for s in info["streams"] if s["codec_type"] == "video")
        assert (video["codec_name"], video["pix_fmt"], video["width"], video["height"], video["r_frame_rate"]) == \
            ("h264", "yuv420p", 128, 128, "20/1")
        assert any(s["codec_type"] == "audio" for s in info["streams"])  # sound in every segment, silence included
        assert info["first_frame"].startswith("1,I")  # keyframe first
    assert abs(float(movie["format"]["duration"]) - stats.frames / 20) < 0.2
    assert {s["codec_type"] for s in movie["streams"]} == {"video", "audio"}
    assert stats.time_to_first_frame_s > 0 and len(stats.latencies_ms) == stats.chunk + 1 and stats.memory_bytes > 0
    assert set(stats.stage_seconds) == {"audio", "denoise", "decode", "segments"}
    assert not folder.exists()  # closing deletes the session's files


def test_live_speech_pushed_from_another_thread_streams_until_it_ends(tiny_pipeline):
    voice = speech(4.0, 7_000_012)
    broadcast = Broadcast(tiny_pipeline.start(portrait(), seed=2))

    def microphone():  # 0.5 s pieces at 48 kHz int16, as a browser delivers them
        loud = np.interp(np.arange(len(voice) * 3) / 3, np.arange(len(voice)), voice)
        pcm = (loud * 32767).astype(np.int16)
        for start in range(0, len(pcm), 24000):
            broadcast.feed(pcm[start:start + 24000], 48000)
        broadcast.finish()

    talker = threading.Thread(target=microphone)
    talker.start()
    segments = list(broadcast.segments())
    talker.join()
    assert broadcast.stats.frames >= 4 * 20 and len(segments) >= 3
    broadcast.close()
    assert not broadcast.folder.exists()


def test_stop_ends_a_stream_at_once_and_a_session_limit_holds(tiny_pipeline):
    with Broadcast(tiny_pipeline.start(portrait()), max_seconds=3) as limited:
        limited.feed(speech(20.0, 1), SAMPLE_RATE)
        limited.finish()
        count = sum(1 for _ in limited.segments())
        assert 3 <= limited.stats.frames / 20 <= 3 + 1.6 and count == limited.stats.frames // 20
    with Broadcast(tiny_pipeline.start(portrait())) as stopped:
        stopped.feed(speech(20.0, 1), SAMPLE_RATE)
        stopped.finish()
        for count, _ in enumerate(stopped.segments(), 1):
            stopped.stop()
        assert count == 1


def test_prompt_edits_by_time_become_chunk_ranges():
    geometry = ChunkGeometry(MemoryLayout())
    assert parse_edits("0-1: calm\n4-8: the person smiles\n\n10-: frown", geometry, 20) == \
        [(0, 1, "calm"), (2, 6, "the person smiles"), (6, None, "frown")]
    for bad in ("smile", "8-4: backwards", "a-b: letters"):
        with pytest.raises(LiveActInputError, match="edit line 1"):
            parse_edits(bad, geometry, 20)


def test_limits_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("LIVEACT_MAX_AUDIO_SECONDS", "42")
    monkeypatch.setenv("LIVEACT_MAX_QUEUE", "3")
    limits = Limits.from_env()
    assert (limits.max_audio_seconds, limits.max_queue, limits.max_upload_mb) == (42.0, 3, Limits().max_upload_mb)


def test_a_typed_sentence_is_spoken():
    from liveact.tts import engine, speak

    if engine() is None:
        pytest.skip("no text-to-speech engine (the Makefile installs espeak-ng)")
    voice = speak("Hello, I am a talking head.")
    assert 1.0 < len(voice) / SAMPLE_RATE < 5.0 and np.abs(voice).max() > 0.05
    with pytest.raises(ValueError, match="no text"):
        speak("   ")


def test_two_worker_processes_stream_what_one_process_streams(tiny_pipeline):
    """The app's multi-GPU mode, on CPUs: rank 0 and a helper (gloo) split every chunk between them."""
    from liveact.workers import WorkerPool

    voice = speech(4.0, 7_000_021)

    def frames(start) -> np.ndarray:
        live = start(portrait(7_000_021), seed=5)
        live.feed(voice, SAMPLE_RATE)
        live.finish()
        made = np.concatenate([chunk.frames for chunk in live.chunks()])
        getattr(live, "close", lambda: None)()
        return made

    pool = WorkerPool("tiny", world=2)
    try:
        assert pool.pipe.parallel is not None and pool.pipe.parallel.world == 2
        split = frames(pool.start)
        again = frames(pool.start)  # the helper ended the first session and follows the next
    finally:
        pool.close()
    single = frames(tiny_pipeline.start)
    assert tiny_pipeline.parallel is None  # the pool's rendezvous variables did not leak into this process
    assert split.shape == single.shape == again.shape
    assert np.abs(split.astype(int) - single.astype(int)).max() <= 1  # float summation order only
    assert np.array_equal(split, again)


@pytest.mark.skipif(heap_bytes() is None, reason="glibc's heap only")
def test_freed_memory_goes_back_to_the_system(tmp_path, monkeypatch):
    """glibc keeps freed memory in its heap, so RSS stays up after a session; the app releases it when one ends."""
    from liveact.bench import rss_bytes

    sizes = np.random.default_rng(0).integers(20_000, 120_000, 3000)  # ~200 MB in pieces below the mmap threshold
    pieces = [np.ones(int(n), np.uint8) for n in sizes]
    kept = pieces[::10]  # what a session leaves alive between the freed pieces pins the heap's top
    del pieces
    before = rss_bytes()
    monkeypatch.setenv("LIVEACT_HEAP_LOG", str(tmp_path / "heap.jsonl"))
    release_free_memory()
    assert rss_bytes() < before - 100 * 2**20
    log_heap()
    heap = json.loads((tmp_path / "heap.jsonl").read_text())
    assert heap["in_use"] >= sum(piece.nbytes for piece in kept) and heap["free"] > 0
