"""What a user gives, checked before a model sees it: a portrait, speech, a prompt, prompt edits.

Every problem becomes one sentence that says what is wrong and what would work (`LiveActInputError`, a
ValueError): the command line prints it and exits with status 2, the app shows it in the page, the API
raises it. Odd but usable inputs are converted, not refused: grayscale, CMYK, transparent, 16-bit and
animated images; any sample rate, channel count, sample format or container ffmpeg reads. Messages name
files by their name only, never by a folder of the server. docs/INPUTS.md lists every case.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MIN_PORTRAIT_SIDE = 64  # pixels; a smaller face carries too little to animate
MAX_PORTRAIT_PIXELS = 64_000_000  # 8000 x 8000; refused from the header, before a pixel is decoded
MAX_PROMPT_CHARACTERS = 2000  # the text encoders read 512 tokens at most: longer is a pasted mistake
MIN_SPEECH_SECONDS = 0.1  # two video frames


class LiveActInputError(ValueError):
    """An input that cannot be used; the message says why and what would work, in one sentence."""


class LiveActInputWarning(UserWarning):
    """An input that is used in part; the message says which part is left out, in one sentence."""


@dataclass
class Limits:
    """What a public server accepts; each can be set by an environment variable (LIVEACT_MAX_...)."""

    max_upload_mb: float = 50.0
    max_audio_seconds: float = 300.0
    max_session_seconds: float = 900.0  # of video, live sessions included
    max_queue: int = 16

    @classmethod
    def from_env(cls) -> "Limits":
        read = lambda name, default: type(default)(os.environ.get(f"LIVEACT_{name.upper()}", default))  # noqa: E731
        return cls(**{name: read(name, value) for name, value in vars(cls()).items()})


# -- portraits -----------------------------------------------------------------------------------------

def read_portrait(source: str | Path | Image.Image | np.ndarray) -> Image.Image:
    """A portrait as an upright 8-bit RGB image, from a file, a PIL image or an array [H, W] / [H, W, 1|3|4]."""
    if isinstance(source, (str, Path)):
        image = _open_image(Path(source))
    elif isinstance(source, np.ndarray):
        image = _image_from_array(source)
    elif isinstance(source, Image.Image):
        image = source
    else:
        raise LiveActInputError(f"a portrait is an image file, a PIL image or an array, not a {type(source).__name__}.")
    _check_portrait_size(*image.size)
    return _to_rgb(image)


def _open_image(path: Path) -> Image.Image:
    if not path.is_file():
        raise LiveActInputError(f"the portrait {path.name} was not found.")
    if path.stat().st_size == 0:
        raise LiveActInputError(f"the portrait {path.name} is an empty file.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is checked below
            image = Image.open(path)  # the header only
    except Image.DecompressionBombError:
        raise LiveActInputError(f"the portrait {path.name} is far too large; at most {MAX_PORTRAIT_PIXELS // 10**6} "
                                "megapixels are accepted.") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise LiveActInputError(f"{path.name} is not an image liveact can read (png, jpg, webp, bmp, gif, tiff).") from None
    _check_portrait_size(*image.size)
    try:
        image.seek(0)  # an animation's first frame
        image.load()
    except (OSError, ValueError, EOFError, SyntaxError):
        raise LiveActInputError(f"the portrait {path.name} is truncated or damaged; save it again and retry.") from None
    return image


def _image_from_array(pixels: np.ndarray) -> Image.Image:
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] in (3, 4))):
        raise LiveActInputError(f"an array portrait is [H, W], [H, W, 3] or [H, W, 4], not {list(pixels.shape)}.")
    if pixels.dtype == np.uint16:
        pixels = (pixels / 257).round().astype(np.uint8)
    elif pixels.dtype.kind == "f":
        pixels = (np.clip(np.nan_to_num(pixels), 0, 1) * 255).round().astype(np.uint8)
    elif pixels.dtype != np.uint8:
        raise LiveActInputError(f"an array portrait holds uint8, uint16 or floats in [0, 1], not {pixels.dtype}.")
    return Image.fromarray(pixels)


def _check_portrait_size(width: int, height: int) -> None:
    if width * height > MAX_PORTRAIT_PIXELS:
        raise LiveActInputError(f"the portrait is {width}x{height} pixels; at most {MAX_PORTRAIT_PIXELS // 10**6} "
                                "megapixels are accepted.")
    if min(width, height) < MIN_PORTRAIT_SIDE:
        raise LiveActInputError(f"the portrait is only {width}x{height} pixels; give one at least "
                                f"{MIN_PORTRAIT_SIDE} pixels on each side.")


def _to_rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image)  # a phone photo upright, as its owner sees it
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit gray: scaled to 8 bits, not clipped
        pixels = np.asarray(image, np.float64)
        pixels = pixels / 257 if pixels.max() > 255 else pixels
        image = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))  # on white
    return image.convert("RGB")


# -- speech, prompts, edits ------------------------------------------------------------------------------

def check_speech_length(seconds: float, max_seconds: float | None = None) -> None:
    """Speech must hold at least two video frames, and at most the configured maximum."""
    if seconds <= 0:
        raise LiveActInputError("the speech holds no sound (0 s).")
    if seconds < MIN_SPEECH_SECONDS:
        raise LiveActInputError(f"the speech is {seconds:.2f} s long; give at least {MIN_SPEECH_SECONDS:g} s.")
    if max_seconds is not None and seconds > max_seconds:
        raise LiveActInputError(f"the speech is {seconds:.0f} s long; the limit here is {max_seconds:.0f} s "
                                "(LIVEACT_MAX_AUDIO_SECONDS).")


def check_prompt(prompt: str | None) -> str:
    """Empty is fine (the model's plain talking head); any script is fine; a page of text is a mistake."""
    if prompt is None:
        return ""
    if not isinstance(prompt, str):
        raise LiveActInputError(f"the prompt is text, not a {type(prompt).__name__}.")
    if len(prompt) > MAX_PROMPT_CHARACTERS:
        raise LiveActInputError(f"the prompt is {len(prompt)} characters long; at most {MAX_PROMPT_CHARACTERS}.")
    return prompt.strip()


def check_edits(edits, chunks: int | None = None) -> list[tuple[int, int | None, str]]:
    """Prompt edits as (first chunk, end chunk or None = to the end, prompt), each in order. With the video's
    length in `chunks`, an edit that starts after its end is left out with a warning (the reference never
    reaches it)."""
    checked = []
    for number, edit in enumerate(edits, 1):
        try:
            first, end, prompt = edit
            first, end = int(first), None if end is None else int(end)
        except (TypeError, ValueError):
            raise LiveActInputError(f"edit {number} is not (first chunk, end chunk, prompt): {edit!r}.") from None
        if first < 0 or (end is not None and end <= first):
            raise LiveActInputError(f"edit {number}: chunks {first} to {end} are out of order.")
        if chunks is not None and first >= chunks:
            warnings.warn(f"edit {number} starts at chunk {first}, after the video ends (chunk {chunks - 1}): "
                          "it is left out.", LiveActInputWarning, stacklevel=2)
            continue
        checked.append((first, end, check_prompt(prompt)))
    return checked
