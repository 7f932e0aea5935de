from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

from conftest import example
from liveact.inputs import LiveActInputError
from liveact.audio import (MelFeatures, StreamingFeatures, Wav2Vec2Features, as_mono, decode_audio, featurize,
                           frames_in, load_audio, prepare_speech)
from liveact.stream import audio_window

RATE = 16000


def tone(seconds: float, hz: float = 220.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def pitch(samples: np.ndarray, rate: int = RATE) -> float:
    """Frequency of a pure tone from its zero crossings."""
    return np.sum(np.diff(samples >= 0) != 0) / (len(samples) / rate) / 2  # an exact 0 is no crossing


@pytest.fixture(scope="module")
def tone_files(tmp_path_factory):
    """The same 3 s, 440 Hz stereo tone at 44.1 kHz in every common container (written by ffmpeg)."""
    folder = tmp_path_factory.mktemp("audio")
    files = {}
    for ext, codec in [("wav", []), ("mp3", []), ("m4a", ["-c:a", "aac"]), ("flac", []), ("ogg", ["-c:a", "libvorbis"])]:
        files[ext] = folder / f"tone.{ext}"
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=3",
                        "-ac", "2", *codec, str(files[ext])], check=True)
    files["mp4"] = folder / "video.mp4"  # a video's soundtrack
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "color=c=gray:s=32x32:d=3", "-f", "lavfi",
                    "-i", "sine=frequency=440:sample_rate=44100:duration=3", "-shortest", "-c:v", "libx264",
                    "-c:a", "aac", str(files["mp4"])], check=True)
    return files


@pytest.mark.parametrize("ext", ["wav", "mp3", "m4a", "flac", "ogg", "mp4"])
def test_load_any_common_format_to_mono_16k(tone_files, ext):
    samples = load_audio(tone_files[ext])
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) / RATE - 3.0) < 0.1
    assert abs(pitch(samples[RATE // 2:-RATE // 2]) - 440) < 5


def test_channel_0_is_taken_at_the_files_own_rate(tmp_path):
    """As the reference reads speech: channel 0, not a downmix; the file's own rate until the tempo is changed."""
    stereo = tmp_path / "stereo.wav"  # left 220 Hz, right 660 Hz
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=220:sample_rate=44100:duration=2",
                    "-f", "lavfi", "-i", "sine=frequency=660:sample_rate=44100:duration=2",
                    "-filter_complex", "[0][1]amerge=inputs=2", str(stereo)], check=True)
    samples, rate = decode_audio(stereo)
    assert rate == 44100 and len(samples) == 2 * 44100 and abs(pitch(samples, rate) - 220) < 2
    assert abs(pitch(load_audio(stereo)) - 220) < 2
    microphone = (np.stack([tone(1.0, 220, 48000), tone(1.0, 660, 48000)], axis=1) * 32767).astype(np.int16)
    assert abs(pitch(as_mono(microphone, 48000)) - 220) < 2  # [samples, channels] arrays too


def test_unusable_audio_is_a_clear_error(tmp_path):
    with pytest.raises(LiveActInputError, match="not found"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "noise.wav").write_bytes(b"not audio at all")
    with pytest.raises(LiveActInputError, match="cannot decode"):
        load_audio(tmp_path / "noise.wav")
    silent = tmp_path / "silent.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "color=c=gray:s=32x32:d=1", "-c:v", "libx264", str(silent)],
                   check=True)
    with pytest.raises(LiveActInputError, match="no audio track"):
        load_audio(silent)


def test_reference_preprocessing_stretches_tempo_keeps_pitch_and_applies_gain():
    speech = prepare_speech(tone(4.0), RATE, fps=20)  # tempo 25/20 = 1.25
    assert abs(len(speech) / RATE - 4.0 / 1.25) < 0.02
    assert abs(pitch(speech) - 220) < 3
    assert abs(np.abs(speech).max() - 1.5) < 0.05  # gain x3
    # one feature frame per video frame: 4 s at 20 fps = 80 frames
    assert frames_in(speech) == 80
    assert len(prepare_speech(tone(1.0, rate=48000), 48000, fps=25)) == RATE
    at_48k = prepare_speech(tone(4.0, rate=48000), 48000, fps=20)  # the tempo at 48 kHz, then 16 kHz
    assert abs(len(at_48k) / RATE - 4.0 / 1.25) < 0.02 and abs(pitch(at_48k) - 220) < 3


def tiny_wav2vec2():
    torch.manual_seed(0)
    config = Wav2Vec2Config(hidden_size=8, num_hidden_layers=3, num_attention_heads=2, intermediate_size=16,
                            conv_dim=(8,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    return Wav2Vec2Model(config).eval()


def test_wav2vec2_features_are_the_hidden_layers_at_the_video_frame_rate():
    model = tiny_wav2vec2()
    featurizer = Wav2Vec2Features(model, Wav2Vec2FeatureExtractor())
    speech = prepare_speech(np.random.default_rng(0).standard_normal(RATE * 2).astype(np.float32) * 0.1, RATE, 25)
    # with as many frames as the CNN makes (no resampling) it equals the model's own hidden_states[1:]
    inputs = torch.tensor(Wav2Vec2FeatureExtractor()(speech, sampling_rate=RATE).input_values[0])[None]
    with torch.no_grad():
        hidden = model(inputs, output_hidden_states=True).hidden_states
    native = hidden[0].shape[1]
    assert torch.allclose(featurizer(speech, native), torch.stack(hidden[1:], dim=2)[0], atol=1e-6)
    features = featurizer(speech, frames_in(speech))
    assert features.shape == (50, 3, 8)


def test_mel_features_follow_loudness():
    mel = MelFeatures(n_mels=16)
    loud_then_quiet = np.concatenate([tone(1.0), tone(1.0) * 0.01])
    features = featurize(mel, loud_then_quiet, RATE, fps=25)
    assert features.shape == (50, 1, 16)
    assert features[:20].mean() > features[30:].mean() + 0.5


def test_streaming_features_equal_featurizing_each_window_alone():
    mel = MelFeatures(n_mels=8)
    samples = np.random.default_rng(1).standard_normal(48000 * 6).astype(np.float32) * 0.1  # 6 s at 48 kHz
    stream = StreamingFeatures(mel, fps=20, sample_rate=RATE)
    assert not stream.ready(0)
    for piece in np.array_split((samples * 32767).astype(np.int16), 24):  # microphone-sized int16 chunks
        stream.push(piece, sample_rate=48000)
    assert stream.received_frames == 120 and stream.ready(65) and not stream.ready(66)
    resampled = stream._buffer.copy()
    window = stream.window(32)
    start, stop = round(32 / 20 * RATE), round((32 + 53 + 2) / 20 * RATE)
    alone = featurize(mel, resampled[start:stop], RATE, 20)
    assert torch.equal(window, audio_window(alone[None], 0, 53, 5))
    assert window.shape == (1, 53, 5, 1, 8)
    assert stream._buffer_start == start  # audio before the window was dropped
    with pytest.raises(ValueError, match="already dropped"):
        stream.window(0)


def test_streaming_features_keep_the_first_pushs_rate():
    """The tempo of each window then runs at the speech's own rate, as the whole-file path's does."""
    mel = MelFeatures(n_mels=8)
    samples = (np.random.default_rng(2).standard_normal((48000 * 4, 2)) * 3000).astype(np.int16)  # 4 s stereo
    stream = StreamingFeatures(mel, fps=20)
    for piece in np.array_split(samples, 8):
        stream.push(piece, sample_rate=48000)
    assert stream.sample_rate == 48000 and stream.received_frames == 80
    assert np.array_equal(stream._buffer, as_mono(samples, 48000, 48000))  # channel 0, not resampled
    alone = featurize(mel, stream._buffer[:round((53 + 2) / 20 * 48000)], 48000, 20)
    assert torch.equal(stream.window(0), audio_window(alone[None], 0, 53, 5))


def test_real_speech_file():
    samples = load_audio(example("speech-1.wav"))
    assert abs(len(samples) / RATE - 37.76) < 0.01
    features = featurize(MelFeatures(), samples, RATE, fps=20)
    assert features.shape[0] == int(37.76 * 20)


def test_streaming_features_featurize_a_shared_window_once():
    calls = []

    class Counting(MelFeatures):
        def __call__(self, speech, frames):
            calls.append(frames)
            return super().__call__(speech, frames)

    stream = StreamingFeatures(Counting(n_mels=8), fps=20)
    stream.push(tone(5.0))  # 100 frames: enough for the windows at 0 and 32
    first, second = stream.window(0), stream.window(0)  # chunks 0 and 1 both use the window at frame 0
    assert second is first and len(calls) == 1
    stream.window(32)
    assert len(calls) == 2


def test_audio_compare_aligns_waveforms_and_downmixes_as_liveact_did():
    """The measuring tools of docs/AUDIO.md: a shifted copy is found and correlates fully; the old downmix."""
    from liveact.audio_compare import aligned_correlation, downmix

    speech = load_audio(example("speech-1.wav"))[:RATE * 3]
    shifted = np.concatenate([np.zeros(50, np.float32), speech])
    assert aligned_correlation(speech, shifted) == pytest.approx((50 / RATE * 1000, 1.0))
    both = downmix(np.stack([tone(1.0), tone(1.0)]), RATE)
    assert len(both) == RATE and abs(np.abs(both).max() / 0.5 - np.sqrt(2)) < 1e-3  # power-preserving: +3 dB
