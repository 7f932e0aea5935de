"""Same inputs and seed, same frames: through the session API and through the command line."""

from __future__ import annotations

import numpy as np

from conftest import video_frames
from liveact.__main__ import main
from liveact.audio import save_wav
from liveact.synthetic import SAMPLE_RATE, speech
from liveact.synthetic import portrait as synthetic_portrait


def live_frames(pipe, portrait, voice, seed: int) -> np.ndarray:
    live = pipe.start(portrait, "a person is talking", seed)
    live.feed(voice, SAMPLE_RATE)
    live.finish()
    return np.concatenate([chunk.frames for chunk in live.chunks()])


def test_the_session_api_and_the_cli_repeat_themselves(tiny_pipeline, tmp_path):
    portrait = synthetic_portrait(7_000_444)
    voice = speech(3.0, 7_000_444)
    first, again, other = (live_frames(tiny_pipeline, portrait, voice, seed) for seed in (5, 5, 6))
    assert np.array_equal(first, again) and not np.array_equal(first, other)

    portrait.save(tmp_path / "portrait.png")
    save_wav(tmp_path / "speech.wav", voice, SAMPLE_RATE)
    movies = []
    for run, seed in enumerate((5, 5, 6)):
        movies.append(tmp_path / f"run-{run}.mp4")
        assert main(["generate", "--image", str(tmp_path / "portrait.png"), "--audio", str(tmp_path / "speech.wav"),
                     "--out", str(movies[-1]), "--seed", str(seed)]) == 0
    first, again, other = (video_frames(movie) for movie in movies)
    assert np.array_equal(first, again) and not np.array_equal(first, other)
