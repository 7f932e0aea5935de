"""A synthetic talking-head world whose truth we know.

The 18.9B weights cannot run on a CPU and no talking-head dataset is reachable here, so the tiny scale
learns from this world instead: a procedural renderer of cartoon heads (no assets: soft analytic
shapes in torch), speech-like audio, and -- the point -- ground truth. The mouth of every frame is a
fixed function of the audio around it (`mouth_from_audio`), so any speech, real recordings included,
implies the lip motion a model should produce, and lip sync and identity drift can be *measured*.

    identity  (per seed)   head shape, skin / hair / clothes / background colours, hair style, eyes, mouth, brows
    per frame              mouth opening and width, smile, blink, head yaw / pitch / roll, brow raise
    expressions (words)    neutral, smile, frown, surprised, nod, shake head, look left, look right

Expressions never change the mouth's opening: it is always the audio's, so lip sync stays measurable.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

SAMPLE_RATE = 16000
EXPRESSIONS = ("neutral", "smile", "frown", "surprised", "nod", "shake head", "look left", "look right")
FRAME_PARAMS = ("mouth_open", "mouth_width", "smile", "blink", "yaw", "pitch", "roll", "brow")
IDENTITY_PARAMS = ("head_width", "head_height", "skin_r", "skin_g", "skin_b", "hair_r", "hair_g", "hair_b",
                   "clothes_r", "clothes_g", "clothes_b", "background_r", "background_g", "background_b",
                   "eye_width", "eye_height", "eye_spacing", "mouth_size", "brow_thickness", "hair_style")
HAIR_STYLES = 4  # short, bangs, long, side part

_SKIN = np.array([[0.98, 0.85, 0.74], [0.93, 0.76, 0.62], [0.82, 0.62, 0.46], [0.64, 0.45, 0.32], [0.45, 0.30, 0.21]])
_HAIR = np.array([[0.10, 0.08, 0.07], [0.35, 0.22, 0.12], [0.62, 0.45, 0.25], [0.85, 0.75, 0.50], [0.55, 0.20, 0.12],
                  [0.60, 0.60, 0.62]])


# -- identities -------------------------------------------------------------------------------------

def identity(seed: int) -> torch.Tensor:
    """The identity parameters of a seed, [len(IDENTITY_PARAMS)] in roughly [0, 1] (hair style: an index)."""
    rng = np.random.default_rng([seed, 1])
    skin = _SKIN[rng.integers(len(_SKIN))] + rng.uniform(-0.04, 0.04, 3)
    hair = _HAIR[rng.integers(len(_HAIR))] + rng.uniform(-0.05, 0.05, 3)
    clothes = rng.uniform(0.1, 0.9, 3)
    background = rng.uniform(0.15, 0.95, 3)
    shape = [rng.uniform(0.30, 0.40), rng.uniform(0.40, 0.50)]  # half width, half height of the head
    features = [rng.uniform(0.4, 1.0), rng.uniform(0.4, 1.0), rng.uniform(0.0, 1.0), rng.uniform(0.0, 1.0),
                rng.uniform(0.0, 1.0)]  # eye width, eye height, eye spacing, mouth size, brow thickness
    values = [*shape, *skin, *hair, *clothes, *background, *features, float(rng.integers(HAIR_STYLES))]
    return torch.tensor(np.clip(values, 0, None), dtype=torch.float32)


# -- the mouth implied by the audio ---------------------------------------------------------------

def mouth_from_audio(audio: np.ndarray, fps: float, frames: int | None = None,
                     sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Ground-truth mouth [frames, 2] = (opening, width) in [0, 1] of each video frame, a fixed function of
    the audio in a 60 ms window centred on the frame: loudness opens the mouth, a bright spectrum (high
    centroid, as in "ee") widens it and opens it less than a dark one (as in "aa")."""
    frames = frames if frames is not None else int(len(audio) / sample_rate * fps)
    half = int(0.03 * sample_rate)
    centres = ((np.arange(frames) + 0.5) / fps * sample_rate).astype(int)
    index = np.clip(centres[:, None] + np.arange(-half, half)[None], 0, max(len(audio) - 1, 0))
    windows = audio[index] * np.hanning(2 * half)[None]  # [frames, samples]
    rms = np.sqrt(np.mean(windows ** 2, axis=1) + 1e-12)
    loud = np.clip((20 * np.log10(rms + 1e-6) + 42) / 30, 0, 1)
    spectrum = np.abs(np.fft.rfft(windows, axis=1)) ** 2
    hz = np.fft.rfftfreq(2 * half, 1 / sample_rate)
    centroid = (spectrum * hz).sum(1) / (spectrum.sum(1) + 1e-12)
    bright = np.clip((centroid - 600) / 2400, 0, 1)
    opening = loud * (1 - 0.45 * bright)
    width = 0.35 + 0.65 * loud * (0.4 + 0.6 * bright)
    return np.stack([opening, width], axis=1).astype(np.float32)


# -- speech-like audio --------------------------------------------------------------------------------

_VOWELS = np.array([[800, 1200], [500, 1900], [300, 2300], [500, 900], [350, 800]])  # a, e, i, o, u formants


def speech(seconds: float, seed: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Syllable-like sound: voiced segments (a pitch contour, harmonics shaped by two vowel formants),
    noise bursts for consonants, pauses between words; rate and loudness vary by seed. float32 mono."""
    rng = np.random.default_rng([seed, 2])
    total = int(seconds * sample_rate)
    out = np.zeros(total, np.float32)
    base_pitch, rate, level = rng.uniform(95, 230), rng.uniform(0.7, 1.4), rng.uniform(0.15, 0.5)
    position = int(rng.uniform(0.0, 0.3) * sample_rate)
    while position < total:
        for _ in range(rng.integers(1, 5)):  # a word of 1-4 syllables
            if rng.random() < 0.5:  # consonant burst
                burst = int(rng.uniform(0.02, 0.06) * sample_rate)
                noise = rng.standard_normal(burst) * np.hanning(burst) * level * 0.3
                out[position:position + burst] += noise[:max(0, total - position)]
                position += burst
            length = int(rng.uniform(0.08, 0.28) / rate * sample_rate)
            out[position:position + length] += _voiced(length, base_pitch * rng.uniform(0.85, 1.2),
                                                       _VOWELS[rng.integers(len(_VOWELS))], rng,
                                                       sample_rate)[:max(0, total - position)] * level * rng.uniform(0.5, 1.0)
            position += length
        position += int(rng.uniform(0.05, 0.6) * sample_rate)  # pause between words
    return out


def _voiced(length: int, pitch: float, formants: np.ndarray, rng, sample_rate: int) -> np.ndarray:
    t = np.arange(length) / sample_rate
    f0 = pitch * (1 + rng.uniform(-0.15, 0.15) * t / max(t[-1], 1e-3))  # rising or falling intonation
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    harmonics = np.arange(1, int(4000 / pitch) + 1)
    gains = sum(1 / (1 + ((harmonics * pitch - f) / (0.12 * f)) ** 2) for f in formants) / harmonics ** 0.5
    wave = (gains[:, None] * np.sin(harmonics[:, None] * phase[None])).sum(0)
    envelope = np.minimum(1, np.minimum(t / 0.02, (t[-1] - t) / 0.04 + 1e-3))
    return (wave / (np.abs(wave).max() + 1e-9) * envelope).astype(np.float32)


# -- per-frame motion ---------------------------------------------------------------------------------

_EXPRESSION_WORDS = {
    "smile": r"smil(e|es|ing)", "frown": r"(frown(s|ing)?|sad)", "surprised": r"surpris(e|ed)",
    "nod": r"nod(s|ding)?", "shake head": r"shak(e|es|ing)( (his|her|the))? head", "look left": r"looks? left",
    "look right": r"looks? right",
}


def expressions_in(prompt: str) -> list[str]:
    """The expressions a prompt names ("a person is talking and smiles" -> ["smile"]); ["neutral"] if none."""
    found = [name for name, pattern in _EXPRESSION_WORDS.items() if re.search(rf"\b{pattern}\b", prompt.lower())]
    return found or ["neutral"]


def motion(mouth: np.ndarray, fps: float, seed: int, expressions: list[list[str]] | None = None,
           chunk_frames: int = 32, first_chunk_frames: int = 21) -> torch.Tensor:
    """Per-frame parameters [frames, len(FRAME_PARAMS)]: the audio's mouth, seeded blinks and head sway,
    and the expressions active in each chunk (chunk 0 covers the first 21 frames, then 32 each)."""
    frames = len(mouth)
    rng = np.random.default_rng([seed, 3])
    t = np.arange(frames) / fps
    params = np.zeros((frames, len(FRAME_PARAMS)), np.float32)
    params[:, 0], params[:, 1] = mouth[:, 0], mouth[:, 1]
    blink = np.zeros(frames)
    for start in np.cumsum(rng.uniform(1.5, 5.0, size=int(t[-1] / 1.5) + 2 if frames else 0)):
        blink = np.maximum(blink, np.clip(1 - np.abs(t - start) / 0.12, 0, 1))
    params[:, 3] = blink
    for column, amplitude in ((4, 0.06), (5, 0.04), (6, 0.05)):  # yaw, pitch, roll: slow sway
        for _ in range(3):
            freq, phase = rng.uniform(0.05, 0.4), rng.uniform(0, 2 * np.pi)
            params[:, column] += amplitude / 2 * np.sin(2 * np.pi * freq * t + phase)
    params[:, 7] = 0.15 * params[:, 0]  # brows lift a little with speech
    for chunk, words in enumerate(expressions or []):
        start = 0 if chunk == 0 else first_chunk_frames + (chunk - 1) * chunk_frames
        stop = first_chunk_frames if chunk == 0 else start + chunk_frames
        _apply_expressions(params[start:stop], t[start:stop], words)
    return torch.from_numpy(params)


def _apply_expressions(params: np.ndarray, t: np.ndarray, words: list[str]) -> None:
    for word in words:
        if word == "smile":
            params[:, 2] += 0.8
            params[:, 1] = np.clip(params[:, 1] + 0.2, 0, 1)
        elif word == "frown":
            params[:, 2] -= 0.7
            params[:, 7] -= 0.5
        elif word == "surprised":
            params[:, 7] += 0.8
            params[:, 3] -= 0.4  # eyes wide open
            params[:, 1] *= 0.7  # a rounder mouth; its opening stays the audio's
        elif word == "nod":
            params[:, 5] += 0.12 * np.sin(2 * np.pi * 1.5 * t)
        elif word == "shake head":
            params[:, 4] += 0.18 * np.sin(2 * np.pi * 1.5 * t)
        elif word == "look left":
            params[:, 4] -= 0.2
        elif word == "look right":
            params[:, 4] += 0.2


# -- rendering ----------------------------------------------------------------------------------------

def _soft(signed_px: torch.Tensor) -> torch.Tensor:
    """Anti-aliased coverage of a pixel at a signed distance (in pixels, negative inside) from an edge."""
    return torch.sigmoid(-1.5 * signed_px)


def _ellipse(x, y, cx, cy, rx, ry, px):
    """Coverage of an ellipse; `px` = pixels per coordinate unit. Distance approximated by the ellipse norm."""
    norm = torch.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + 1e-12)
    return _soft((norm - 1) * torch.minimum(torch.as_tensor(rx), torch.as_tensor(ry)) * px)


def _over(canvas: torch.Tensor, mask: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """Paint `colour` [B, 3] where `mask` [B, H, W] onto canvas [B, 3, H, W]."""
    return canvas * (1 - mask[:, None]) + colour[:, :, None, None] * mask[:, None]


def render(identity: torch.Tensor, params: torch.Tensor, size: int = 128) -> torch.Tensor:
    """Frames [B, 3, size, size] in [0, 1] of identities [B, I] (or [I], shared) with per-frame params [B, P]."""
    params = params.reshape(-1, len(FRAME_PARAMS)).float()
    batch = params.shape[0]
    ident = identity.float().expand(batch, -1) if identity.ndim == 1 else identity.float()
    p = {name: params[:, i, None, None] for i, name in enumerate(FRAME_PARAMS)}
    d = {name: ident[:, i, None, None] for i, name in enumerate(IDENTITY_PARAMS)}
    colour = lambda name: ident[:, [IDENTITY_PARAMS.index(f"{name}_{c}") for c in "rgb"]].clamp(0, 1)  # noqa: E731
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    x, y = x[None], y[None]  # [1, H, W] image coordinates in [-1, 1], y down
    sharp = size / 2  # pixels per coordinate unit: edges stay about 2 px wide at any size

    canvas = colour("background")[:, :, None, None] * (1.0 - 0.15 * (y[:, None] + 1) / 2)
    # shoulders and neck sway less than the head
    cx, cy = 0.35 * p["yaw"], 0.10 + 0.30 * p["pitch"]
    canvas = _over(canvas, _ellipse(x, y, 0.5 * cx, 1.25, 0.85, 0.45, sharp), colour("clothes"))
    canvas = _over(canvas, _ellipse(x, y, 0.7 * cx, 0.75, 0.16, 0.30, sharp), colour("skin") * 0.85)
    # face frame: rotate by roll around the head centre
    cos, sin = torch.cos(p["roll"]), torch.sin(p["roll"])
    u = cos * (x - cx) + sin * (y - cy)
    v = -sin * (x - cx) + cos * (y - cy)
    hw, hh, style = d["head_width"], d["head_height"], d["hair_style"]
    is_style = lambda k: (style.round() == k).float()  # noqa: E731
    hair = colour("hair")
    long_hair = _ellipse(u, v, 0, 0.12, hw * 1.25, hh * 1.15, sharp) * is_style(2)
    canvas = _over(canvas, long_hair, hair)
    head = _ellipse(u, v, 0, 0, hw, hh, sharp)
    canvas = _over(canvas, head, colour("skin"))
    # features shift with yaw more than the outline does (a cue of turning)
    fu = u - 0.6 * p["yaw"]
    hairline = -hh * (0.45 - 0.12 * is_style(1)) + 0.08 * torch.tanh(4 * fu) * is_style(3)
    cap = _ellipse(u, v, 0, -0.05, hw * 1.08, hh * 1.05, sharp) * _soft((v - hairline) * sharp)
    canvas = _over(canvas, cap, hair)
    # eyes
    spacing = hw * (0.38 + 0.15 * d["eye_spacing"])
    eye_w, eye_h = hw * (0.14 + 0.10 * d["eye_width"]), hh * (0.06 + 0.06 * d["eye_height"])
    openness = (1 - p["blink"]).clamp(0.03, 1.4)
    brow_y = -hh * 0.28 - 0.05 * p["brow"]
    brow_t = 0.012 + 0.02 * d["brow_thickness"]
    for side in (-1, 1):
        white = _ellipse(fu, v, side * spacing, -hh * 0.12, eye_w, eye_h * openness, sharp)
        canvas = _over(canvas, white, torch.full_like(hair, 0.96))
        iris = _ellipse(fu, v, side * spacing + 0.3 * eye_w * p["yaw"] * 4, -hh * 0.12, eye_w * 0.5, eye_h * 0.9, sharp) * white
        canvas = _over(canvas, iris, torch.full_like(hair, 0.12))
        brow = _ellipse(fu, v, side * spacing, brow_y, eye_w * 1.2, brow_t, sharp)
        canvas = _over(canvas, brow, hair * 0.8)
    # nose
    canvas = _over(canvas, _ellipse(fu, v, 0, hh * 0.12, hw * 0.07, hh * 0.05, sharp) * 0.35, colour("skin") * 0.6)
    # mouth: between two parabolas; smiling lifts the corners
    mouth_w = hw * (0.25 + 0.12 * d["mouth_size"]) * (0.7 + 0.5 * p["mouth_width"])
    mouth_y, opening = hh * 0.45, hh * (0.015 + 0.16 * p["mouth_open"])
    bend = -0.10 * p["smile"] / (mouth_w ** 2 + 1e-6) * hh * 0.5
    mu = fu / mouth_w
    inside_x = _soft((fu.abs() - mouth_w) * sharp)
    top = mouth_y - opening / 2 + bend * fu ** 2
    bottom = mouth_y + opening / 2 + bend * fu ** 2 + opening * 0.3 * (1 - mu ** 2).clamp(min=0)
    lips = inside_x * _soft((top - 0.015 - v) * sharp) * _soft((v - bottom - 0.015) * sharp)
    canvas = _over(canvas, lips, colour("skin") * torch.tensor([0.75, 0.45, 0.45]))
    cavity = inside_x * _soft((top - v) * sharp) * _soft((v - bottom) * sharp)
    canvas = _over(canvas, cavity, torch.full_like(hair, 0.18))
    return canvas.clamp(0, 1)


def to_image(frame: torch.Tensor):
    """A frame [3, H, W] in [0, 1] as an RGB PIL image (what a user would upload)."""
    from PIL import Image

    return Image.fromarray((frame.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def portrait(seed: int, size: int = 128):
    """Identity `seed` at rest, as an RGB PIL image: the portrait a user of the synthetic world uploads."""
    return to_image(render(identity(seed), REST, size)[0])


def mouth_position(identity: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Where `render` draws the mouth's centre: [B, 2] (x, y) in image coordinates [-1, 1], y down -- the
    landmark a real pipeline would get from a face detector (training weights the lip region by it)."""
    params = params.reshape(-1, len(FRAME_PARAMS)).float()
    yaw, pitch, roll = (params[:, FRAME_PARAMS.index(name)] for name in ("yaw", "pitch", "roll"))
    u, v = 0.6 * yaw, 0.45 * identity[IDENTITY_PARAMS.index("head_height")]  # in the face's rotated frame
    cx, cy = 0.35 * yaw, 0.10 + 0.30 * pitch
    return torch.stack([cx + torch.cos(roll) * u - torch.sin(roll) * v, cy + torch.sin(roll) * u + torch.cos(roll) * v], 1)


# -- clips --------------------------------------------------------------------------------------------

@dataclass
class Clip:
    reference: torch.Tensor  # [3, H, W] in [0, 1]: the identity at rest
    video: torch.Tensor  # [T, 3, H, W] in [0, 1]
    audio: np.ndarray  # float32 mono at 16 kHz
    params: torch.Tensor  # [T, len(FRAME_PARAMS)]
    identity: torch.Tensor  # [len(IDENTITY_PARAMS)]
    words: list[list[str]]  # expression words of each chunk
    fps: float


REST = torch.tensor([0.05, 0.4, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # closed mouth, eyes open, facing forward


def make_clip(seed: int, seconds: float = 4.0, fps: float = 20, size: int = 128, audio: np.ndarray | None = None,
              expressions: list[list[str]] | None = None) -> Clip:
    """One talking-head clip; deterministic per seed. `audio` defaults to synthetic speech of the seed;
    `expressions` (words per chunk) defaults to a seeded mix, mostly neutral."""
    audio = speech(seconds, seed) if audio is None else audio
    frames = int(len(audio) / SAMPLE_RATE * fps)
    chunks = 1 + max(0, math.ceil((frames - 21) / 32))
    if expressions is None:
        rng = np.random.default_rng([seed, 4])
        expressions = [["neutral"] if rng.random() < 0.5 else [EXPRESSIONS[rng.integers(1, len(EXPRESSIONS))]]
                       for _ in range(chunks)]
    person = identity(seed)
    params = motion(mouth_from_audio(audio, fps, frames), fps, seed, expressions)
    return Clip(render(person, REST, size)[0], render(person, params, size), audio, params, person, expressions, fps)


class SyntheticTalkingHeads(torch.utils.data.Dataset):
    """Clips of the synthetic world: index i is the clip of seed `seed * 1_000_003 + i` (deterministic)."""

    def __init__(self, length: int = 10_000, seconds: float = 4.0, fps: float = 20, size: int = 128, seed: int = 0):
        self.length, self.seconds, self.fps, self.size, self.seed = length, seconds, fps, size, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Clip:
        return make_clip(self.seed * 1_000_003 + index, self.seconds, self.fps, self.size)


def random_frames(count: int, seed: int, size: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Independent random frames for training readers: (frames [N, 3, H, W], params [N, P], identities [N, I])."""
    rng = np.random.default_rng([seed, 5])
    identities = torch.stack([identity(int(s)) for s in rng.integers(0, 2**31, count)])
    params = torch.from_numpy(np.stack([
        rng.uniform(0, 1, count), rng.uniform(0.3, 1, count), rng.uniform(-0.8, 0.9, count),
        np.where(rng.random(count) < 0.15, rng.uniform(0, 1, count), 0.0), rng.uniform(-0.25, 0.25, count),
        rng.uniform(-0.15, 0.15, count), rng.uniform(-0.08, 0.08, count), rng.uniform(-0.6, 0.9, count)],
        axis=1).astype(np.float32))
    frames = torch.cat([render(identities[i:i + 100], params[i:i + 100], size) for i in range(0, count, 100)])
    return frames, params, identities  # rendered 100 at a time: 3x faster than all at once (cache-sized)


def contact_sheet(path: str | Path, identities: int = 16, size: int = 128) -> Path:
    """A PNG of `identities` seeds (columns) x 4 expressions (rows), mid-sentence."""
    from PIL import Image, ImageDraw

    rows = ["neutral", "smile", "surprised", "frown"]
    mouth = np.array([[0.35, 0.6]] * 21, np.float32)
    tiles = [render(identity(seed), torch.stack([motion(mouth, 20, seed, [[word]])[10] for word in rows]), size)
             for seed in range(identities)]  # each [4, 3, H, W]
    grid = torch.cat([torch.cat(list(column), dim=1) for column in tiles], dim=2)  # [3, 4H, N*W]
    label = 90
    sheet = Image.new("RGB", (label + grid.shape[2], grid.shape[1]), "white")
    sheet.paste(Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)), (label, 0))
    draw = ImageDraw.Draw(sheet)
    for row, word in enumerate(rows):
        draw.text((8, row * size + size // 2 - 6), word, fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
