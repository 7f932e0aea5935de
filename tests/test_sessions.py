"""Many users on one app (through its API, as gradio_client calls it): each gets its own video, the queue holds,
and cancelling one disturbs no other. Every output is compared frame by frame with a run of its own."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from conftest import video_frames as frames
from liveact.audio import save_wav
from liveact.synthetic import SAMPLE_RATE, speech

USERS = 4


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    folder = tmp_path_factory.mktemp("voices")
    return [save_wav(folder / f"user-{user}.wav", speech(3.0, 7_100_000 + user), SAMPLE_RATE) for user in range(USERS)]


def client(server, folder: Path):
    from gradio_client import Client

    return Client(server.url, verbose=False, download_files=str(folder))


def request(server, voice: Path, user: int) -> list:
    """User `user`'s inputs: their own portrait, speech and seed."""
    from gradio_client import handle_file

    portrait = sorted(server.examples.glob("person-*.png"))[user % 4]
    return [handle_file(str(portrait)), handle_file(str(voice)), "", "a person is talking", "", 100 + user,
            "conv", 1.0, False, "512*512"]


def movie(outputs) -> Path:
    return next(Path(o) for o in outputs if isinstance(o, str) and o.endswith(".mp4"))


@pytest.fixture(scope="module")
def alone(server, voices, tmp_path_factory) -> list[np.ndarray]:
    """Each user's video made with nobody else on the server."""
    return [frames(movie(client(server, tmp_path_factory.mktemp(f"alone-{user}")).predict(
        *request(server, voice, user), api_name="/generate"))) for user, voice in enumerate(voices)]


def test_four_users_at_once_each_get_their_own_video(server, voices, alone, tmp_path):
    users = [client(server, tmp_path / f"user-{user}") for user in range(USERS)]
    with ThreadPoolExecutor(USERS) as pool:  # all four submitted together: one runs, three wait in the queue
        outputs = list(pool.map(lambda user: users[user].predict(*request(server, voices[user], user),
                                                                 api_name="/generate"), range(USERS)))
    for user, output in enumerate(outputs):
        made = frames(movie(output))
        assert made.shape == alone[user].shape and np.array_equal(made, alone[user]), f"user {user}'s video differs"
    assert not any(np.array_equal(alone[0], other) for other in alone[1:])  # the four videos do differ


def test_cancelling_one_user_leaves_the_others_alone(server, voices, alone, tmp_path):
    long_voice = save_wav(tmp_path / "long.wav", speech(30.0, 7_100_099), SAMPLE_RATE)
    users = [client(server, tmp_path / f"user-{user}") for user in range(USERS)]
    before = set(server.sessions.iterdir())
    cancelled = users[0].submit(*request(server, long_voice, 0), api_name="/generate")
    deadline = time.perf_counter() + 20
    while server.studio.active() == 0 and time.perf_counter() < deadline:  # it is streaming
        time.sleep(0.05)
    others = [users[user].submit(*request(server, voices[user], user), api_name="/generate") for user in range(1, USERS)]
    time.sleep(0.5)
    cancelled.cancel()
    results = [job.result(timeout=120) for job in others]
    for user, output in enumerate(results, 1):
        assert np.array_equal(frames(movie(output)), alone[user]), f"user {user}'s video changed"
    folders = {folder.name for folder in set(server.sessions.iterdir()) - before}
    assert len(folders) == USERS - 1  # the cancelled session's folder is gone; the others keep their mp4s
    assert server.studio.active() == 0
