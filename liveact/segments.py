"""Video segments for streaming players: each chunk of frames (and its speech) as a short MPEG-TS file.

A browser plays an endless stream as a playlist of segments (HLS). Every segment is self-contained:
H.264 in yuv420p starting with a keyframe (a fresh encoder per segment), the same size and frame rate
throughout, AAC audio in every segment (a player that meets a silent first segment stays silent).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def encode_segment(path: str | Path, frames: np.ndarray, fps: float, audio: np.ndarray | None = None,
                   sample_rate: int = 16000, start_seconds: float = 0.0) -> Path:
    """Write uint8 frames [T, H, W, 3] (and mono float32 audio at `sample_rate`) to an MPEG-TS segment whose
    timestamps start at `start_seconds` (so consecutive segments continue each other)."""
    path = Path(path)
    height, width = frames.shape[1:3]
    rate = Fraction(fps).limit_denominator(1000)
    with av.open(str(path), "w", format="mpegts") as container:
        video = container.add_stream("libx264", rate=rate)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "ultrafast", "tune": "zerolatency"}
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=sample_rate, layout="mono")
        first = round(start_seconds * rate)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts, frame.time_base = first + i, 1 / rate
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            samples = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio, np.float32)[None], format="flt", layout="mono")
            samples.sample_rate, samples.time_base = sample_rate, Fraction(1, sample_rate)
            samples.pts = round(start_seconds * sample_rate)
            container.mux(sound.encode(samples))
            container.mux(sound.encode(None))
    return path
