"""Measuring a talking-head video of the synthetic world: lip sync, identity drift, flicker.

A small CNN, the *reader*, is trained on rendered frames to recover the renderer's parameters -- the
per-frame ones (mouth opening, blink, pose, ...) and the identity ones (head shape, colours, ...). It plays
the part SyncNet and face-identity embeddings play for real video, except that here the truth is known:

- lip sync: correlation between the mouth opening read from the frames and the opening the audio implies
  (`synthetic.mouth_from_audio`), at the best lag within +-3 frames (Sync-C analogue), with the offset
  that maximises it over +-15 frames (Sync-D / offset analogue);
- identity drift: distance between the identity read from each frame and from the reference portrait, in
  units of the identity parameters' spread, as a curve over time;
- flicker: mean absolute change between consecutive frames over static background pixels (0-255 scale).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from .synthetic import FRAME_PARAMS, IDENTITY_PARAMS, mouth_from_audio, random_frames

WEIGHTS = Path(__file__).parent / "weights" / "reader"
IDENTITY_DIMS = [i for i, name in enumerate(IDENTITY_PARAMS) if name != "hair_style"]  # continuous ones


class Reader(ModelMixin, ConfigMixin):
    """Frames [N, 3, size, size] in [0, 1] -> normalised targets (frame params, then identity params)."""

    @register_to_config
    def __init__(self, size: int = 128, channels: tuple[int, ...] = (32, 48, 64, 96, 128), hidden: int = 256):
        super().__init__()
        layers, previous = [], 3
        for width in channels:  # each halves the resolution
            layers += [nn.Conv2d(previous, width, 4, stride=2, padding=1), nn.SiLU()]
            previous = width
        self.features = nn.Sequential(*layers)
        cells = (size // 2 ** len(channels)) ** 2
        outputs = len(FRAME_PARAMS) + len(IDENTITY_PARAMS)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(previous * cells, hidden), nn.SiLU(), nn.Linear(hidden, outputs))
        self.register_buffer("target_mean", torch.zeros(outputs))
        self.register_buffer("target_std", torch.ones(outputs))

    @staticmethod
    def targets(params: torch.Tensor, identities: torch.Tensor) -> torch.Tensor:
        return torch.cat([params, identities], dim=1)

    def set_target_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.target_mean.copy_(mean)
        self.target_std.copy_(std.clamp(min=1e-3))

    def normalize(self, targets: torch.Tensor) -> torch.Tensor:
        return (targets - self.target_mean) / self.target_std

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(frames * 2 - 1))

    @torch.no_grad()
    def read(self, frames: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames [N, 3, H, W] in [0, 1] -> (frame params [N, 8], identity params [N, 20]), in renderer units."""
        size = self.config.size
        out = []
        for part in frames.split(batch):
            part = part.to(self.device, self.dtype)
            if part.shape[-1] != size:
                part = F.interpolate(part, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            out.append(self(part) * self.target_std + self.target_mean)
        values = torch.cat(out).float().cpu()
        return values[:, :len(FRAME_PARAMS)], values[:, len(FRAME_PARAMS):]

    def identity_distance(self, identities: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Mean absolute difference of the continuous identity parameters, in units of their spread."""
        spread = self.target_std[len(FRAME_PARAMS):].cpu()[IDENTITY_DIMS]
        return ((identities[:, IDENTITY_DIMS] - reference[IDENTITY_DIMS]).abs() / spread).mean(dim=1)


def load_reader(path: str | Path = WEIGHTS) -> Reader:
    if not Path(path).exists():
        raise FileNotFoundError(f"no reader weights at {path}: train them with `python -m liveact train reader`")
    return Reader.from_pretrained(path, low_cpu_mem_usage=False).eval()  # small: no `accelerate` needed


def evaluate_reader(reader: Reader, count: int = 2000, seed: int = 424242, size: int = 128) -> dict:
    """Accuracy on held-out renders (seeds never used in training): correlation per frame parameter, and
    the identity parameters' mean absolute error (raw and in units of their spread)."""
    frames, params, identities = random_frames(count, seed, size)
    read_params, read_identity = reader.read(frames)
    result = {f"{name}_corr": _corr(read_params[:, i].numpy(), params[:, i].numpy())
              for i, name in enumerate(FRAME_PARAMS) if params[:, i].std() > 0}
    error = (read_identity - identities).abs()[:, IDENTITY_DIMS]
    spread = reader.target_std[len(FRAME_PARAMS):].cpu()[IDENTITY_DIMS]
    result["identity_mae"] = float(error.mean())
    result["identity_mae_in_spreads"] = float((error / spread).mean())
    result["hair_style_accuracy"] = float((read_identity[:, -1].round() == identities[:, -1]).float().mean())
    return result


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or a.std() < 1e-9 or b.std() < 1e-9:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def lagged_corr(read: np.ndarray, truth: np.ndarray, lag: int) -> float:
    """Correlation of read[t] with truth[t - lag] (positive lag: the video is late)."""
    if lag > 0:
        read, truth = read[lag:], truth[:-lag]
    elif lag < 0:
        read, truth = read[:lag], truth[-lag:]
    return _corr(read, truth)


@dataclass
class Evaluation:
    fps: float
    lip_sync_corr: float  # best correlation within +-sync_window frames
    lip_sync_lag: int  # the lag of it, in frames
    offset: int  # the lag of the best correlation within +-15 frames
    flicker: float  # 0-255 units, static background
    drift_curve: np.ndarray  # identity distance to the reference, per frame
    mouth_read: np.ndarray
    mouth_truth: np.ndarray
    flicker_curve: np.ndarray = field(repr=False, default=None)

    def drift_at(self, seconds: float, window: float = 2.0) -> float:
        """Mean identity drift over `window` seconds ending at `seconds` (or at the end of the video)."""
        stop = min(len(self.drift_curve), max(1, int(seconds * self.fps)))
        start = max(0, stop - int(window * self.fps))
        return float(self.drift_curve[start:stop].mean())

    def report(self) -> str:
        seconds = len(self.drift_curve) / self.fps
        return (f"lip-sync {self.lip_sync_corr:.2f} (lag {self.lip_sync_lag:+d}, offset {self.offset:+d}) | "
                f"identity drift {self.drift_at(2.0):.3f} at 2 s, {self.drift_at(seconds):.3f} at {seconds:.0f} s | "
                f"flicker {self.flicker:.2f}")

    def plot(self, path: str | Path, title: str = "") -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        t = np.arange(len(self.mouth_read)) / self.fps
        figure, axes = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
        axes[0].plot(t, self.mouth_truth, label="implied by the audio", color="0.6")
        axes[0].plot(t, self.mouth_read, label="read from the video", color="C0")
        axes[0].set_ylabel("mouth opening")
        axes[0].legend(loc="upper right", fontsize=8)
        axes[0].set_title(title or self.report(), fontsize=9)
        axes[1].plot(t, self.drift_curve, color="C3")
        axes[1].set_ylabel("identity drift")
        axes[2].plot(t[1:], self.flicker_curve, color="C2")
        axes[2].set_ylabel("flicker (0-255)")
        axes[2].set_xlabel("seconds")
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)
        return Path(path)


def static_mask(reference: torch.Tensor, margin: int = 12, tolerance: float = 0.08) -> torch.Tensor:
    """Background pixels of a frame [3, H, W] in [0, 1] at least `margin` px from anything else: [H, W] bool.
    The background is what matches the top corners' colour row by row (it has a vertical gradient)."""
    row_colour = (reference[:, :, :4].mean(2) + reference[:, :, -4:].mean(2)) / 2  # [3, H]
    background = (reference - row_colour[:, :, None]).abs().amax(0) < tolerance
    foreground = (~background).float()[None, None]
    grown = F.max_pool2d(foreground, 2 * margin + 1, stride=1, padding=margin)[0, 0] > 0
    return ~grown


class VideoMeter:
    """Reads a video chunk by chunk and keeps only per-frame numbers, so an hour costs kilobytes, not frames."""

    def __init__(self, reference: torch.Tensor, reader: Reader | None = None):
        """reference: the portrait [3, H, W] in [0, 1]."""
        self.reader = reader or load_reader()
        _, identity = self.reader.read(reference[None])
        self.reference_identity, self.mask = identity[0], static_mask(reference)
        self.mouth, self.drift, self.flicker = [], [], []
        self._last: torch.Tensor | None = None  # the previous frame, for the flicker across chunk borders

    def update(self, frames: torch.Tensor) -> None:
        """The next frames [T, 3, H, W] in [0, 1]."""
        params, identities = self.reader.read(frames)
        self.mouth.append(params[:, FRAME_PARAMS.index("mouth_open")].numpy())
        self.drift.append(self.reader.identity_distance(identities, self.reference_identity).numpy())
        joined = frames if self._last is None else torch.cat([self._last[None], frames])
        if len(joined) > 1 and self.mask.any():
            self.flicker.append(((joined[1:] - joined[:-1]).abs().mean(1)[:, self.mask] * 255).mean(1).numpy())
        self._last = frames[-1]

    def result(self, audio: np.ndarray, fps: float, sync_window: int = 3) -> "Evaluation":
        """Scores against the speech (16 kHz) that drove the video."""
        mouth_read = np.concatenate(self.mouth)
        mouth_truth = mouth_from_audio(audio, fps, len(mouth_read))[:, 0]
        sync = {lag: lagged_corr(mouth_read, mouth_truth, lag) for lag in range(-15, 16)}
        near = max(range(-sync_window, sync_window + 1), key=lambda lag: sync[lag])
        flicker = np.concatenate(self.flicker) if self.flicker else np.zeros(max(len(mouth_read) - 1, 0))
        return Evaluation(fps, sync[near], near, max(sync, key=sync.get), float(flicker.mean()) if len(flicker) else 0.0,
                          np.concatenate(self.drift), mouth_read, mouth_truth, flicker)


def evaluate_video(frames: torch.Tensor, audio: np.ndarray, fps: float, reference: torch.Tensor,
                   reader: Reader | None = None, sync_window: int = 3) -> Evaluation:
    """Frames [T, 3, H, W] in [0, 1] with the speech that drove them (16 kHz) and the reference portrait."""
    meter = VideoMeter(reference, reader)
    meter.update(frames)
    return meter.result(audio, fps, sync_window)
