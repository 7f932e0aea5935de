"""Speech in, per-video-frame features out.

Pipeline of the reference: decode any audio (PyAV/ffmpeg) -> channel 0 at the file's own sample rate ->
time-stretch by 25/fps without changing pitch (the audio encoder was trained on 25 feature frames per second,
so stretching makes one feature frame per *video* frame at any fps) -> 16 kHz -> gain x3 -> featurizer ->
[frames, layers, channels]. The reference stretches with sox's `tempo`, we with ffmpeg's `atempo`: the
difference is measured in docs/AUDIO.md.

Two featurizers share one interface: `Wav2Vec2Features` (the 18B model's: all 12 hidden layers of a
wav2vec2-base, its CNN features resampled to the video frame count before the transformer) and
`MelFeatures` (log-mel, for the tiny scale). `StreamingFeatures` featurizes audio as it arrives, one
chunk's window at a time, as the reference's streaming mode does.
"""

from __future__ import annotations

from fractions import Fraction
from itertools import chain
from pathlib import Path
from typing import Protocol

import av
import numpy as np
import torch
import torch.nn.functional as F

from .inputs import LiveActInputError, check_speech_length
from .stream import audio_window

SAMPLE_RATE = 16000  # of every featurizer's input
ENCODER_FPS = 25  # feature frames per second the audio encoders were trained with
GAIN = 3.0  # the reference amplifies speech before featurizing


def decode_audio(path: str | Path, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Channel 0 of the first audio stream of any file ffmpeg reads (wav, mp3, m4a, flac, ogg, a video's
    soundtrack) as float32 at the file's own sample rate, as the reference reads speech: (samples, rate).
    Longer than `max_seconds` is refused from the header."""
    path = Path(path)
    if not path.is_file():
        raise LiveActInputError(f"the speech file {path.name} was not found.")
    if path.stat().st_size == 0:
        raise LiveActInputError(f"the speech file {path.name} is empty.")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise LiveActInputError(f"{path.name} has no audio track.")
            if max_seconds is not None and container.duration is not None:  # before decoding an hour of it
                check_speech_length(container.duration / av.time_base, max_seconds)
            resampler = av.AudioResampler(format="fltp")  # planar float: row 0 is channel 0; rate and layout kept
            pieces, rate = [], SAMPLE_RATE  # no samples at all: no sound, refused below
            for frame in chain(container.decode(container.streams.audio[0]), [None]):  # None: flush the resampler
                for out in resampler.resample(frame):
                    pieces.append(out.to_ndarray()[0].copy())  # a copy: the other channels are not kept
                    rate = out.sample_rate
    except (av.error.FFmpegError, UnicodeDecodeError):
        raise LiveActInputError(f"cannot decode {path.name} as audio; give a wav, mp3, m4a, flac or ogg file.") from None
    samples = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    check_speech_length(len(samples) / rate, max_seconds)
    return samples, rate


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray:
    """Channel 0 of any audio file (see `decode_audio`), resampled to `sample_rate`."""
    samples, rate = decode_audio(path, max_seconds)
    return resample(samples, rate, sample_rate)


def save_wav(path: str | Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Mono float samples in [-1, 1] -> 16-bit PCM wav."""
    import wave

    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return Path(path)


def _filter(samples: np.ndarray, sample_rate: int, *filters: tuple[str, str]) -> np.ndarray:
    """Run mono float32 samples through an ffmpeg audio filter chain."""
    graph = av.filter.Graph()
    nodes = [graph.add_abuffer(format="flt", sample_rate=sample_rate, layout="mono", time_base=Fraction(1, sample_rate))]
    nodes += [graph.add(name, args) for name, args in filters] + [graph.add("abuffersink")]
    for a, b in zip(nodes, nodes[1:]):
        a.link_to(b)
    graph.configure()
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, np.float32)[None], format="flt", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = sample_rate, 0, Fraction(1, sample_rate)
    graph.push(frame)
    graph.push(None)
    out = []
    while True:
        try:
            out.append(graph.pull().to_ndarray()[0])
        except (av.error.EOFError, av.error.BlockingIOError):
            return np.concatenate(out) if out else np.zeros(0, np.float32)


def resample(samples: np.ndarray, sample_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 samples from `sample_rate` to `target_rate` (ffmpeg's resampler)."""
    if sample_rate == target_rate or not samples.size:
        return samples
    return _filter(samples, sample_rate, ("aresample", str(target_rate)))


def prepare_speech(samples: np.ndarray, sample_rate: int, fps: float, gain: float = GAIN) -> np.ndarray:
    """The reference's preprocessing, in its order: tempo x 25/fps (pitch kept) at the speech's own rate, then
    16 kHz, then gain."""
    filters = []
    if fps != ENCODER_FPS:
        filters.append(("atempo", f"{ENCODER_FPS / fps:.10g}"))
    if sample_rate != SAMPLE_RATE:
        filters.append(("aresample", str(SAMPLE_RATE)))
    speech = _filter(samples, sample_rate, *filters) if filters and samples.size else samples
    return (speech * gain).astype(np.float32)


def as_mono(samples: np.ndarray, sample_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Integer or float samples, mono or [samples, channels] (a microphone's: channel 0 is taken, as the reference
    takes it from a file), -> mono float32 at `target_rate`."""
    samples = np.asarray(samples)
    if samples.dtype.kind not in "iuf" or samples.ndim not in (1, 2) or 0 in samples.shape[1:]:
        raise LiveActInputError(f"speech samples are numbers, [samples] or [samples, channels], not "
                                f"{samples.dtype} {list(samples.shape)}.")
    if not 1000 <= sample_rate <= 768_000:
        raise LiveActInputError(f"a sample rate of {sample_rate} Hz is not audio; give 8 000 to 192 000 Hz.")
    if samples.ndim == 2:
        samples = samples[:, 0]
    if samples.dtype.kind in "iu":  # full scale of the integer type -> [-1, 1]
        info = np.iinfo(samples.dtype)
        samples = (samples.astype(np.float64) - (info.max + info.min + 1) / 2) / ((info.max - info.min + 1) / 2)
    samples = samples.astype(np.float32)  # a contiguous copy
    if not np.isfinite(samples).all():
        raise LiveActInputError("the speech holds NaN or infinite samples.")
    return resample(samples, sample_rate, target_rate)


def frames_in(speech: np.ndarray) -> int:
    """Video frames that prepared speech covers (one per encoder frame after the tempo change)."""
    return int(len(speech) / SAMPLE_RATE * ENCODER_FPS)


class AudioFeaturizer(Protocol):
    layers: int
    channels: int

    def __call__(self, speech: np.ndarray, frames: int) -> torch.Tensor:
        """Prepared 16 kHz speech -> features [frames, layers, channels] (float32, CPU)."""


def _resample_frames(features: torch.Tensor, frames: int) -> torch.Tensor:
    """Linear resampling of [B, T, C] along time to [B, frames, C] (ends aligned)."""
    return F.interpolate(features.transpose(1, 2), size=frames, mode="linear", align_corners=True).transpose(1, 2)


class Wav2Vec2Features:
    """All hidden layers of a transformers `Wav2Vec2Model`, one feature frame per video frame.

    As in the reference, the CNN features (50 per second) are resampled to the frame count *before*
    the transformer layers, and the 12 layer outputs (not the CNN embedding) are stacked.
    """

    def __init__(self, model, feature_extractor=None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.model = model.to(device=device, dtype=dtype).eval()
        self.feature_extractor = feature_extractor
        self.layers = model.config.num_hidden_layers
        self.channels = model.config.hidden_size

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs) -> "Wav2Vec2Features":
        from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

        return cls(Wav2Vec2Model.from_pretrained(path), Wav2Vec2FeatureExtractor.from_pretrained(path), **kwargs)

    @torch.no_grad()
    def __call__(self, speech: np.ndarray, frames: int) -> torch.Tensor:
        if self.feature_extractor is not None:  # zero-mean, unit-variance as the encoder expects
            speech = self.feature_extractor(speech, sampling_rate=SAMPLE_RATE).input_values[0]
        param = next(self.model.parameters())
        x = torch.as_tensor(np.asarray(speech), dtype=param.dtype, device=param.device)[None]
        cnn = self.model.feature_extractor(x).transpose(1, 2)  # [1, ~50/s, conv_dim]
        hidden, _ = self.model.feature_projection(_resample_frames(cnn, max(frames, 1)))
        layers = []  # the output of every transformer layer (= hidden_states[1:] of the full model)
        hooks = [layer.register_forward_hook(lambda m, i, out: layers.append(out[0] if isinstance(out, tuple) else out))
                 for layer in self.model.encoder.layers]
        try:
            self.model.encoder(hidden)
        finally:
            for hook in hooks:
                hook.remove()
        return torch.stack(layers, dim=2)[0, :frames].float().cpu()  # [frames, layers, hidden]


class MelFeatures:
    """Log-mel spectrogram per video frame: [frames, 1, n_mels]. Cheap enough for real time on a CPU."""

    def __init__(self, n_mels: int = 32, n_fft: int = 400, hop: int = 160):
        from transformers.audio_utils import mel_filter_bank

        self.layers, self.channels, self.n_fft, self.hop = 1, n_mels, n_fft, hop
        self.filters = torch.from_numpy(mel_filter_bank(
            num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=20.0,
            max_frequency=SAMPLE_RATE / 2, sampling_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney")).float()
        self.window = torch.hann_window(n_fft)

    def __call__(self, speech: np.ndarray, frames: int) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(speech), dtype=torch.float32)
        if x.numel() < self.n_fft:
            x = F.pad(x, (0, self.n_fft - x.numel()))
        power = torch.stft(x, self.n_fft, self.hop, window=self.window, return_complex=True).abs().pow(2)
        log_mel = (self.filters.T @ power).clamp(min=1e-10).log10().T  # [T, n_mels]
        log_mel = (log_mel + 4.0) / 4.0  # roughly zero-centred, unit scale for speech at the reference gain
        return _resample_frames(log_mel[None], max(frames, 1))[0, :frames, None]


def featurize(featurizer: AudioFeaturizer, samples: np.ndarray, sample_rate: int, fps: float) -> torch.Tensor:
    """A whole recording -> per-video-frame features [frames, layers, channels]."""
    speech = prepare_speech(samples, sample_rate, fps)
    return featurizer(speech, max(frames_in(speech), 1 if speech.size else 0))  # atempo keeps back ~70 ms


class StreamingFeatures:
    """Featurize audio as it arrives: each chunk's window from the audio of that window only.

    Like the reference's streaming mode, the window of video frames [start, start + frames) is
    featurized from the audio of frames [start, start + frames + lookahead) (the +2 frames give the
    last frames their right context). Audio older than what the next window needs is dropped, so
    memory stays constant however long the stream. Audio is kept at `sample_rate`, by default the rate of
    the first push: each window's tempo change then runs at the speech's own rate, as the reference's.
    """

    def __init__(self, featurizer: AudioFeaturizer, fps: float, sample_rate: int | None = None,
                 window_frames: int = 53, context: int = 5, lookahead: int = 2):
        self.featurizer, self.fps, self._rate = featurizer, fps, sample_rate
        self.window_frames, self.context, self.lookahead = window_frames, context, lookahead
        self._buffer = np.zeros(0, np.float32)
        self._buffer_start = 0  # absolute sample index of _buffer[0]
        self.finished = False
        self._last: tuple[int, torch.Tensor] | None = None  # chunks 0 and 1 share the window at frame 0

    @property
    def sample_rate(self) -> int:
        return self._rate or SAMPLE_RATE

    def push(self, samples: np.ndarray, sample_rate: int | None = None) -> None:
        """Append samples (int16 or float, mono or [samples, channels]; resampled when `sample_rate` differs from
        the stream's)."""
        self._rate = self._rate or sample_rate or SAMPLE_RATE  # fixed by the first push
        self._buffer = np.concatenate([self._buffer, as_mono(samples, sample_rate or self.sample_rate, self.sample_rate)])

    def finish(self) -> None:
        """No more audio: later windows use what there is (frames past the end are clamped)."""
        self.finished = True

    @property
    def received_frames(self) -> int:
        """Video frames of audio received so far."""
        return int((self._buffer_start + len(self._buffer)) / self.sample_rate * self.fps)

    def ready(self, start_frame: int) -> bool:
        needed = start_frame + self.window_frames + self.lookahead
        return self.finished or self.received_frames >= needed

    def window(self, start_frame: int) -> torch.Tensor:
        """Features of the window starting at video frame `start_frame`: [1, frames, context, layers, channels]."""
        if self._last is not None and self._last[0] == start_frame:
            return self._last[1]
        if not self.ready(start_frame):
            raise ValueError(f"not enough audio yet for the window at frame {start_frame}")
        first = round(start_frame / self.fps * self.sample_rate) - self._buffer_start
        last = round((start_frame + self.window_frames + self.lookahead) / self.fps * self.sample_rate) - self._buffer_start
        if first < 0:
            raise ValueError(f"the audio of frame {start_frame} was already dropped")
        features = featurize(self.featurizer, self._buffer[first:last], self.sample_rate, self.fps)
        if features.shape[0] == 0:
            raise LiveActInputError("no speech left to animate.")
        self._buffer, self._buffer_start = self._buffer[first:], self._buffer_start + first  # drop what is done
        self._last = (start_frame, audio_window(features[None], 0, self.window_frames, self.context))
        return self._last[1]
