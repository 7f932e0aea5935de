from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from liveact.synthetic import (EXPRESSIONS, FRAME_PARAMS, IDENTITY_PARAMS, REST, SAMPLE_RATE, SyntheticTalkingHeads,
                               contact_sheet, expressions_in, identity, make_clip, motion, mouth_from_audio, render,
                               speech)


def test_identities_are_deterministic_and_distinct():
    assert torch.equal(identity(7), identity(7))
    assert not torch.equal(identity(7), identity(8))
    assert identity(0).shape == (len(IDENTITY_PARAMS),)
    assert len({int(identity(s)[-1]) for s in range(40)}) == 4  # every hair style occurs


def test_speech_is_deterministic_syllables_and_pauses():
    a, b = speech(6.0, seed=3), speech(6.0, seed=3)
    assert np.array_equal(a, b) and a.dtype == np.float32 and len(a) == 6 * SAMPLE_RATE
    assert not np.array_equal(a, speech(6.0, seed=4))
    frames = a[: len(a) // 320 * 320].reshape(-1, 320)  # 20 ms frames
    energy = np.sqrt((frames ** 2).mean(1))
    assert (energy < 1e-3).mean() > 0.1 and (energy > 0.02).mean() > 0.3  # pauses and voiced parts


def test_mouth_is_a_function_of_the_audio():
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    silence = np.zeros(SAMPLE_RATE, np.float32)
    dark = (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)  # low, "aa"-like
    bright = (0.3 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32)  # high, "ee"-like
    m_silence, m_dark, m_bright = (mouth_from_audio(x, 20)[5:15].mean(0) for x in (silence, dark, bright))
    assert m_silence[0] < 0.02 and m_dark[0] > 0.6
    assert m_bright[1] > m_dark[1] and m_bright[0] < m_dark[0]  # bright: wider, less open
    assert np.array_equal(mouth_from_audio(dark, 20), mouth_from_audio(dark.copy(), 20))


def test_rendering_follows_the_parameters():
    person = identity(2)
    base = REST.clone()
    frames = render(person, torch.stack([base, base.clone().index_fill_(0, torch.tensor([0]), 0.9),
                                         base.clone().index_fill_(0, torch.tensor([3]), 1.0)]))
    assert frames.shape == (3, 3, 128, 128) and 0 <= frames.min() and frames.max() <= 1
    mouth_change = (frames[1] - frames[0]).abs().sum(0)
    blink_change = (frames[2] - frames[0]).abs().sum(0)
    rows = lambda change: torch.nonzero(change > 0.3)[:, 0].float().mean()  # noqa: E731
    assert rows(mouth_change) > rows(blink_change) + 15  # the mouth is below the eyes
    assert torch.equal(render(person, base), render(person, base))
    assert render(person, base, size=64).shape == (1, 3, 64, 64)


def test_expression_words():
    assert expressions_in("a person is talking and smiles") == ["smile"]
    assert expressions_in("She shakes her head, surprised") == ["surprised", "shake head"]
    assert expressions_in("a person is talking") == ["neutral"]
    mouth = np.full((21, 2), 0.3, np.float32)
    smile, frown = (motion(mouth, 20, 0, [[w]])[:, FRAME_PARAMS.index("smile")].mean() for w in ("smile", "frown"))
    assert smile > 0.5 > -0.5 > frown
    nod = motion(mouth, 20, 0, [["nod"]])[:, FRAME_PARAMS.index("pitch")] - motion(mouth, 20, 0, [["neutral"]])[:, 5]
    assert nod.abs().max() > 0.1
    assert set(EXPRESSIONS) >= {"neutral", "smile", "surprised", "nod", "shake head"}


def test_clips_and_dataset_are_deterministic_per_seed():
    a, b = make_clip(11, seconds=2.0), make_clip(11, seconds=2.0)
    assert torch.equal(a.video, b.video) and np.array_equal(a.audio, b.audio) and torch.equal(a.params, b.params)
    assert a.video.shape == (40, 3, 128, 128) and a.reference.shape == (3, 128, 128) and len(a.words) == 2
    assert not torch.equal(a.video, make_clip(12, seconds=2.0).video)
    data = SyntheticTalkingHeads(length=3, seconds=1.5, size=64, seed=5)
    assert torch.equal(data[1].video, data[1].video) and not torch.equal(data[0].video, data[1].video)
    # the ground-truth mouth follows the audio
    truth = mouth_from_audio(a.audio, 20, len(a.video))[:, 0]
    assert np.allclose(a.params[:, 0].numpy(), truth)


def test_real_speech_drives_the_mouth():
    from conftest import example
    from liveact.audio import load_audio

    audio = load_audio(example("speech-1.wav"))[: SAMPLE_RATE * 5]
    clip = make_clip(0, audio=audio, size=64)
    assert clip.video.shape[0] == 100 and clip.params[:, 0].std() > 0.1


def test_contact_sheet(tmp_path):
    path = contact_sheet(tmp_path / "sheet.png", identities=3, size=64)
    assert Image.open(path).size == (90 + 3 * 64, 4 * 64)
