"""Text to speech, so a visitor without a microphone or an audio file can still drive the avatar.

Kokoro (the reference demo's engine) when its package and weights are installed; otherwise espeak-ng,
a small local engine every Debian has (`apt-get install espeak-ng`; listed in spaces/packages.txt).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE, as_mono, load_audio
from .hub import LiveActError
from .inputs import LiveActInputError

MAX_CHARACTERS = 1000
KOKORO_RATE = 24000


def engine() -> str | None:
    """"kokoro", "espeak-ng", or None when neither is installed."""
    try:
        import kokoro  # noqa: F401

        return "kokoro"
    except ImportError:
        return "espeak-ng" if shutil.which("espeak-ng") else None


def speak(text: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A sentence as mono float32 speech at `sample_rate`."""
    text = " ".join(text.split())
    if not text:
        raise LiveActInputError("there is no text to speak: type a sentence.")
    if len(text) > MAX_CHARACTERS:
        raise LiveActInputError(f"the text is {len(text)} characters long; at most {MAX_CHARACTERS} can be spoken.")
    if engine() == "kokoro":
        try:
            return _kokoro(text, sample_rate)
        except Exception:  # package present, weights missing or unreachable: the local engine still speaks
            pass
    if not shutil.which("espeak-ng"):
        raise LiveActError("no text-to-speech engine is installed (apt-get install espeak-ng).")
    return _espeak(text, sample_rate)


def _espeak(text: str, sample_rate: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as folder:
        wav = Path(folder) / "speech.wav"
        subprocess.run(["espeak-ng", "-s", "160", "-w", str(wav), "--", text], check=True, capture_output=True)
        return load_audio(wav, sample_rate)


def _kokoro(text: str, sample_rate: int) -> np.ndarray:
    from kokoro import KPipeline

    pieces = [np.asarray(audio, np.float32) for _, _, audio in KPipeline(lang_code="a")(text, voice="af_heart")]
    return as_mono(np.concatenate(pieces), KOKORO_RATE, sample_rate)
