"""How far liveact's speech preprocessing is from the reference's, measured on real speech (docs/AUDIO.md).

    python -m liveact audio-compare ../shared/examples/speech-1.wav ../shared/examples/speech-2.wav --fps 20

Two differences are measured, each as the per-video-frame features both versions give:
- the tempo change: ffmpeg's `atempo` (ours) against sox's `tempo` (the reference's torchaudio sox effect
  `["tempo", str(25 / fps)]`, run here through the sox command line);
- the channel: channel 0 (ours and the reference's) against the power-preserving mono downmix liveact used
  before, on a stereo file made from the first recording (right = the speech 5 ms later, at half level).
Features come from the tiny model's log-mel featurizer and from a wav2vec2-base-shaped model with random
weights (seeded), and are compared frame by frame over the frames both have. The last two rows are yardsticks:
the reference's features of the first recording against themselves one video frame, and one sample, later.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import torch

from .audio import ENCODER_FPS, SAMPLE_RATE, MelFeatures, Wav2Vec2Features, decode_audio, frames_in, prepare_speech
from .hub import LiveActError

ECHO_SECONDS, ECHO_LEVEL = 0.005, 0.5  # the stereo file's right channel: the speech 5 ms later at half level
MAX_SHIFT_SECONDS = 0.02  # each 40 ms block of a waveform is aligned within +-20 ms of the other


def sox_tempo(samples: np.ndarray, sample_rate: int, factor: float) -> np.ndarray:
    """Mono float32 samples through sox's `tempo` effect, as the reference's torchaudio sox effects ran it."""
    if shutil.which("sox") is None:
        raise LiveActError("the sox command is not installed; apt-get install sox.")
    raw = ["-t", "raw", "-r", str(sample_rate), "-e", "floating-point", "-b", "32", "-c", "1"]  # float: no dither
    stretched = subprocess.run(["sox", *raw, "-", *raw, "-", "tempo", str(factor)], check=True, capture_output=True,
                               input=np.ascontiguousarray(samples, np.float32).tobytes()).stdout
    return np.frombuffer(stretched, np.float32).copy()


def downmix(channels: np.ndarray, sample_rate: int) -> np.ndarray:
    """[2, samples] stereo -> mono the way liveact's loader did before (ffmpeg's resampler, mono layout)."""
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(channels.T.reshape(1, -1), np.float32), format="flt",
                                       layout="stereo")
    frame.sample_rate = sample_rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    return np.concatenate([out.to_ndarray()[0] for out in [*resampler.resample(frame), *resampler.resample(None)]])


def aligned_correlation(a: np.ndarray, b: np.ndarray, sample_rate: int = SAMPLE_RATE) -> tuple[float, float]:
    """Waveform correlation of b with a, after aligning b in blocks of one feature frame (40 ms), each by its best
    shift within +-20 ms (the two stretchers place their segments independently): (median |shift| in ms,
    correlation over all blocks, so weighted by their energy)."""
    block, reach = sample_rate // ENCODER_FPS, int(MAX_SHIFT_SECONDS * sample_rate)
    starts = np.arange(reach, min(len(a), len(b)) - block - reach + 1, block)
    blocks = a[starts[:, None] + np.arange(block)]  # [blocks, block]
    wide = b[starts[:, None] - reach + np.arange(block + 2 * reach)]  # each block with its reach either side
    size = 1 << (2 * block + 2 * reach).bit_length()
    spectra = np.fft.rfft(wide, size) * np.conj(np.fft.rfft(blocks, size))
    cross = np.fft.irfft(spectra, size)[:, :2 * reach + 1]  # cross[:, k] = sum_t wide[:, t + k] * blocks[:, t]
    energy = np.cumsum(np.pad(wide.astype(np.float64) ** 2, ((0, 0), (1, 0))), axis=1)
    window_energy = energy[:, block:] - energy[:, :-block]  # of wide[:, k:k + block], for every shift k
    shift = (cross / np.sqrt(window_energy + 1e-12)).argmax(axis=1)  # normalized: not drawn to louder parts
    matched = np.take_along_axis(wide, shift[:, None] + np.arange(block), axis=1)
    correlation = (blocks * matched).sum() / np.sqrt((blocks ** 2).sum() * (matched ** 2).sum())
    return 1000 * float(np.median(np.abs(shift - reach))) / sample_rate, float(correlation)


def feature_difference(ours: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """mean |ours - reference| / mean |reference|, and the cosine similarity of each frame's features."""
    n = min(len(ours), len(reference))
    a, b = ours[:n].flatten(1).double(), reference[:n].flatten(1).double()
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=1)
    return {"relative": float((a - b).abs().mean() / b.abs().mean()), "cosine_mean": float(cosine.mean()),
            "cosine_min": float(cosine.min()), "frames": n}


def random_wav2vec2() -> Wav2Vec2Features:
    """The shape of the 18B model's audio encoder (wav2vec2-base: 12 layers of 768), random weights, seeded."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    return Wav2Vec2Features(Wav2Vec2Model(Wav2Vec2Config()), Wav2Vec2FeatureExtractor())


def compare(name: str, first: np.ndarray, second: np.ndarray, featurizers: dict) -> dict:
    """One row: two prepared 16 kHz speeches and how far apart their waveforms and features are."""
    shift_ms, correlation = aligned_correlation(second, first)
    row = {"comparison": name, "samples": (len(first), len(second)), "shift_ms": shift_ms, "correlation": correlation}
    for label, featurizer in featurizers.items():
        row[label] = feature_difference(featurizer(first, frames_in(first)), featurizer(second, frames_in(second)))
    return row


def run(paths: list[str | Path], fps: float = 20.0, wav2vec2: bool = True) -> list[dict]:
    """atempo vs sox tempo on each recording, channel 0 vs the old downmix on a stereo file made from the first
    recording, and the yardsticks."""
    featurizers = {"mel": MelFeatures()} | ({"wav2vec2": random_wav2vec2()} if wav2vec2 else {})
    rows, references = [], []
    for path in paths:
        samples, rate = decode_audio(path)
        stretched = sox_tempo(samples, rate, ENCODER_FPS / fps)
        references.append(prepare_speech(stretched, rate, ENCODER_FPS))  # the tempo is done: 16 kHz and gain only
        rows.append(compare(f"{Path(path).name}: atempo (ours) vs sox tempo (reference)",
                            prepare_speech(samples, rate, fps), references[-1], featurizers))
    name = Path(paths[0]).name
    samples, rate = decode_audio(paths[0])
    echo = np.concatenate([np.zeros(int(ECHO_SECONDS * rate), np.float32), samples])[:len(samples)] * ECHO_LEVEL
    stereo = np.stack([samples, echo])
    rows.append(compare(f"stereo {name}: old mono downmix vs channel 0 (ours now, as the reference)",
                        prepare_speech(downmix(stereo, rate), rate, fps), prepare_speech(stereo[0], rate, fps),
                        featurizers))
    frame = SAMPLE_RATE // ENCODER_FPS  # one feature frame, which is one video frame after the tempo change
    for shift, what in ((frame, "one video frame"), (1, "one sample")):
        rows.append(compare(f"yardstick, {name}: sox tempo {what} later vs itself", references[0][shift:],
                            references[0], featurizers))
    return rows


def markdown(rows: list[dict]) -> str:
    labels = [label for label in ("mel", "wav2vec2") if label in rows[0]]
    header = ["comparison (first vs second)", "samples at 16 kHz (first / second)", "median block shift",
              "waveform correlation"]
    header += [f"{label}: {what}" for label in labels
               for what in ("mean abs diff / mean abs", "cosine per frame: mean, min")]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        first, second = row["samples"]
        cells = [row["comparison"], f"{first} / {second} ({first - second:+d})", f"{row['shift_ms']:.2f} ms",
                 f"{row['correlation']:.4f}"]
        for label in labels:
            numbers = row[label]
            cells += [f"{numbers['relative']:.4f}", f"{numbers['cosine_mean']:.4f}, {numbers['cosine_min']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
